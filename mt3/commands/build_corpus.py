"""`mt3 build-corpus --out DIR --minutes N --seed S [--workers N] [--soundfonts ...] [--per-stem-soundfonts]
[--textures arranged=W,plain=W,piano=W,performance=W]`: the offline stand-in for Slakh2100."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (Slakh2100 flac-redux layout + corpus.json)")
    parser.add_argument("--minutes", type=float, required=True, help="total minutes of rendered audio (80/10/10 split)")
    parser.add_argument("--seed", type=int, default=0, help="seed: same seed and minutes give the same corpus")
    parser.add_argument("--workers", type=int, default=2, help="parallel render processes (default 2)")
    parser.add_argument("--soundfonts", default=None,
                        help="comma-separated GM banks for the train/validation splits (default "
                             "FluidR3_GM.sf2,TimGM6mb.sf2; 'diverse' = those + sf_GMbank.sf2,OPL-3_FM_128M.sf2); "
                             "the test split always uses MuseScore General")
    parser.add_argument("--per-stem-soundfonts", action="store_true",
                        help="each stem draws its own bank from --soundfonts (one mix blends banks)")
    parser.add_argument("--textures", default=None, metavar="NAME=W,...",
                        help="mix of track textures, weights normalised (default arranged=1): arranged = re-arranged "
                             "for a random GM band (drums, transposition, tempo jitter); plain = the score's own "
                             "instrumentation as written; piano = a piano reduction; performance = plain or piano, "
                             "humanised (rubato, timing, dynamics, sustain pedal). Pieces keep their split: test "
                             "pieces never enter training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from mt3.corpus import rendering, texture_mix
    from mt3.corpus.builder import build_corpus

    textures = None if args.textures is None else texture_mix.parse(args.textures)

    fonts = rendering.TRAIN_SOUNDFONTS
    if args.soundfonts == "diverse":
        fonts = rendering.DIVERSE_TRAIN_SOUNDFONTS
    elif args.soundfonts:
        fonts = tuple(f.strip() for f in args.soundfonts.split(",") if f.strip())
    summary = build_corpus(args.out, minutes=args.minutes, seed=args.seed, workers=args.workers,
                           progress=not args.no_progress, soundfonts=fonts,
                           per_stem_soundfonts=args.per_stem_soundfonts, textures=textures)
    for split, info in summary["splits"].items():
        print(f"{split}: {info['tracks']} tracks, {info['seconds'] / 60:.2f} min")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} unusable scores (see corpus.json)")
    return 0
