#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the pure-Python dependencies the lent GPU machine's image lacks, for
# scripts/gpu_check.sh (carry .whl with the call): torchsde, trampoline, hydra-core, omegaconf and antlr4, whose
# release is only a source archive (built into a wheel here with the project's venv).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
mkdir -p .whl
$py -m pip download -q --no-deps --only-binary=:all: -d .whl \
    torchsde==0.2.6 trampoline==0.1.2 hydra-core==1.3.8 omegaconf==2.3.1
tmp=$(mktemp -d)
$py -m pip download -q --no-deps -d "$tmp" antlr4-python3-runtime==4.9.3
$py -m pip wheel -q --no-deps -w .whl "$tmp"/antlr4-python3-runtime-4.9.3.tar.gz
rm -rf "$tmp"
ls .whl
