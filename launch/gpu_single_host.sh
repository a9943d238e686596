#!/usr/bin/env bash
# Train on one host with all its GPUs (data parallel; set NUM_PARTITIONS for model parallelism).
#   launch/gpu_single_host.sh [--dry-run] MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]
#   e.g. launch/gpu_single_host.sh runs/local gin/local.gin --gin.BATCH_SIZE=64
# Resumes from the latest checkpoint in MODEL_DIR; SIGTERM / Ctrl-C save a checkpoint before exiting.
# Set up the host first with `MT3_SETUP=train MT3_ACCELERATOR=cuda12 bash scripts/setup.sh`.
# --dry-run prints the command and its environment and runs nothing.
set -euo pipefail
dry_run=0
if [ "${1:-}" = --dry-run ]; then dry_run=1; shift; fi
cd "$(dirname "$0")/.."
model_dir=${1:?usage: $0 [--dry-run] MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]}
gin_file=${2:-gin/mt3.gin}
shift $(( $# >= 2 ? 2 : 1 ))
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
cmd=(.venv/bin/mt3 train --gin_file="$gin_file" --model_dir="$model_dir" "$@")
if [ "$dry_run" = 1 ]; then
  echo "host $(hostname) process 0/1"
  echo "  env: TF_CPP_MIN_LOG_LEVEL=$TF_CPP_MIN_LOG_LEVEL CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-(all GPUs)}"
  echo "  run: $(printf '%q ' "${cmd[@]}")"
  exit 0
fi
exec "${cmd[@]}"
