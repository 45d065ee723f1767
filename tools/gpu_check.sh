#!/usr/bin/env bash
# The GPU path, run for real, in one go (about 8 minutes on one H100, packages installed):
#   1. the tests marked `cuda`: AMP float16 training resumed with its scaler, channels-last,
#      torch.compile, a one-process NCCL torchrun epoch, CUDA evaluation and inference against
#      the CPU's, a GPU checkpoint on the CPU, the out-of-memory message;
#   2. the benchmark on the GPU: training img/s of both models at batch 64 and 128 in fp32, AMP,
#      AMP + channels-last (+ torch.compile at 64), inference with decoding at 64, the three NMS
#      methods on the GPU, peak CUDA memory, CUDA memory after 50 and 500 steps.
# Everything lands in one folder: tests.txt, benchmark.json, benchmark.txt (a short table),
# nvidia-smi.txt, times.txt.
#
#   bash tools/gpu_check.sh [OUT]            # OUT defaults to gpu_check/
#   GPU_CHECK_DEVICE=cpu bash tools/gpu_check.sh /tmp/dry   # a dry run of the script on the CPU
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-gpu_check}
device=${GPU_CHECK_DEVICE:-cuda}
py=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && py=.venv/bin/python
mkdir -p "$out"
: > "$out/times.txt"
stamp() { echo "$(date +%s) $1" | tee -a "$out/times.txt"; }

stamp start
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$out/nvidia-smi.txt"
"$py" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))" \
    | tee -a "$out/nvidia-smi.txt"

stamp tests
SSD_TEST_DEVICE=$device "$py" -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/tests.txt"
tests_status=${PIPESTATUS[0]}

stamp benchmark
if [ "$device" = cuda ]; then
    args=(--only train inference decode memory --batch-sizes 64 128 --compile)
else  # the dry run: small and quick
    args=(--only train decode memory --batch-sizes 2 --memory-iters 60 --models ssdlite)
fi
"$py" benchmark.py --device "$device" --repeats 3 "${args[@]}" --json "$out/benchmark.json" \
    --table "$out/benchmark.txt" 2>&1 | tee "$out/benchmark.log"
bench_status=${PIPESTATUS[0]}

stamp end
echo "tests exit status $tests_status, benchmark exit status $bench_status; results in $out/"
[ "$tests_status" = 0 ] && [ "$bench_status" = 0 ]
