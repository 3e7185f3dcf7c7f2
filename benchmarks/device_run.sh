#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (no network; a 10-minute command limit):
#   1. what is installed (GPU, driver, nvcc, torch, ONNX Runtime's providers, TensorRT)
#   2. the native kernels built in place (--no-build-isolation, nothing downloaded)
#   3. benchmarks/gpu_check.py on the GPU within what is left of the budget
# Everything goes under $OUT (default ./device-out): installed.txt, build.log,
# backends.txt, gpu_check.txt, gpu_check-cuda.json, device_run.log.
#
#   OUT=/tmp/out bash benchmarks/device_run.sh          # BUDGET=570 seconds in all by default
#
# A dry run elsewhere: DEVICE=cpu SKIP_BUILD=1 ONLY="distill nccl" bash benchmarks/device_run.sh
# (SKIP_BUILD: the kernels already built; pip install -e would repoint this Python's install).
#
# Run from the repository root. Exits with gpu_check's status (1: a row failed), or 3 when
# no GPU is visible to torch.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-out}
BUDGET=${BUDGET:-570}
ROW_TIMEOUT=${ROW_TIMEOUT:-120}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
log() { echo "[device_run +$(($(date +%s) - start))s] $*" | tee -a "$OUT/device_run.log"; }

log "1/3 what is installed -> installed.txt"
{
  echo "## nvidia-smi"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1 ||
    echo "no nvidia-smi"
  echo "## nvcc"
  nvcc --version 2>&1 | tail -2 || echo "no nvcc on PATH"
  echo "## trtexec"
  command -v trtexec || ls /usr/src/tensorrt/bin/trtexec 2>/dev/null || echo "no trtexec"
  echo "## python packages"
  "$PY" - <<'EOF'
import importlib
import sys

print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "numpy", "onnx", "onnxruntime", "tensorrt", "polygraphy", "setuptools",
             "safetensors", "sklearn", "rich", "yaml", "pytest"):
    try:
        print(f"{name:12} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as exc:
        print(f"{name:12} missing ({type(exc).__name__}: {str(exc)[:80]})")
try:
    import torch
    print("torch cuda", torch.version.cuda, "visible", torch.cuda.is_available(),
          "gpus", torch.cuda.device_count(),
          "nccl", torch.distributed.is_nccl_available())
    if torch.cuda.is_available():
        print("gpu0", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
except Exception as exc:
    print("torch check failed:", exc)
try:
    import onnxruntime
    print("ort providers", onnxruntime.get_available_providers())
except Exception:
    pass
EOF
} >"$OUT/installed.txt" 2>&1
cat "$OUT/installed.txt"
if [ "$DEVICE" != cpu ] &&
  ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "no GPU visible to torch: nothing to check here"
  exit 3
fi

log "2/3 build the native kernels in place (budget left $(left)s) -> build.log"
build_limit=$(($(left) / 3))
# no network: the build uses the torch and setuptools installed here; the GPU is visible,
# so torch builds for its architecture
if [ -n "${SKIP_BUILD:-}" ]; then
  echo "SKIP_BUILD set: kernels as they are" >"$OUT/build.log"
elif ! MAX_JOBS=${MAX_JOBS:-16} timeout "$build_limit" "$PY" -m pip install --no-build-isolation \
  --no-deps --no-index -e . >"$OUT/build.log" 2>&1; then
  log "pip install -e . failed (see build.log); trying setup.py build_ext --inplace"
  MAX_JOBS=${MAX_JOBS:-16} timeout "$(($(left) / 3))" "$PY" setup.py build_ext --inplace \
    >>"$OUT/build.log" 2>&1 || log "build_ext failed too: the rows will say what is missing"
fi
grep -E "WARNING|error" "$OUT/build.log" | tail -5
PYTHONPATH=$PWD "$PY" -c "from qmixprune import native; print(native.backends())" \
  >"$OUT/backends.txt" 2>&1
log "backends: $(cat "$OUT/backends.txt")"

rows_budget=$(($(left) - 15))
log "3/3 gpu_check within ${rows_budget}s (row limit ${ROW_TIMEOUT}s) -> gpu_check.txt"
# shellcheck disable=SC2086  # ONLY is a list of row names
PYTHONPATH=$PWD timeout "$(($(left) - 5))" "$PY" benchmarks/gpu_check.py --device "$DEVICE" \
  --out "$OUT" --budget "$rows_budget" --row-timeout "$ROW_TIMEOUT" ${ONLY:+--only $ONLY} 2>&1 |
  tee "$OUT/gpu_check.txt"
status=${PIPESTATUS[0]}
log "gpu_check exit $status; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
