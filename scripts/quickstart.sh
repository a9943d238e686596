#!/usr/bin/env bash
# README command 1 — the main job, on the CPU, with no download:
#   set up -> build a local corpus (music21 scores rendered with fluidsynth) -> prepare it -> train the tiny model
#   (gin/local_tiny.gin, bounded time) -> evaluate on the held-out-soundfont test split -> transcribe one test piece.
# Re-running resumes: finished corpus tracks, prepared splits and checkpoints are reused.
# Knobs (environment): MT3_QUICKSTART_DIR (default runs/local_tiny), MT3_CORPUS_MINUTES (default 40; ~1 min to build),
#   MT3_TRAIN_SECONDS (default: the gin file's MAX_TRAIN_SECONDS).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
MT3=.venv/bin/mt3
RUN=${MT3_QUICKSTART_DIR:-runs/local_tiny}  # mt3 transcribe/serve default to this model dir
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

step "3/6 check the training pipeline"
$MT3 data-stats local_notes_ties_vb1_train --num 32

step "4/6 train gin/local_tiny.gin on the CPU (model dir ${RUN})"
$MT3 train --gin_file=gin/local_tiny.gin --model_dir "$RUN" "${TRAIN_FLAGS[@]}"

step "5/6 evaluate on the test split (soundfont never seen in training)"
# local_tiny trains on 256-token targets, so decoding stops there too (MT3's 1024 would only decode padding).
$MT3 eval --checkpoint "$RUN" --gin_file=gin/eval.gin --tasks local_notes_ties_vb1_test --out "$RUN/eval" \
  --gin.MAX_DECODE_LENGTH=256

step "6/6 transcribe one held-out piece"
piece=$(ls -d "$CORPUS"/test/Track*/ | head -n 1)
$MT3 transcribe "${piece}mix.flac" -o "$RUN/transcriptions" --png --json --overwrite --gin.MAX_DECODE_LENGTH=256
$MT3 score "${piece}all_src.mid" "$RUN/transcriptions/mix.mid"

step "done"
cat "$RUN/eval/results.md"
echo
echo "model:          $RUN"
echo "eval results:   $RUN/eval/results.md  $RUN/eval/results.json"
echo "transcription:  $RUN/transcriptions/mix.mid  $RUN/transcriptions/mix.png  $RUN/transcriptions/mix.notes.json"
echo "piano rolls:    $(ls "$RUN"/eval/plots/*/*.png 2>/dev/null | head -n 3 | tr '\n' ' ')"
