#!/usr/bin/env bash
# Every CUDA check in one run, for the GPU machine (torch 2.11, onnxruntime-gpu carried in;
# see ../shared/device/README.md). Run from the repository root with PYTHONPATH set; writes
# everything under $OUT (log.txt and JSON reports).
set -u
OUT=${OUT:-/tmp/cuda-checks}
mkdir -p "$OUT"
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
verify() { python3 -m verify.cli "$@"; }
step() { echo; echo "== $* ($(date +%T))"; }
{
  step environment
  python3 -c "import sys, torch, torchvision, onnxruntime as o; print(sys.version.split()[0], torch.__version__,
torchvision.__version__, torch.cuda.get_device_name(0), o.__version__, o.get_available_providers())"
  step "verify export --device cuda (framework defaults: TF32 on)"
  timeout 100 python3 -m verify.cli export --norm frozen --device cuda --out "$work/tf32" \
    --json "$OUT/export_cuda_tf32.json"; echo "rc=$?"
  step "verify export --device cuda --no-tf32"
  timeout 100 python3 -m verify.cli export --norm frozen --device cuda --no-tf32 --out "$work/fp32" \
    --json "$OUT/export_cuda_fp32.json"; echo "rc=$?"
  step "verify preflight --provider cuda (defaults), then --no-tf32"
  verify preflight "$work/fp32/resnet50-frozen-body" --provider cuda --runs 50 --json "$OUT/preflight_tf32.json"
  echo "rc=$?"
  verify preflight "$work/fp32/resnet50-frozen-body" --provider cuda --no-tf32 --runs 50 \
    --junit "$OUT/preflight_fp32.xml"; echo "rc=$?"
  verify preflight "$work/fp32/resnet50-frozen-body" --provider cpu --runs 20; echo "rc=$?"
  step "ExportedProgram and AOTInductor on CUDA (aoti compiled for cuda)"
  timeout 150 python3 -m verify.cli export -b resnet18 --norm frozen --device cuda --no-tf32 --format pt2 \
    --format aoti --out "$work/aoti" --json "$OUT/export_cuda_aoti.json"; echo "rc=$?"
  step "CUDA tests"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs; echo "rc=$?"
  step "calibration on CUDA: every backbone, frozen body, 224"
  timeout 170 python3 bench/calibrate_auto.py --device cuda --norms frozen --no-perturb \
    --json "$OUT/calibrate_cuda.json"; echo "rc=$?"
  step "whole suite under torch 2.11"
  timeout 170 python3 -m pytest -q -p no:cacheprovider -n 14 tests; echo "rc=$?"
  step done
} 2>&1 | tee "$OUT/log.txt"
