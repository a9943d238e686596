#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: the same `mt3 train` on every worker; JAX finds the pod by itself.
#   launch/tpu_vm_pod.sh [--dry-run] TPU_NAME ZONE MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]
# Every worker needs this repository at the same path (MT3_REMOTE_DIR, default ~/mt3 on the worker) and the prepared
# data; MODEL_DIR must be shared by all workers (gs://..., or a Filestore / gcsfuse mount). BATCH_SIZE is global.
# Each worker first runs `MT3_SETUP=train MT3_ACCELERATOR=tpu bash scripts/setup.sh` (idempotent: seconds when done;
# MT3_SKIP_SETUP=1 skips it). A path starting with ~ (quote it: '~/runs/x') is expanded by each worker's shell, so it
# means the worker's home, not this machine's. --dry-run prints the gcloud command and what each worker runs.
set -euo pipefail
dry_run=0
if [ "${1:-}" = --dry-run ]; then dry_run=1; shift; fi
usage="usage: $0 [--dry-run] TPU_NAME ZONE MODEL_DIR [GIN_FILE] [--gin.NAME=VALUE ...]"
tpu=${1:?$usage}
zone=${2:?$usage}
model_dir=${3:?$usage}
gin_file=${4:-gin/mt3.gin}
shift $(( $# >= 4 ? 4 : 3 ))

# A path for the worker's shell: a leading ~ becomes "$HOME" (expanded there), the rest is quoted as it is.
remote_path() {
  case "$1" in
    "~") printf '"$HOME"' ;;
    "~/"*) printf '"$HOME"/%q' "${1#\~/}" ;;
    *) printf '%q' "$1" ;;
  esac
}
remote_dir=${MT3_REMOTE_DIR:-}
[ -n "$remote_dir" ] || remote_dir="~/mt3"  # quoted: ${VAR:-~/mt3} would expand ~ here
repo=$(remote_path "$remote_dir")
setup="MT3_SETUP=train MT3_ACCELERATOR=tpu bash scripts/setup.sh && "
[ -z "${MT3_SKIP_SETUP:-}" ] || setup=""
env="MT3_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=3"
train=".venv/bin/mt3 train --gin_file=$(remote_path "$gin_file") --model_dir=$(remote_path "$model_dir")"
[ $# -eq 0 ] || train+=" $(printf '%q ' "$@")"
remote="cd $repo && ${setup}${env} ${train}"
ssh=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$remote")

if [ "$dry_run" = 1 ]; then
  echo "local: $(printf '%q ' "${ssh[@]}")"
  echo "host every worker of $tpu (--worker=all; JAX numbers the processes)"
  echo "  env: $env"
  echo "  run: $remote"
  exit 0
fi
exec "${ssh[@]}"
