#!/usr/bin/env bash
# One arm of the recipe study of issue 16 (docs/recipe_study.md): continue the bundled model's training checkpoint
# (step 17,900: training/local_cpu/resume.tar.gz as committed in fce6568, read with `git show`; MT3_ARM_START names
# another tarball; its data position reset: an arm reads its own data from the start)
# with the given data and gin levers, under a CPU clock (mt3/training/cpu_clock.py), until MT3_ARM_CPU_MINUTES of the
# training process's own CPU time. Rerun the same command to resume.
#   bash scripts/study_arm.sh RUN_DIR DATA_DIR [--gin_file=gin/levers/augment.gin ...]
#   e.g. bash scripts/study_arm.sh runs/study2/a1_augment data/prepared_big --gin_file=gin/levers/augment.gin
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$1; DATA=$2; shift 2
PY=${MT3_PYTHON:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1 MT3_DATA_DIR=$DATA
if [ ! -d "$RUN/checkpoints" ]; then
  mkdir -p "$RUN"
  if [ -n "${MT3_ARM_START:-}" ]; then tar -xzf "$MT3_ARM_START" -C "$RUN"
  else git show fce6568:training/local_cpu/resume.tar.gz | tar -xz -C "$RUN"; fi
  "$PY" -c "import sys; from mt3 import checkpoints; checkpoints.reset_data_stream(sys.argv[1])" "$RUN"
  echo "arm $RUN starts from the bundled model's training checkpoint (data position reset)"
fi
"$PY" -c "import sys; from mt3.cli import main; sys.exit(main())" train --gin_file=gin/local_cpu.gin "$@" \
  --gin.CHECKPOINTS_TO_KEEP=30 --model_dir "$RUN" &
TRAIN=$!
"$PY" -m mt3.training.cpu_clock --pid "$TRAIN" --model-dir "$RUN" &
LIMIT=$(( ${MT3_ARM_CPU_MINUTES:-45} * 60 ))
while kill -0 "$TRAIN" 2>/dev/null; do
  # (|| true: before the clock's first line the pipeline fails, and set -e would end this loop, not the training)
  used=$(tail -n 1 "$RUN/cpu_clock.csv" 2>/dev/null | cut -d, -f2 | cut -d. -f1 || true)
  if [ -n "$used" ] && [ "$used" -ge "$LIMIT" ]; then echo "arm $RUN: ${used} CPU s, stopping"; kill -TERM "$TRAIN"; fi
  sleep 30
done
wait "$TRAIN" || true
