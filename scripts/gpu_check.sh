#!/usr/bin/env bash
# Run on a lent GPU machine (its python3 has CUDA PyTorch): CUDA tests and GPU benchmarks.
# Usage: bash scripts/gpu_check.sh {tests|bench|samplers|cuda|custom CMD...}; wheels of missing pure-Python deps in .whl/
# (made here by scripts/gpu_wheels.sh; carry .whl, and outputs/main for the cuda target) are installed first.
set -uo pipefail
out="${OUT:-/tmp/gpu_out}"; mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
[ -d .shared ] && [ ! -e ../shared ] && cp -r .shared ../shared
nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
case "${1:-tests}" in
tests)
    python3 -m pytest tests -q -n 8 -p no:cacheprovider -x 2>&1 | tee "$out/pytest_gpu.txt" | tail -25 ;;
bench)
    python3 benchmarks/bench_nets.py --device cuda 2>&1 | tee "$out/bench_nets_cuda.txt"
    python3 benchmarks/bench_nets.py --device cuda --amp --channels-last 2>&1 | tee "$out/bench_nets_cuda_amp.txt"
    python3 benchmarks/bench_cuda_overhead.py 2>&1 | tee "$out/bench_cuda_overhead.txt"
    python3 benchmarks/bench_likelihood.py --device cuda --batch 256 2>&1 | tee "$out/bench_likelihood_cuda.txt" | tail -40 ;;
samplers)
    python3 benchmarks/bench_samplers.py 2>&1 | tee "$out/bench_samplers_cpu.txt"
    cp benchmarks/results/samplers_quality.png "$out/" 2>/dev/null ;;
cuda)  # the short check: samplers' loop overhead on CUDA, eager and graphed (main job's model if outputs/main is
       # carried), then every CUDA test (marked cuda or parametrized on the cuda device)
    run=""; [ -d outputs/main ] && run="--run outputs/main"
    timeout 150 python3 benchmarks/bench_cuda_overhead.py $run --reps 20 2>&1 | tee "$out/bench_cuda_overhead.txt"
    cp benchmarks/results/cuda_overhead.json "$out/" 2>/dev/null
    timeout 270 python3 -m pytest tests -q -n 8 -p no:cacheprovider -m "not heavy" -k cuda \
        --ignore tests/test_interop.py --ignore tests/test_family_slow.py 2>&1 \
        | tee "$out/pytest_cuda.txt" | tail -30 ;;
*)
    shift; "$@" 2>&1 | tee "$out/custom.txt" ;;
esac
