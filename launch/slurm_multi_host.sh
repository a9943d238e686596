#!/usr/bin/env bash
# Multi-host GPU training under SLURM: one `mt3 train` process per node, joined by jax.distributed.
#   sbatch --nodes=4 launch/slurm_multi_host.sh MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]
# MODEL_DIR and the prepared data must be on a filesystem every node sees. BATCH_SIZE is global (all nodes).
# SLURM sends SIGTERM 120 s before the time limit (--signal): mt3 saves a checkpoint and exits 0, and a requeued
# or resubmitted job resumes from it.
#SBATCH --job-name=mt3-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=mt3-train-%j.log
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
model_dir=${1:?usage: sbatch $0 MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]}
gin_file=${2:-gin/mt3.gin}
shift $(( $# >= 2 ? 2 : 1 ))

# Process 0 (the first node) coordinates; each task takes its rank from SLURM_PROCID (see mt3/training/partitioning.py).
coordinator=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export JAX_COORDINATOR_ADDRESS="${coordinator}:${MT3_COORDINATOR_PORT:-29500}"
export JAX_NUM_PROCESSES="$SLURM_NTASKS"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
srun --kill-on-bad-exit=1 .venv/bin/mt3 train --gin_file="$gin_file" --model_dir="$model_dir" "$@"
