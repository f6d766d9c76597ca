#!/usr/bin/env bash
# One prepared GPU session (see benchmarks/README.md): install the carried wheels, then the CUDA tests,
# the device benchmark and a profile of one class. Build the wheels here first (.whl/ is git-ignored):
#   python -m pip wheel -q --no-deps --no-build-isolation -w .whl .
#   python -m pip download -q --no-deps -d .whl onnx2torch==1.5.15 array-api-compat==1.16.0
# then run it there with the device tool, carrying .whl. The parts stay within 8 minutes on an H100 (90 + 330 + 30 s
# and the install); the benchmark writes benchmarks/results/cuda-<card>-device.json (the card's name) after each
# model, so a part cut short by its timeout keeps what it measured. Its summary lines (printed last): the exact
# statistics pass and the --fast-math one against PyTorch's default (TF32) forward, channels-last beside them, the
# next class at 100 images, the ImageNet projections of both models under both rules, and the --fast-math graphs'
# agreement with the exact ones.
# Usage on the GPU machine, from the repository root:
#   bash benchmarks/gpu_run.sh [parts...]   parts: tests bench profile (default: all three)
# A check of the script on a machine without a GPU (no install: the current environment; a tiny run):
#   SSA_GPU_RUN_LOCAL=1 SSA_BENCH_DEVICE=cpu SSA_BENCH_DEVICE_MODELS=resnet18 SSA_BENCH_IMAGES=4 SSA_BENCH_LARGE=1 \
#     SSA_BENCH_CLASSES=2 SSA_BENCH_PER_CLASS=4 bash benchmarks/gpu_run.sh bench
set -uo pipefail
OUT=${OUT:-/tmp/ssa-gpu-out}; mkdir -p "$OUT"
if [ "${SSA_GPU_RUN_LOCAL:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 SSA_DISABLE_PLUGIN_AUTOLOAD=0
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi on this machine"; } | tee "$OUT/gpu.txt"
python3 -c "import torch, ssa; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), ssa.__file__)" \
  | tee -a "$OUT/gpu.txt"
parts=${*:-tests bench profile}
for part in $parts; do
  case $part in
    tests) timeout 90 python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py tests/test_device_core.py \
             tests/test_conformance.py tests/test_rank1_counts.py tests/test_scatter_channels.py tests/test_conv_kernels.py \
             tests/test_medians.py tests/test_exact_arithmetic.py -k "not example" 2>&1 | tee "$OUT/gpu-tests.log" \
             | tail -15 ;;
    bench) SSA_BENCH_DEVICE=${SSA_BENCH_DEVICE:-cuda} timeout 330 python3 -m pytest -q -p no:cacheprovider \
             benchmarks/test_device.py --benchmark-only -s > "$OUT/bench.log" 2>&1
           echo "bench exit $? (124: cut by its timeout; the models measured before are in the json)"
           cp benchmarks/results/*-device.json "$OUT/" 2>/dev/null
           grep -E "^== |^-- |^ +(forward|\[.*(statistics, |default forward|next class, median|ImageNet scale|fast-math))" \
             "$OUT/bench.log"
           grep -E "passed|failed|error" "$OUT/bench.log" | tail -3 ;;
    profile) timeout 30 python3 -m benchmarks.gpu_profile vgg16 resnet50 2>&1 | tee "$OUT/profile.log" | tail -5 ;;
  esac
done
