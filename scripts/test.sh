#!/usr/bin/env bash
# README command 2: set up from scratch (idempotent) and run lint + the whole test suite (what CI runs).
#   scripts/test.sh --fast   lint + the tests not marked slow (-m "not slow": no subprocess training runs, no trained
#                            tiny model, no browser), a few minutes; other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for arg in "$@"; do
  if [[ "$arg" == "--fast" ]]; then args+=(-m "not slow"); else args+=("$arg"); fi
done
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
.venv/bin/ruff check mt3 tests benchmarks
# tests/test_paths.py (gs:// on a GCS emulator) runs in a process of its own: once another test has imported
# TensorFlow, etils.epath sends gs:// through TensorFlow's GCS client, which cannot be pointed at an emulator.
.venv/bin/python -m pytest tests --ignore=tests/test_paths.py ${args[@]+"${args[@]}"}
.venv/bin/python -m pytest tests/test_paths.py ${args[@]+"${args[@]}"} || [ $? -eq 5 ]  # 5: a -k/-m left none here
