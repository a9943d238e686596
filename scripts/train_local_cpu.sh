#!/usr/bin/env bash
# Continue training the bundled model's run (gin/local_cpu.gin) where the last session stopped, then re-export it into
# the package. Long work: run it in the background and let it go for hours; SIGTERM (or Ctrl-C) saves a checkpoint.
#   nohup bash scripts/train_local_cpu.sh > runs/local_cpu.log 2>&1 &
#   MT3_TRAIN_SECONDS=3600 bash scripts/train_local_cpu.sh      # a bounded session
# The run resumes from runs/local_cpu/checkpoints if present, else from the committed training/local_cpu/resume.tar.gz
# (the newest training checkpoint: params, Adafactor state, step, RNG and data position). Before a session ends:
#   bash scripts/train_local_cpu.sh --save-only   # export the model into mt3/pretrained and refresh the tarball
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1 MT3_DATA_DIR=data/prepared_big
MT3=.venv/bin/mt3
RUN=runs/local_cpu
TARBALL=training/local_cpu/resume.tar.gz

save() {
  step=$(ls "$RUN/checkpoints" | grep -E '^[0-9]+$' | sort -n | tail -n 1)
  mkdir -p "$(dirname "$TARBALL")"
  tar -czf "$TARBALL.tmp" -C "$RUN" config.gin "checkpoints/$step" && mv "$TARBALL.tmp" "$TARBALL"
  $MT3 export-model "$RUN" -o mt3/pretrained/local_cpu --overwrite --info recipe=gin/local_cpu.gin --info "train_command=bash scripts/train_local_cpu.sh"
  echo "saved step $step: $TARBALL and mt3/pretrained (commit both)"
}
if [ "${1:-}" = "--save-only" ]; then save; exit 0; fi

[ -f data/prepared_big/local/train.manifest.json ] || {
  $MT3 build-corpus --out data/corpus_big --minutes 160 --seed 1 --workers 2
  $MT3 prepare-data slakh --root data/corpus_big --out data/prepared_big/local --workers 2
}
if [ ! -d "$RUN/checkpoints" ] && [ -f "$TARBALL" ]; then
  mkdir -p "$RUN" && tar -xzf "$TARBALL" -C "$RUN"
  echo "resuming from $TARBALL"
fi
FLAGS=()
[ -n "${MT3_TRAIN_SECONDS:-}" ] && FLAGS+=("--gin.MAX_TRAIN_SECONDS=${MT3_TRAIN_SECONDS}")
$MT3 train --gin_file=gin/local_cpu.gin --model_dir "$RUN" "${FLAGS[@]}"
save
