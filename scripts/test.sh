#!/usr/bin/env bash
# README command 2: set up from scratch (idempotent) and run lint + the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
.venv/bin/ruff check mt3 tests benchmarks
.venv/bin/python -m pytest tests "$@"
