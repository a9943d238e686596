"""`mt3 tokens IN.mid --vocab {mt3,ismir2021} [--segment-seconds S] -o OUT.mid [--json]`.

Shows what a model is trained to emit for a MIDI file: the notes are tokenized segment by segment exactly as training
targets (ties, program granularity, run-length shifts), then decoded and stitched back and written to OUT.mid. With
the mt3 vocabulary OUT scores F1 = 1.0 against IN (up to 10 ms quantisation); `mt3 score IN.mid OUT.mid` checks it.
Thin: `metrics_utils.note_sequence_round_trip` does the work.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.mid", help="MIDI file to tokenize (sustain pedal is applied)")
    parser.add_argument("--vocab", choices=("mt3", "ismir2021"), default="mt3",
                        help="vocabulary preset: mt3 (1 velocity bin, ties, programs) or ismir2021 (127 velocity "
                             "bins, no ties, no programs); default mt3")
    parser.add_argument("--segment-seconds", type=float, default=None, metavar="S",
                        help="segment length in seconds (default: the vocabulary's input length, 2.048 for mt3, "
                             "4.096 for ismir2021); longer than 10 s needs several shift tokens")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.mid", help="where to write the reconstruction")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.mid if it exists (default: refuse)")


def main(args: argparse.Namespace) -> int:
    from mt3 import metrics_utils
    from mt3.errors import InputError
    from mt3.midi_io import load_midi, write_midi

    if args.segment_seconds is not None and not args.segment_seconds >= 0.008:
        raise InputError(None, f"--segment-seconds must be at least one frame (0.008), got {args.segment_seconds}")
    out = Path(args.output)
    if out.is_dir():
        raise InputError(out, "is a directory; -o names the MIDI file to write")
    if out.exists() and not args.overwrite:  # as `mt3 transcribe`: outputs never replace a file silently
        raise InputError(out, "output exists (pass --overwrite to replace it)")
    if os.path.abspath(out) == os.path.abspath(args.input):
        raise InputError(out, "-o would replace the input; choose another file")
    ns = load_midi(args.input)
    result = metrics_utils.note_sequence_round_trip(ns, vocab=args.vocab, segment_seconds=args.segment_seconds)
    write_midi(result["est_ns"], args.output)
    counts = {key: result[key] for key in ("tokens", "segments", "max_segment_tokens", "invalid_events",
                                           "dropped_events", "notes_in", "notes_out")}
    if args.json:
        print(json.dumps({"input": str(args.input), "output": str(args.output), "vocab": args.vocab, **counts}))
    else:
        print(f"{args.input}: {counts['notes_in']} notes -> {counts['tokens']} tokens in {counts['segments']} "
              f"segments (longest {counts['max_segment_tokens']} + EOS) -> {counts['notes_out']} notes; "
              f"invalid events: {counts['invalid_events']}, dropped events: {counts['dropped_events']}; "
              f"wrote {args.output}")
    return 0
