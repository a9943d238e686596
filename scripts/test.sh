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
# It runs beside the rest: its time goes to the emulator's one-request-at-a-time HTTP server, not to the CPU, so
# overlapping it takes minutes off the suite. Its output is printed once it has finished.
paths_log=$(mktemp)
trap 'kill "${paths_pid:-}" 2>/dev/null || true; rm -f "$paths_log"' EXIT
.venv/bin/python -m pytest tests/test_paths.py ${args[@]+"${args[@]}"} > "$paths_log" 2>&1 &
paths_pid=$!
rc=0
.venv/bin/python -m pytest tests --ignore=tests/test_paths.py ${args[@]+"${args[@]}"} || rc=$?
paths_rc=0
wait "$paths_pid" || paths_rc=$?
paths_pid=
echo "---- tests/test_paths.py (run beside the rest) ----"
cat "$paths_log"
[ "$paths_rc" -eq 5 ] && paths_rc=0  # 5: a -k/-m left no test in that file
[ "$rc" -ne 0 ] && exit "$rc"
exit "$paths_rc"
