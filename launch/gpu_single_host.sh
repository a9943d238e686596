#!/usr/bin/env bash
# Train on one host with all its GPUs (data parallel; set NUM_PARTITIONS for model parallelism).
#   launch/gpu_single_host.sh MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]
#   e.g. launch/gpu_single_host.sh runs/local gin/local.gin --gin.BATCH_SIZE=64
# Resumes from the latest checkpoint in MODEL_DIR; SIGTERM / Ctrl-C save a checkpoint before exiting.
set -euo pipefail
cd "$(dirname "$0")/.."
model_dir=${1:?usage: $0 MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]}
gin_file=${2:-gin/mt3.gin}
shift $(( $# >= 2 ? 2 : 1 ))
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
exec .venv/bin/mt3 train --gin_file="$gin_file" --model_dir="$model_dir" "$@"
