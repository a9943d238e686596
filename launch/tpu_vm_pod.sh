#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: the same `mt3 train` on every worker; JAX finds the pod by itself.
#   launch/tpu_vm_pod.sh TPU_NAME ZONE MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]
# Every worker needs this repository at the same path (~/mt3, set up with scripts/setup.sh) and the prepared data;
# MODEL_DIR must be shared by all workers (e.g. a Filestore or gcsfuse mount). BATCH_SIZE is global.
set -euo pipefail
tpu=${1:?usage: $0 TPU_NAME ZONE MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]}
zone=${2:?usage: $0 TPU_NAME ZONE MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]}
model_dir=${3:?usage: $0 TPU_NAME ZONE MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]}
gin_file=${4:-gin/mt3.gin}
shift $(( $# >= 4 ? 4 : 3 ))
repo=${MT3_REMOTE_DIR:-~/mt3}
extra=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="cd $repo && \
  MT3_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/mt3 train --gin_file=$gin_file --model_dir=$model_dir $extra"
