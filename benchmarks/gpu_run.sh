#!/usr/bin/env bash
# One prepared GPU session (see benchmarks/README.md): install the carried wheels, then the CUDA tests,
# the device benchmark and a profile of one class. Build the wheels here first (.whl/ is git-ignored):
#   python -m pip wheel -q --no-deps --no-build-isolation -w .whl .
#   python -m pip download -q --no-deps -d .whl onnx2torch==1.5.15 array-api-compat==1.16.0
# then run it there with the device tool, carrying .whl. The three parts stay within 8 minutes (120 + 270 + 60 s
# and the install); the benchmark writes benchmarks/results/cuda-<card>-device.json (the card's name).
# Usage on the GPU machine, from the repository root:
#   bash benchmarks/gpu_run.sh [parts...]   parts: tests bench profile (default: all three)
set -uo pipefail
OUT=${OUT:-/tmp/ssa-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 SSA_DISABLE_PLUGIN_AUTOLOAD=0
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -c "import torch, ssa; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), ssa.__file__)" | tee -a "$OUT/gpu.txt"
parts=${*:-tests bench profile}
for part in $parts; do
  case $part in
    tests) timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py tests/test_device_core.py \
             tests/test_conformance.py tests/test_rank1_counts.py tests/test_scatter_channels.py tests/test_conv_kernels.py \
             tests/test_medians.py -k "not example" 2>&1 | tee "$OUT/gpu-tests.log" | tail -15 ;;
    bench) SSA_BENCH_DEVICE=cuda timeout 270 python3 -m pytest -q -p no:cacheprovider benchmarks/test_device.py \
             --benchmark-only -s 2>&1 | tee "$OUT/bench.log" | grep -v "^\s*$" | tail -60
           cp benchmarks/results/cuda-*-device.json "$OUT/" 2>/dev/null ;;
    profile) timeout 60 python3 -m benchmarks.gpu_profile vgg16 resnet50 2>&1 | tee "$OUT/profile.log" | tail -5 ;;
  esac
done
