"""Diagnostic: why decoded tokens are invalid, with the note-state decoder mask off and on (issue 27's lever).

For the first tracks of held-out sets, decodes every segment with each `InferenceConfig.decode_mask` mode and stitches
the segments as `mt3 transcribe` does, but with a decode function that records the reason of every invalid event
(the note decoder's ValueError message, reduced to its kind). The mask is segment-local (segments decode in
parallel), so what it cannot see -- a tie declaration of a pitch the previous segment did not leave sounding, and
whatever follows from it -- stays; this says how much that is.

Usage: .venv/bin/python -m benchmarks.decode_mask [--sets plain] [--max-tracks 4] [--modes none,note_state]
Prints one line per (set, mode) and writes --out (JSON) if given.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import collections  # noqa: E402
import dataclasses  # noqa: E402
from itertools import islice  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KINDS = ("inactive pitch/program in tie section", "pitch/program is already tied", "note-off for inactive",
         "tie section end event when not in tie section", "velocity cannot be zero for drum", "event time < current",
         "unexpected event type", "unknown event index")


def _kind(message: str) -> str:
    return next((k for k in KINDS if message.startswith(k)), message[:40])


def invalid_reasons(im, tokens, start_times) -> collections.Counter:
    """Stitches one file's segment tokens like `InferenceModel.stitch`, counting invalid events by kind."""
    from mt3 import metrics_utils, run_length_encoding

    spec = im.spec.encoding_spec
    reasons: collections.Counter = collections.Counter()

    untied: set = set()  # notes this segment's tie token ended because its tie section did not name them

    def decode_event(state, time, event, codec):
        if event.type == "tie" and state.is_tie_section:
            untied.clear()
            untied.update(k for k in state.active_pitches if k not in state.tied_pitches)
        try:
            spec.decode_event_fn(state, time, event, codec)
        except ValueError as err:
            kind = _kind(str(err))
            if kind == "note-off for inactive" and (event.value, state.current_program) in untied:
                kind += " (ended at this segment's start: not tied)"  # the model forgot the tie, not the note
            elif kind == "note-off for inactive" and any(pitch == event.value for pitch, _ in state.active_pitches):
                kind += " (sounding under another program)"  # the program hopped between onset and offset
            reasons[kind] += 1
            raise

    def decode_tokens(state, toks, start_time, max_time):
        unknown = int(sum(1 for t in toks if not 0 <= int(t) < im.codec.num_classes))
        reasons["unknown event index"] += unknown
        return run_length_encoding.decode_events(state, toks, start_time, max_time, im.codec, decode_event)

    snapped = [{"est_tokens": t, "start_time": metrics_utils.segment_start_time(s, im.codec)}
               for t, s in zip(tokens, start_times, strict=True)]
    metrics_utils.decode_and_combine_predictions(snapped, spec.init_decoding_state_fn, spec.begin_decoding_segment_fn,
                                                 decode_tokens, spec.flush_decoding_state_fn)
    return reasons


def run(sets: list[str], modes: list[str], max_tracks: int, root: Path, checkpoint: str | None) -> list[dict]:
    import numpy as np

    from mt3 import api
    from mt3.data import records

    transcriber = api.load_model(checkpoint)
    base = transcriber.inference_model
    rows = []
    for name in sets:
        recs = list(islice(records.read_records(records.shard_paths(root / name, "test")), max_tracks))
        for mode in modes:
            from mt3 import inference

            im = inference.InferenceModel(base.model, base.params, spec=base.spec,
                                          config=dataclasses.replace(base.config, decode_mask=mode), info=base.info)
            reasons: collections.Counter = collections.Counter()
            decoded = 0
            for rec in recs:
                seg = im.segment_audio(np.asarray(rec.audio, np.float32))
                tokens = im.decode_segments(seg.frames)
                decoded += sum(len(t) for t in tokens)
                reasons += invalid_reasons(im, tokens, seg.start_times)
            row = {"set": name, "mode": mode, "tracks": len(recs), "decoded_tokens": decoded,
                   "invalid": sum(reasons.values()), "reasons": dict(reasons.most_common())}
            print(f"{name} {mode}: {row['invalid']} invalid of {decoded} tokens "
                  f"({100 * row['invalid'] / max(decoded, 1):.1f} %): {row['reasons']}", flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="plain")
    parser.add_argument("--modes", default="none,invalid,note_state")
    parser.add_argument("--max-tracks", type=int, default=4)
    parser.add_argument("--root", type=Path, default=REPO / "data" / "heldout")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = run([s for s in args.sets.split(",") if s], [m for m in args.modes.split(",") if m], args.max_tracks,
               args.root, args.checkpoint)
    if args.out:
        from mt3.data.records import atomic_write_json

        atomic_write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
