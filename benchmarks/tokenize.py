"""Benchmark: tokenize and detokenize a 4-minute, 10-instrument track as MT3 training and inference would.

The track is real music: the parts of three music21 corpus works (Bach chorale, Haydn quartet, Joplin rag) tiled to
4 minutes and transposed, on 9 GM programs, plus a drum part whose hits follow the Joplin bass line (10 instruments).

  tokenize   = tokenize_note_sequence (whole track, ties) + segment_targets for every 256-frame segment
  detokenize = metrics_utils.event_predictions_to_ns over all segments (stitching with ties)

Usage: .venv/bin/python benchmarks/tokenize.py [--seconds 240] [--repeats 5]
"""

from __future__ import annotations

import os
import sys

# This file's name shadows the standard library's `tokenize` (which numpy/inspect import) when run as a script:
# drop its folder from the import path before anything else is imported.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

# (music21 corpus path, seconds per quarter note) -> parts become instruments in order
PIECES = (("bach/bwv66.6", 0.5), ("haydn/opus74no1/movement3", 0.4), ("joplin/maple_leaf_rag", 0.3))
PROGRAMS = (73, 71, 70, 32, 40, 48, 41, 42, 0)  # flute, clarinet, bassoon, bass, violin, strings, viola, cello, piano
TRANSPOSE = (0, 2, -3, 0, 5, 0, -2, 0, 0)
DRUM_PITCHES = (36, 38, 42, 46)  # kick, snare, closed and open hi-hat


def _parts() -> list[list[tuple[float, float, int]]]:
    """Every part of PIECES as [(start, end, pitch)] in seconds."""
    import music21

    parts = []
    for path, spq in PIECES:
        score = music21.corpus.parse(path)
        for part in score.parts:
            notes = []
            for n in part.flatten().notes:
                start = float(n.getOffsetInHierarchy(score)) * spq
                end = start + float(n.quarterLength) * spq
                if end > start:
                    notes += [(start, end, p.midi) for p in (n.pitches if n.isChord else [n.pitch])]
            parts.append(notes)
    return parts


def build_track(seconds: float = 240.0):
    """A NoteSequence of `seconds`: 9 pitched instruments (PROGRAMS) and drums whose hits follow the 10th part."""
    import note_seq

    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    parts = _parts()
    for index, notes in enumerate(parts[: len(PROGRAMS) + 1]):
        is_drums = index == len(PROGRAMS)
        length = max(end for _, end, _ in notes)
        for tile in range(int(np.ceil(seconds / length))):
            offset = tile * length
            for start, end, pitch in notes:
                if start + offset >= seconds:
                    continue
                if is_drums:
                    ns.notes.add(start_time=start + offset, end_time=start + offset + 0.05,
                                 pitch=DRUM_PITCHES[pitch % len(DRUM_PITCHES)], velocity=100, is_drum=True,
                                 instrument=9)
                    continue
                shifted = int(np.clip(pitch + TRANSPOSE[index] + (tile % 3), 0, 127))
                ns.notes.add(start_time=start + offset, end_time=min(end + offset, seconds), pitch=shifted,
                             velocity=60 + (shifted % 40), program=PROGRAMS[index], instrument=index)
    ns.total_time = seconds
    return ns


def _best_of(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    from mt3 import metrics_utils, note_sequences, vocabularies
    from mt3.data import track_tokens

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--segment-frames", type=int, default=256)
    args = parser.parse_args()

    ns = note_sequences.trim_overlapping_notes(build_track(args.seconds))
    codec = vocabularies.build_codec(vocabularies.MT3_VOCAB_CONFIG)
    spec = note_sequences.NoteEncodingWithTiesSpec
    frame_times = track_tokens.audio_frame_times(int((args.seconds + 0.1) * 16000))
    n_notes = len(ns.notes)
    n_programs = len({(n.program, n.is_drum) for n in ns.notes})

    def tokenize():
        track = track_tokens.tokenize_note_sequence(ns, frame_times, codec, spec)
        return [{"est_tokens": track_tokens.segment_targets(track, s, s + args.segment_frames, codec, True),
                 "start_time": float(frame_times[s])} for s in range(0, len(frame_times), args.segment_frames)]

    def detokenize():
        return metrics_utils.event_predictions_to_ns(predictions, codec, spec)

    t_tok, predictions = _best_of(tokenize, args.repeats)
    t_detok, decoded = _best_of(detokenize, max(1, args.repeats // 2))
    tokens = sum(len(p["est_tokens"]) for p in predictions)
    print(f"track: {args.seconds:.0f} s, {n_notes} notes, {n_programs} instruments, {len(frame_times)} frames, "
          f"{len(predictions)} segments of {args.segment_frames} frames, {tokens} tokens "
          f"(longest segment {max(len(p['est_tokens']) for p in predictions)})")
    print(f"tokenize   (track + all segments, ties): {t_tok * 1e3:8.1f} ms  {n_notes / t_tok:12,.0f} notes/s")
    print(f"detokenize (stitch all segments)       : {t_detok * 1e3:8.1f} ms  {n_notes / t_detok:12,.0f} notes/s")
    print(f"decoded notes: {len(decoded['est_ns'].notes)}, invalid events: {decoded['est_invalid_events']}, "
          f"dropped events: {decoded['est_dropped_events']}")


if __name__ == "__main__":
    main()
