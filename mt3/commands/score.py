"""`mt3 score REF.mid EST.mid [--json]`: MT3's metrics for one estimated MIDI against a reference MIDI.

Thin: `mt3.metrics.score_midi_files` does the work; this module only formats. Bad files raise InputError (exit 2).
"""

from __future__ import annotations

import argparse
import json
import math

_ROWS = (
    ("Onset", "onset"),
    ("Onset + offset", "onset_offset"),
    ("Multi-instrument (full)", "multi_instrument"),
    ("Multi-instrument (MIDI class)", "multi_instrument", "_midi_class"),
    ("Multi-instrument (flat)", "multi_instrument", "_flat"),
    ("Drum onset", "drum_onset"),
    ("Frame", "frame"),
)
_VELOCITY_ROWS = (("Onset + velocity", "onset_velocity"), ("Onset + offset + velocity", "onset_offset_velocity"))


# Why `mt3 score REF REF` can give frame F1 below 1: MT3's frame metric (as Cerberus's) counts a REFERENCE frame active
# only where the summed velocity exceeds metrics.REF_VELOCITY_THRESHOLD, an ESTIMATED frame wherever any note sounds.
FRAME_NOTE = ("(Frame: reference frames count as active only above summed velocity {t}, estimated frames above 0, as "
              "in MT3; quiet reference notes (velocity <= {t}) lower frame precision, so a file scored against itself "
              "can be below 1.)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", metavar="REF.mid", help="reference (ground-truth) MIDI file")
    parser.add_argument("estimate", metavar="EST.mid", help="estimated (transcribed) MIDI file; may have no notes")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--velocity", action="store_true",
                        help="also score velocities (mir_eval.transcription_velocity; piano-style vocabularies)")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_report(result: dict, *, velocity: bool = False) -> str:
    """Plain-text tables: the headline P/R/F1 rows and the per-instrument-class breakdown."""
    rows = _ROWS + (_VELOCITY_ROWS if velocity else ())
    lines = [f"reference notes: {result['ref_notes']} ({result['ref_drum_notes']} drum)   "
             f"estimated notes: {result['est_notes']} ({result['est_drum_notes']} drum)", ""]
    width = max(len(row[0]) for row in rows)
    lines.append(f"{'metric':<{width}}  {'precision':>9}  {'recall':>9}  {'F1':>9}")
    for label, prefix, *suffix in rows:
        sfx = suffix[0] if suffix else ""
        values = [result.get(f"{prefix}_{name}{sfx}") for name in ("precision", "recall", "f1")]
        lines.append(f"{label:<{width}}  " + "  ".join(f"{_fmt(v):>9}" for v in values))
    from mt3.metrics import REF_VELOCITY_THRESHOLD

    lines.append(FRAME_NOTE.format(t=REF_VELOCITY_THRESHOLD))
    classes = result.get("instrument_classes") or {}
    if classes:
        cwidth = max(len("instrument class"), *(len(name) for name in classes))
        lines += ["", f"{'instrument class':<{cwidth}}  {'ref':>6}  {'est':>6}  {'onset F1':>9}  {'on+off F1':>9}"]
        for name, entry in classes.items():
            lines.append(f"{name:<{cwidth}}  {entry['ref_notes']:>6}  {entry['est_notes']:>6}  "
                         f"{_fmt(entry['onset_f1']):>9}  {_fmt(entry['onset_offset_f1']):>9}")
    return "\n".join(lines)


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def main(args: argparse.Namespace) -> int:
    from mt3.metrics import score_midi_files

    result = score_midi_files(args.reference, args.estimate, velocity=args.velocity)
    if args.json:
        print(json.dumps(_json_safe({"reference": args.reference, "estimate": args.estimate, **result}),
                         sort_keys=False))
    else:
        print(format_report(result, velocity=args.velocity))
    return 0
