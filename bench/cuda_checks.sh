#!/usr/bin/env bash
# Every CUDA check in one run, for the GPU machine (torch 2.11, onnxruntime-gpu carried in;
# see ../shared/device/README.md). Run from the repository root with PYTHONPATH set; writes
# everything under $OUT (log.txt and JSON reports). Each step has its own time limit, and the
# limits add up to about 10 minutes, the likely times to about 5: the checks come in order of
# importance, so a run cut short by the lease still returns the first ones.
set -u
OUT=${OUT:-/tmp/cuda-checks}
mkdir -p "$OUT"
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
verify() { timeout "$1" python3 -m verify.cli "${@:2}"; echo "rc=$?"; }
step() { echo; echo "== $* ($(date +%T))"; }
{
  step environment
  python3 -c "import sys, os, torch, torchvision, onnxruntime as o; print(sys.version.split()[0], torch.__version__,
torchvision.__version__, torch.cuda.get_device_name(0), o.__version__, o.get_available_providers(), os.cpu_count())"
  step "verify export --device cuda --no-tf32 (8 inputs, pooled floors, every input repeated; expected rc=0)"
  verify 75 export --norm frozen --device cuda --no-tf32 --out "$work/fp32" --json "$OUT/export_cuda_fp32.json"
  step "verify export --device cuda (framework defaults: TF32 on; 8 inputs; expected rc=1)"
  verify 75 export --norm frozen --device cuda --out "$work/tf32" --json "$OUT/export_cuda_tf32.json"
  step "verify export mobilenet_v3_large --device cuda --no-tf32 (expected rc=0)"
  verify 45 export -b mobilenet_v3_large --norm batch --device cuda --no-tf32 --out "$work/mnv3"
  step "verify preflight --provider cuda (defaults: expected NO-GO), --no-tf32 (GO), cpu (GO)"
  verify 30 preflight "$work/fp32/resnet50-frozen-body" --provider cuda --runs 50 --json "$OUT/preflight_tf32.json"
  verify 30 preflight "$work/fp32/resnet50-frozen-body" --provider cuda --no-tf32 --runs 50 \
    --junit "$OUT/preflight_fp32.xml"
  verify 30 preflight "$work/fp32/resnet50-frozen-body" --provider cpu --runs 20
  step "ExportedProgram and AOTInductor on CUDA (aoti compiled for cuda; expected rc=0)"
  verify 90 export -b resnet18 --norm frozen --device cuda --no-tf32 --format pt2 --format aoti \
    --shape 1x3x64x64 --out "$work/aoti" --json "$OUT/export_cuda_aoti.json"
  step "CUDA tests"
  timeout 80 python3 -m pytest -q -p no:cacheprovider -p no:randomly tests/test_cuda.py -rs; echo "rc=$?"
  step "fast tier under torch 2.11"
  timeout 50 python3 -m pytest -q -p no:cacheprovider -m "not slow" -n 14 tests; echo "rc=$?"
  step "the rest of the suite under torch 2.11 (as far as the time allows)"
  timeout 100 python3 -m pytest -q -p no:cacheprovider -m slow -n 14 tests --ignore=tests/test_cuda.py
  echo "rc=$?"
  step done
} 2>&1 | tee "$OUT/log.txt"
