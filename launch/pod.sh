#!/usr/bin/env bash
# Multi-host launch of the same entry point on every host; each process joins one JAX cluster.
#
#   launch/pod.sh [--dry-run] [--logdir DIR] MODE ... -- --config=configs/hh_rlhf.py [--config.a.b=v ...]
#
#   MODE tpu   TPU_NAME ZONE   every worker of a Cloud TPU VM pod (JAX finds the pod by itself)
#   MODE slurm                 inside an sbatch allocation: one task per node via srun
#                              (JAX reads SLURM_* itself)
#   MODE hosts "h1 h2 ..."     plain ssh to each host, coordinator on the first (port $PORT)
#   MODE local N               N processes on this machine (CPU, gloo collectives): a rehearsal
#                              of a pod, and what the multi-host tests run
#
# --dry-run prints the exact command of every host (or the one launcher command) and runs
# nothing. Every host's output goes to DIR/host<i>.log (default $REPO/runs/pod_logs; tpu and
# slurm: their launcher's own output) as well as to this terminal, prefixed with [host i].
# The exit code is the worst host's (the largest). A host that dies makes the others stop with
# one line ("lost contact with another process"); the same command again resumes every host
# from the last checkpoint.
#
# The repository must be at the same path ($REPO, default this checkout) with its venv on
# every host. Extra environment: PORT (default 1234), REPO, PYTHON (default
# $REPO/.venv/bin/python); in local mode XLA_FLAGS (e.g. the simulated device count) is passed on.
set -euo pipefail
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
PORT=${PORT:-1234}
dry=0
logdir=$REPO/runs/pod_logs
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --logdir) logdir=${2:?--logdir DIR}; shift 2 ;;
    *) break ;;
  esac
done
mode=${1:?usage: launch/pod.sh [--dry-run] [--logdir DIR] tpu|slurm|hosts|local ... -- ARGS}
shift

case "$mode" in
  tpu)   tpu=${1:?TPU name}; zone=${2:?zone}; shift 2 ;;
  hosts) read -r -a hosts <<< "${1:?quoted host list}"; shift ;;
  local) n=${1:?number of processes}; shift ;;
  slurm) ;;
  *) echo "launch/pod.sh: unknown mode '$mode' (tpu, slurm, hosts or local)" >&2; exit 2 ;;
esac
[ "${1:-}" = "--" ] && shift
args=("$@")
quoted=""
[ ${#args[@]} -gt 0 ] && quoted=$(printf ' %q' "${args[@]}")

run_one() {  # run_one I COMMAND: host I's command, its log file and the [host I] prefix
  local i=$1 cmd=$2
  mkdir -p "$logdir"
  bash -c "$cmd" > >(tee "$logdir/host$i.log" | sed -u "s/^/[host $i] /") 2>&1
}

wait_all() {  # wait for every pid; exit with the worst (largest) status
  local worst=0 i=0 s
  for p in "$@"; do
    s=0; wait "$p" || s=$?
    echo "[host $i] exit $s" >&2
    [ "$s" -gt "$worst" ] && worst=$s
    i=$((i + 1))
  done
  exit "$worst"
}

case "$mode" in
  tpu)
    cmd="gcloud compute tpus tpu-vm ssh $tpu --zone $zone --worker=all --command=$(printf %q "cd $REPO && $PYTHON -m metarm_jax.main$quoted")"
    if [ "$dry" = 1 ]; then echo "all workers: $cmd"; exit 0; fi
    exec bash -c "$cmd" ;;
  slurm)
    cmd="srun --ntasks-per-node=1 $PYTHON -m metarm_jax.main$quoted"
    if [ "$dry" = 1 ]; then echo "every node: $cmd"; exit 0; fi
    exec bash -c "$cmd" ;;
  hosts)
    coord="${hosts[0]}:$PORT"; pids=()
    for i in "${!hosts[@]}"; do
      inner="cd $REPO && JAX_COORDINATOR_ADDRESS=$coord JAX_NUM_PROCESSES=${#hosts[@]} JAX_PROCESS_ID=$i $PYTHON -m metarm_jax.main$quoted"
      cmd="ssh ${hosts[$i]} $(printf %q "$inner")"
      if [ "$dry" = 1 ]; then echo "host $i (${hosts[$i]}): $cmd"; continue; fi
      run_one "$i" "$cmd" & pids+=($!)
    done
    [ "$dry" = 1 ] && exit 0
    wait_all "${pids[@]}" ;;
  local)
    pids=()
    for ((i = 0; i < n; i++)); do
      cmd="JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i $(printf %q "$PYTHON") -m metarm_jax.main$quoted"
      if [ "$dry" = 1 ]; then echo "host $i: $cmd"; continue; fi
      (cd "$REPO" && run_one "$i" "$cmd") & pids+=($!)
    done
    [ "$dry" = 1 ] && exit 0
    wait_all "${pids[@]}" ;;
esac
