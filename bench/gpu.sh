#!/usr/bin/env bash
# GPU benchmark for a lent H100/H200 (under 8 minutes): MFU of the RM and MetaRM train steps
# (1B and 7B, bf16 compute, random weights), decode tokens/s at batch 1 and 16 against the HBM
# roofline, peak memory; prints ONE table (bench/gpu_bench.py has the details).
#
#   bench/gpu.sh                      # on the GPU host, from anywhere
#   bench/gpu.sh --dry-run            # on a CPU: tiny preset, a few steps (checks that it runs)
#   bench/gpu.sh --items=train:meta1:llama2_7b --out=gpu.md
#
# Installs (skipped with METARM_NO_INSTALL=1, and when already there): the project's
# requirements when metarm_jax's training modules do not import, then the CUDA build of the jax
# version pinned in requirements.txt when JAX sees no GPU. Python: $PYTHON, else .venv/bin/python
# when it exists, else python3. An offline host needs the wheels carried in (pip --find-links).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
fi
DRY=0
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && DRY=1; done
JAX_VERSION="$(sed -n 's/^jax==\([0-9][0-9.]*\).*/\1/p' requirements.txt)"

if [[ "$DRY" == 0 && -z "${METARM_NO_INSTALL:-}" ]]; then
  if ! "$PY" -c "import metarm_jax.train.loop, metarm_jax.generation.sampling" 2>/dev/null; then
    echo "[gpu.sh] installing requirements.txt and the project (-e .)"
    "$PY" -m pip install -q -r requirements.txt -e .
  fi
  if ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    echo "[gpu.sh] JAX sees no GPU: installing jax[cuda12]==${JAX_VERSION}"
    "$PY" -m pip install -q -U "jax[cuda12]==${JAX_VERSION}"
  fi
fi

if [[ "$DRY" == 1 ]]; then
  export JAX_PLATFORMS=cpu
else
  # JAX preallocates 75% of the GPU by default; a 7B step needs more of it.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PY" -c "import jax; print('[gpu.sh] jax', jax.__version__, jax.devices())"
exec timeout 480 "$PY" bench/gpu_bench.py "$@"
