"""`mt3 prepare-data DATASET --root DIR --out DIR`: a native dataset tree -> sharded TFRecords + manifests.

Thin: parses flags, calls `mt3.converters.base.prepare_dataset`, prints a summary table. Re-running is safe: finished
splits are skipped, unfinished ones are redone from scratch.
"""

from __future__ import annotations

import argparse
import logging

from mt3.converters import CONVERTERS

MAX_PROGRAMS_SHOWN = 12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET",
                        help=f"dataset whose native layout is under --root: {', '.join(sorted(CONVERTERS))}, or the "
                             "dotted path of your own converter module (my_project.mydata); 'pairs': your own "
                             "recordings, each audio "
                             "file beside a .mid/.midi of the same stem, split by the folders train/ validation/ "
                             "test/ if any exists, else by a hash of each pair's relative path without extension "
                             "(sha256, 80/10/10); --out DATA_DIR/NAME registers tasks NAME_notes_ties_vb1_*")
    parser.add_argument("--root", required=True, help="the dataset as its publisher ships it (e.g. maestro-v3.0.0/)")
    parser.add_argument("--out", required=True, help="output folder, e.g. $MT3_DATA_DIR/slakh")
    parser.add_argument("--skip-bad", action="store_true",
                        help="log and skip tracks with missing/corrupt files (listed in SPLIT.skipped.json)")
    parser.add_argument("--workers", type=int, default=1, help="processes loading tracks in parallel (default 1)")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="shards per split (default: one per ~64 tracks)")
    parser.add_argument("--splits", default=None,
                        help="comma-separated splits to convert (default: all found). On a tree without split "
                             "folders (babyslakh) a single split name sets the split its tracks go to")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="converter option, repeatable: e.g. guitarset audio_sources=mic,mix; slakh "
                             "program_mapping=slakh_class|full (default auto: MT3's Slakh-class programs, but GM "
                             "programs for the local corpus of mt3 build-corpus); pairs program=N|drums (every note "
                             "gets GM program N, or is a drum; default: the MIDI's programs and drum channel)")


def parse_options(items: list[str]) -> dict:
    """KEY=VALUE pairs; a VALUE with commas becomes a tuple of strings (GuitarSet's audio_sources=mic,mix)."""
    from mt3.errors import InputError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(None, f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = tuple(v.strip() for v in value.split(",")) if "," in value else value.strip()
    return options


def format_summary(results: dict[str, dict]) -> str:
    """A plain-text table: one row per split (tracks, hours, notes, drum notes, programs, skipped)."""
    header = ("split", "tracks", "hours", "notes", "drum notes", "programs", "skipped", "status")
    rows = [header]
    for split, m in results.items():
        programs = sorted(int(p) for p in m.get("programs", {}))
        shown = ",".join(str(p) for p in programs[:MAX_PROGRAMS_SHOWN]) + (",..." if len(programs) > 12 else "")
        rows.append((
            split, str(m["num_tracks"]), f"{m['hours']:.3f}", str(m["num_notes"]), str(m.get("num_drum_notes", 0)),
            f"{len(programs)}: {shown}" if programs else "0", str(len(m.get("skipped", []))),
            "already complete" if m.get("resumed") else "written",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from mt3.converters.base import prepare_dataset

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    results = prepare_dataset(args.dataset, args.root, args.out, skip_bad=args.skip_bad, workers=args.workers,
                              num_shards=args.num_shards, splits=splits, options=parse_options(args.option))
    print(f"{args.dataset} -> {args.out}")
    print(format_summary(results))
    mappings = sorted({m["program_mapping"] for m in results.values() if m.get("program_mapping")})
    if mappings:  # what the tasks check against (DatasetConfig.program_mapping)
        print(f"program_mapping: {', '.join(mappings)}")
    for split, manifest in results.items():
        for item in manifest.get("skipped", []):
            print(f"skipped ({split}) {item['id']}: {item['path']}: {item['problem']}")
    if args.dataset == "pairs":
        print(pairs_tasks_line(args.out, results))
    return 0


def pairs_tasks_line(out: str, results: dict[str, dict]) -> str:
    """What a `pairs` folder becomes: its task names, and the data dir under which it registers them."""
    from pathlib import Path

    name, parent = Path(out).resolve().name, Path(out).resolve().parent
    splits = "{" + ",".join(s for s in ("train", "validation", "test") if s in results) + "}"
    return (f"tasks: {name}_notes_ties_vb1_{splits} and the mixture {name}_notes_ties_vb1_eval, registered when the "
            f"data dir ($MT3_DATA_DIR or gin DATA_DIR) is {parent}")
