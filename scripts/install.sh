#!/usr/bin/env bash
# Create the project's virtual environment and install scoresde with its test dependencies.
# Without a GPU, take the CPU build of torch (an unpinned torch pulls several GB of CUDA wheels);
# with one (nvidia-smi works), the default CUDA build.
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        "${pip[@]}" torch
    else
        "${pip[@]}" "torch==2.13.0" || "${pip[@]}" torch --index-url https://download.pytorch.org/whl/cpu
    fi
fi
"${pip[@]}" -e ".[dev]"
touch "$venv/.installed"
