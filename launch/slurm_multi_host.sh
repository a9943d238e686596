#!/usr/bin/env bash
# Multi-host GPU training under SLURM: one `mt3 train` process per node, joined by jax.distributed.
#   sbatch --nodes=4 launch/slurm_multi_host.sh MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]
#   launch/slurm_multi_host.sh --dry-run MODEL_DIR ...   print each node's command and environment, run nothing
# MODEL_DIR and the prepared data must be on a filesystem every node sees. BATCH_SIZE is global (all nodes).
# Time limit: SLURM signals this script (USR1, 120 s before the limit: --signal=B:USR1@120); it sends SIGTERM to the
# training processes, which finish the step, save a checkpoint and exit 0; the script then requeues the job
# (`scontrol requeue $SLURM_JOB_ID`) and the requeued job resumes from that checkpoint. A job that reaches TRAIN_STEPS,
# fails, or is cancelled (scancel) is not requeued. MT3_NO_REQUEUE=1: save and stop at the time limit instead.
#SBATCH --job-name=mt3-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=mt3-train-%j.log
set -euo pipefail
dry_run=0
if [ "${1:-}" = --dry-run ]; then dry_run=1; shift; fi
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
model_dir=${1:?usage: sbatch $0 [--dry-run] MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]}
gin_file=${2:-gin/mt3.gin}
shift $(( $# >= 2 ? 2 : 1 ))

# Process 0 (the first node) coordinates; each task takes its rank from SLURM_PROCID (see mt3/training/partitioning.py).
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
else  # a dry run outside an allocation: placeholder names for SLURM_NNODES (default 2) nodes
  nodes=(); for ((i = 0; i < ${SLURM_NNODES:-2}; i++)); do nodes+=("node$i"); done
fi
export JAX_COORDINATOR_ADDRESS="${nodes[0]}:${MT3_COORDINATOR_PORT:-29500}"
export JAX_NUM_PROCESSES="${SLURM_NTASKS:-${#nodes[@]}}"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
cmd=(.venv/bin/mt3 train --gin_file="$gin_file" --model_dir="$model_dir" "$@")

if [ "$dry_run" = 1 ]; then
  for i in "${!nodes[@]}"; do
    echo "host ${nodes[$i]} process $i/$JAX_NUM_PROCESSES"
    echo "  env: JAX_COORDINATOR_ADDRESS=$JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES=$JAX_NUM_PROCESSES" \
         "SLURM_PROCID=$i TF_CPP_MIN_LOG_LEVEL=$TF_CPP_MIN_LOG_LEVEL"
    echo "  run: srun --kill-on-bad-exit=1 $(printf '%q ' "${cmd[@]}")"
  done
  echo "on the time limit (USR1): SIGTERM to the tasks, then scontrol requeue \${SLURM_JOB_ID} once they saved"
  exit 0
fi

time_limit=0
interrupted=0
on_time_limit() {
  time_limit=1 interrupted=1
  echo "mt3 launcher: time limit near: asking mt3 train to save a checkpoint" >&2
  kill -TERM "$srun_pid" 2>/dev/null || true  # srun forwards it to every task
}
trap on_time_limit USR1
srun --kill-on-bad-exit=1 "${cmd[@]}" &
srun_pid=$!
while true; do
  status=0
  wait "$srun_pid" || status=$?
  if [ "$interrupted" = 1 ]; then interrupted=0; continue; fi  # the trap ran: wait for srun's own exit status
  break
done
if [ "$time_limit" = 1 ] && [ "$status" = 0 ] && [ -z "${MT3_NO_REQUEUE:-}" ]; then
  echo "mt3 launcher: checkpoint saved; requeueing job $SLURM_JOB_ID to resume" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
