#!/usr/bin/env bash
# Continue the long CPU run (gin/local_cpu_robust.gin, chosen in docs/recipe_study.md) where the last session stopped.
# Long work: run it in the background and let it go for hours; SIGTERM (or Ctrl-C) saves a checkpoint and exits.
#   nohup bash scripts/train_local_cpu.sh > runs/local_cpu.log 2>&1 &
#   MT3_TRAIN_SECONDS=3600 bash scripts/train_local_cpu.sh      # a bounded session
# The run resumes from runs/local_cpu/checkpoints if present, else from the committed training/local_cpu/resume.tar.gz
# (the newest training checkpoint: params, Adafactor state, step, RNG and input position). Before a session ends:
#   bash scripts/train_local_cpu.sh --save-only   # refresh the tarball from the newest checkpoint (commit it)
#   bash scripts/train_local_cpu.sh --export      # also bundle it into mt3/pretrained/local_cpu (then update README)
# The run's CPU seconds are logged beside its checkpoints (runs/local_cpu/cpu_clock.csv, mt3/training/cpu_clock.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The run's data since step 41,440 (2026-12-05): the 320-minute corpus with diverse timbres (docs/recipe_study.md, arm
# augment_diverse); steps 0-41,440 read the 160-minute corpus data/corpus_big (FluidR3 + TimGM6mb).
CORPUS=data/corpus_div
CORPUS_ARGS=(--minutes 320 --seed 2 --soundfonts diverse --per-stem-soundfonts)
DATA=data/prepared_div
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1 MT3_DATA_DIR=$DATA
MT3=.venv/bin/mt3
RECIPE=gin/local_cpu_robust.gin
RUN=runs/local_cpu
TARBALL=training/local_cpu/resume.tar.gz

save() {
  step=$(ls "$RUN/checkpoints" | grep -E '^[0-9]+$' | sort -n | tail -n 1)
  mkdir -p "$(dirname "$TARBALL")"
  files=(config.gin "checkpoints/$step")
  [ -f "$RUN/cpu_clock.csv" ] && files+=(cpu_clock.csv)
  [ -f "$RUN/data_dir" ] && files+=(data_dir)
  tar -czf "$TARBALL.tmp" -C "$RUN" "${files[@]}" && mv "$TARBALL.tmp" "$TARBALL"
  echo "saved step $step: $TARBALL (commit it)"
}
case "${1:-}" in
  --save-only) save; exit 0 ;;
  --export) save
    $MT3 export-model "$RUN" -o mt3/pretrained/local_cpu --overwrite --average-last 4 --info "recipe=$RECIPE" \
      --info "train_command=bash scripts/train_local_cpu.sh"
    exit 0 ;;
esac

[ -f "$DATA/local/train.manifest.json" ] || {
  $MT3 build-corpus --out "$CORPUS" "${CORPUS_ARGS[@]}" --workers 2
  $MT3 prepare-data slakh --root "$CORPUS" --out "$DATA/local" --workers 2
}
if [ ! -d "$RUN/checkpoints" ] && [ -f "$TARBALL" ]; then
  mkdir -p "$RUN" && tar -xzf "$TARBALL" -C "$RUN"
  echo "resuming from $TARBALL"
fi
# A run that read other data until now starts this data's stream afresh: its input position (the indexed sampler's
# state) means nothing in another dataset. Parameters, optimizer state and step carry on.
if [ -d "$RUN/checkpoints" ] && [ "$(cat "$RUN/data_dir" 2>/dev/null)" != "$DATA" ]; then
  .venv/bin/python -c "import sys; from mt3 import checkpoints; checkpoints.reset_data_stream(sys.argv[1])" "$RUN"
  echo "$DATA" > "$RUN/data_dir"
  echo "the run now reads $DATA: its data stream starts afresh"
fi
FLAGS=()
[ -n "${MT3_TRAIN_SECONDS:-}" ] && FLAGS+=("--gin.MAX_TRAIN_SECONDS=${MT3_TRAIN_SECONDS}")
$MT3 train --gin_file="$RECIPE" --model_dir "$RUN" "${FLAGS[@]}" &
TRAIN=$!
trap 'kill -TERM "$TRAIN" 2>/dev/null' TERM INT
.venv/bin/python -m mt3.training.cpu_clock --pid "$TRAIN" --model-dir "$RUN" &
wait "$TRAIN" || true
wait "$TRAIN" 2>/dev/null || true
save
