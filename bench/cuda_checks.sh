#!/usr/bin/env bash
# Every CUDA check in one run, for the GPU machine (torch 2.11; onnxruntime-gpu and the project's missing
# dependencies carried in, see ../shared/device/README.md and "Carrying" below). Run from the repository root
# with PYTHONPATH set; writes everything under $OUT (log.txt and JSON reports).
#
#   bash bench/cuda_checks.sh                  # every step, in order of importance
#   bash bench/cuda_checks.sh export-tf32 cuda-tests   # only these (a second, shorter lease)
#
# Each step has its own time limit; the limits add up to about 10 minutes, the likely times to about 5, so a
# run cut short by the lease still returns the first steps.
#
# Carrying: the GPU machine lacked pydantic, model-signing, pyOpenSSL, platformdirs and jsonschema (it had
# scipy, pillow, hypothesis, pytest-xdist). `pip download --only-binary=:all: --python-version 3.12
# --platform manylinux_2_28_x86_64 ...` of those with their dependencies plus the onnxruntime-gpu wheel, tarred
# and split into parts of at most ~52 MB (a call carries 64 MiB with the tree), one `run` per part appending
# to one file, then: sha256 check, untar, `pip install --target $HOME/site` the ORT wheel and
# `pip install --no-index --find-links <wheels> --break-system-packages <the five>`.
set -u
OUT=${OUT:-/tmp/cuda-checks}
mkdir -p "$OUT"
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
verify() { timeout "$1" python3 -m verify.cli "${@:2}"; echo "rc=$?"; }
step() { echo; echo "== $* ($(date +%T))"; }

environment() {
  python3 -c "import sys, os, torch, torchvision, onnxruntime as o; print(sys.version.split()[0], torch.__version__,
torchvision.__version__, torch.cuda.get_device_name(0), o.__version__, o.get_available_providers(), os.cpu_count())"
}
export_fp32() {
  step "verify export --device cuda --no-tf32 (8 inputs, pooled floors, every input repeated; expected rc=0)"
  verify 75 export --norm frozen --device cuda --no-tf32 --out "$work/fp32" --json "$OUT/export_cuda_fp32.json"
}
export_tf32() {
  step "verify export --device cuda (framework defaults: TF32 on; expected rc=1 on TF32-size differences, no
repeat called 'not deterministic')"
  verify 75 export --norm frozen --device cuda --out "$work/tf32" --json "$OUT/export_cuda_tf32.json"
}
export_mnv3() {
  step "verify export mobilenet_v3_large --device cuda --no-tf32 (expected rc=0)"
  verify 45 export -b mobilenet_v3_large --norm batch --device cuda --no-tf32 --out "$work/mnv3"
}
preflight() {
  step "verify preflight --provider cuda (defaults: expected NO-GO), --no-tf32 (GO), cpu (GO)"
  [ -d "$work/fp32/resnet50-frozen-body" ] || export_fp32
  verify 30 preflight "$work/fp32/resnet50-frozen-body" --provider cuda --runs 50 --json "$OUT/preflight_tf32.json"
  verify 30 preflight "$work/fp32/resnet50-frozen-body" --provider cuda --no-tf32 --runs 50 \
    --junit "$OUT/preflight_fp32.xml"
  verify 30 preflight "$work/fp32/resnet50-frozen-body" --provider cpu --runs 20
}
aoti() {
  step "ExportedProgram and AOTInductor on CUDA (aoti compiled for cuda; expected rc=0)"
  verify 150 export -b resnet18 --norm frozen --device cuda --no-tf32 --format pt2 --format aoti \
    --shape 1x3x64x64 --out "$work/aoti" --json "$OUT/export_cuda_aoti.json"
}
cuda_tests() {
  step "CUDA tests (the session fixture compiles AOTInductor for the CPU first)"
  timeout 190 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs; echo "rc=$?"
}
fast() {
  step "fast tier under torch 2.11"
  timeout 50 python3 -m pytest -q -p no:cacheprovider -m "not slow" -n 14 tests; echo "rc=$?"
}
slow() {
  step "the rest of the suite under torch 2.11 (as far as the time allows)"
  timeout 100 python3 -m pytest -q -p no:cacheprovider -m slow -n 14 tests --ignore=tests/test_cuda.py
  echo "rc=$?"
}

ALL=(export-fp32 export-tf32 export-mnv3 preflight aoti cuda-tests fast slow)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=("${ALL[@]}")
{
  step environment
  environment
  for name in "${steps[@]}"; do
    case "$name" in
      export-fp32|export-tf32|export-mnv3|preflight|aoti|cuda-tests|fast|slow) "${name//-/_}" ;;
      *) echo "unknown step $name; steps: ${ALL[*]}"; exit 2 ;;
    esac
  done
  step done
} 2>&1 | tee "$OUT/log.txt"
