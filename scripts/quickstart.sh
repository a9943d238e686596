#!/usr/bin/env bash
# README command 1 — the main job, on the CPU, with no download:
#   set up -> build a local corpus (music21 scores rendered with fluidsynth) -> prepare it -> evaluate the model bundled
#   in the package on the held-out-soundfont test split (prints the table) -> transcribe a test piece with it (no
#   --checkpoint) -> train the tiny model (gin/local_tiny.gin, bounded time) to show that training runs.
# Re-running resumes: finished corpus tracks, prepared splits and checkpoints are reused.
# Knobs (environment): MT3_QUICKSTART_DIR (default runs/local_tiny), MT3_CORPUS_MINUTES (default 40; ~1 min to build),
#   MT3_TRAIN_SECONDS (default: the gin file's MAX_TRAIN_SECONDS).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
MT3=.venv/bin/mt3
RUN=${MT3_QUICKSTART_DIR:-runs/local_tiny}  # the model dir the bounded training run writes
MINUTES=${MT3_CORPUS_MINUTES:-40}
CORPUS=data/corpus
export MT3_DATA_DIR=data/prepared
TRAIN_FLAGS=()
[ -n "${MT3_TRAIN_SECONDS:-}" ] && TRAIN_FLAGS+=("--gin.MAX_TRAIN_SECONDS=${MT3_TRAIN_SECONDS}")

step() { printf '\n=== %s ===\n' "$*"; }

step "1/6 build the local corpus (${MINUTES} min of audio, Slakh2100 layout) in ${CORPUS}"
$MT3 build-corpus --out "$CORPUS" --minutes "$MINUTES" --seed 0 --workers 2

step "2/6 prepare it as a dataset in ${MT3_DATA_DIR}/local"
$MT3 prepare-data slakh --root "$CORPUS" --out "$MT3_DATA_DIR/local" --workers 2

step "3/6 evaluate the bundled model on the test split (soundfont never heard in training)"
# no --checkpoint: the model inside the package (mt3/pretrained); its own config sets the decode length
$MT3 eval --tasks local_notes_ties_vb1_test --out runs/bundled_eval

step "4/6 transcribe one held-out piece with it"
piece=$(ls -d "$CORPUS"/test/Track*/ | head -n 1)
$MT3 transcribe "${piece}mix.flac" -o runs/transcriptions --png --json --overwrite
out=runs/transcriptions/mix.mid  # a single input file keeps its name under -o
$MT3 score "${piece}all_src.mid" "$out"

step "5/6 check the training pipeline"
$MT3 data-stats local_notes_ties_vb1_train --num 32

step "6/6 train gin/local_tiny.gin on the CPU for a bounded time (model dir ${RUN})"
$MT3 train --gin_file=gin/local_tiny.gin --model_dir "$RUN" "${TRAIN_FLAGS[@]}"

step "done"
cat runs/bundled_eval/results.md
echo
echo "bundled model eval: runs/bundled_eval/results.md  runs/bundled_eval/results.json"
echo "transcription:      $out (+ .png, .notes.json)"
echo "piano rolls:        $(ls runs/bundled_eval/plots/*/*.png 2>/dev/null | head -n 3 | tr '\n' ' ')"
echo "trained model dir:  $RUN (evaluate it: $MT3 eval --checkpoint $RUN --tasks local_notes_ties_vb1_test)"
