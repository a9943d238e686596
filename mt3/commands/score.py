"""`mt3 score REF.mid EST.mid [--json]`: MT3's metrics for one estimated MIDI against a reference MIDI.

Thin: `mt3.metrics.score_midi_files` does the work; this module only formats. Bad files raise InputError (exit 2).
Both files are scored as they hold their notes (as a MIDI player reads them: a note-off ends every sounding note of
its pitch on its channel). A reference whose notes run far past the estimate's gets a warning line on stderr (and
in the JSON's "warnings"): it is usually a whole piece scored against an excerpt.
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


# A reference this much longer than the estimate is most likely a whole piece scored against a transcribed excerpt:
# every reference note past the excerpt counts as missed, and the scores mean nothing (236 s against 2 s scores 0.001).
LENGTH_RATIO_WARNING = 1.5
LENGTH_SLACK_SECONDS = 5.0


def length_warning(ref_seconds: float, est_seconds: float, reference: str, estimate: str) -> str | None:
    """One line when the reference's notes run far past the estimate's (None otherwise, and for an empty estimate)."""
    if est_seconds <= 0.0 or ref_seconds <= est_seconds * LENGTH_RATIO_WARNING + LENGTH_SLACK_SECONDS:
        return None
    return (f"{reference} lasts {ref_seconds:.1f} s but the notes of {estimate} end at {est_seconds:.1f} s: every "
            "reference note after that counts as missed; if the estimate transcribes an excerpt, score it against "
            "the same excerpt of the reference")


def main(args: argparse.Namespace) -> int:
    import sys

    from mt3.metrics import score_midi_files
    from mt3.midi_io import load_midi

    result = score_midi_files(args.reference, args.estimate, velocity=args.velocity)
    ends = [max([0.0, *(n.end_time for n in load_midi(path, allow_empty=True).notes)])
            for path in (args.reference, args.estimate)]  # what each file holds, as scored
    warning = length_warning(*ends, args.reference, args.estimate)
    if warning:
        print(f"mt3 score: warning: {warning}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(_json_safe({"reference": args.reference, "estimate": args.estimate, **result,
                                     "warnings": [warning] if warning else []}), sort_keys=False))
    else:
        print(format_report(result, velocity=args.velocity))
    return 0
