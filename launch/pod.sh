#!/usr/bin/env bash
# Multi-host launch of the same entry point on every host; each process joins one JAX cluster.
#
#   launch/pod.sh tpu   TPU_NAME ZONE  -- --config=configs/hh_rlhf.py [--config.a.b=v ...]
#       every worker of a Cloud TPU VM pod (JAX finds the pod by itself)
#   launch/pod.sh slurm               -- --config=configs/hh_rlhf.py ...
#       inside an sbatch allocation: one task per node via srun (JAX reads SLURM_* itself)
#   launch/pod.sh hosts "h1 h2 ..."   -- --config=...
#       plain ssh to each host, coordinator on the first (port $PORT, default 1234)
#   launch/pod.sh local N             -- --config=...
#       N processes on this machine (CPU, gloo collectives): a rehearsal of a pod on a laptop
#
# The repository must be at the same path ($REPO, default this checkout) with its venv on
# every host. Extra environment: PORT, REPO, PYTHON (default $REPO/.venv/bin/python).
set -euo pipefail
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
PORT=${PORT:-1234}
mode=${1:?usage: launch/pod.sh tpu|slurm|hosts|local ... -- ARGS}; shift

args=()
case "$mode" in
  tpu)   tpu=${1:?TPU name}; zone=${2:?zone}; shift 2 ;;
  hosts) hosts=(${1:?"quoted host list"}); shift ;;
  local) n=${1:?number of processes}; shift ;;
  slurm) ;;
  *) echo "launch/pod.sh: unknown mode '$mode' (tpu, slurm, hosts or local)" >&2; exit 2 ;;
esac
[ "${1:-}" = "--" ] && shift
args=("$@")
quoted=$(printf ' %q' "${args[@]}")

case "$mode" in
  tpu)
    exec gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
      --command="cd $REPO && $PYTHON -m metarm_jax.main$quoted" ;;
  slurm)
    exec srun --ntasks-per-node=1 "$PYTHON" -m metarm_jax.main "${args[@]}" ;;
  hosts)
    coord="${hosts[0]}:$PORT"; pids=()
    for i in "${!hosts[@]}"; do
      ssh "${hosts[$i]}" "cd $REPO && JAX_COORDINATOR_ADDRESS=$coord JAX_NUM_PROCESSES=${#hosts[@]} \
        JAX_PROCESS_ID=$i $PYTHON -m metarm_jax.main$quoted" &
      pids+=($!)
    done
    status=0; for p in "${pids[@]}"; do wait "$p" || status=$?; done; exit $status ;;
  local)
    pids=()
    for ((i = 0; i < n; i++)); do
      JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT JAX_NUM_PROCESSES=$n \
        JAX_PROCESS_ID=$i "$PYTHON" -m metarm_jax.main "${args[@]}" &
      pids+=($!)
    done
    status=0; for p in "${pids[@]}"; do wait "$p" || status=$?; done; exit $status ;;
esac
