#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine with Python 3.11: apt packages (as root, no prompt), a venv in .venv,
# the pinned Python requirements and `mt3` itself (editable). Safe to run again: it skips what is already done.
#
#   bash scripts/setup.sh                                   everything (CPU jax, soundfonts, browser): README's commands
#   MT3_ACCELERATOR=cuda12 bash scripts/setup.sh            + jax's CUDA 12 plugin and CUDA/cuDNN wheels (pip .[cuda12])
#   MT3_ACCELERATOR=tpu bash scripts/setup.sh               + libtpu (pip .[tpu])
#   MT3_SETUP=train MT3_ACCELERATOR=tpu bash scripts/setup.sh
#                                                           a training worker: no soundfonts, synthesizers or browser
#   MT3_SETUP_PLAN=1 ...                                    print what would be installed, install nothing
# Versions come from requirements.txt (every package pinned) and setup.py's extras (jax[cuda12] / jax[tpu] at the same
# jax pin, which pins the matching plugin / libtpu); accelerator installs keep the rest at its pin (-c requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

ACCELERATOR=${MT3_ACCELERATOR:-cpu}
SETUP=${MT3_SETUP:-full}
case "$ACCELERATOR" in cpu|cuda12|tpu) ;; *)
  echo "setup: MT3_ACCELERATOR must be cpu, cuda12 or tpu, got '$ACCELERATOR'" >&2; exit 2 ;; esac
case "$SETUP" in full|train) ;; *)
  echo "setup: MT3_SETUP must be full or train, got '$SETUP'" >&2; exit 2 ;; esac

if [ "$SETUP" = train ]; then
  APT_PACKAGES=(libsndfile1)  # training reads prepared records: no rendering (soundfonts), no browser, no ffmpeg
else
  APT_PACKAGES=(fluidsynth fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small libsndfile1 ffmpeg
                chromium chromium-driver  # ffmpeg: m4a/aac decoding; chromium: the browser test of `mt3 serve`
                csound-soundfont opl3-soundfont timidity freepats)  # more timbres: diverse training banks, held-out timbre
fi
PIP_EXTRA=()
[ "$ACCELERATOR" = cpu ] || PIP_EXTRA=(-c requirements.txt -e ".[$ACCELERATOR]")
if [ -n "${MT3_SETUP_PLAN:-}" ]; then
  echo "setup plan: MT3_SETUP=$SETUP MT3_ACCELERATOR=$ACCELERATOR"
  echo "apt: ${APT_PACKAGES[*]}"
  echo "pip: install -r requirements.txt; install --no-deps -e .${PIP_EXTRA[*]:+; install ${PIP_EXTRA[*]}}"
  exit 0
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing apt packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt setup.py | sha256sum | cut -d' ' -f1)
[ "$ACCELERATOR" = cpu ] || want=$(echo "$want $ACCELERATOR" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned Python requirements into .venv (about a minute)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  if [ ${#PIP_EXTRA[@]} -gt 0 ]; then
    echo "setup: installing jax for $ACCELERATOR (pip install -e .[$ACCELERATOR], the rest at its pins)"
    .venv/bin/python -m pip install -q "${PIP_EXTRA[@]}"
  fi
  echo "$want" > "$stamp"
fi
