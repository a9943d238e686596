"""Per-note confidence from the decoder's token probabilities (`mt3 transcribe --csv/--json`, `--min-confidence`).

MT3 writes a note as a few tokens: a time (the shift tokens before it), a program (pitched notes), a velocity and a
pitch (or drum). The greedy decoder picks each token by argmax; the probability it gave that token says how sure it
was of that decision (`decoding.greedy_decode_compacting(..., return_log_probs=True)`). A note's confidence combines
the log-probabilities of the tokens that define its onset:

- time: the shift tokens of the run that placed it (none when it sits at its segment's start: nothing was decided);
- program: the program token in effect (pitched notes; carried across segments like MT3's decoding state);
- velocity: the velocity token in effect;
- the pitch or drum token itself.

`product` (the default, `AGGREGATES`) multiplies them: the decoder's probability of writing exactly this onset
(time, program, velocity, pitch) given what came before. `min` (the least sure decision) and `mean` are kept for
`benchmarks/confidence.py`, which measured on held-out renders that the product ranks true notes above false ones
best (average precision 0.761 vs 0.745 mean and 0.726 min; docs/confidence.md).

The walk mirrors `run_length_encoding.decode_events` + `note_sequences.decode_note_event` (same snapped segment
start, same time arithmetic, same stop at the next segment's start), so a note's onset key matches the stitched
note's. Notes are keyed by (onset in ms, pitch, is_drum) -- not by program, which the instrument options may change
afterwards. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

AGGREGATES = ("min", "mean", "product")
DEFAULT_AGGREGATE = "product"

NoteKey = tuple[int, int, bool]  # (onset in ms, pitch, is_drum)


def note_key(note) -> NoteKey:
    """The key of a NoteSequence note (or of an onset at `start_time`)."""
    return (int(round(float(note.start_time) * 1000.0)), int(note.pitch), bool(note.is_drum))


def aggregate(log_probs: Sequence[float], how: str = DEFAULT_AGGREGATE) -> float:
    """Token log-probabilities -> a confidence in [0, 1]: exp(min), exp(mean) or exp(sum) of them."""
    if how not in AGGREGATES:
        raise ValueError(f"confidence aggregate must be one of {AGGREGATES}, got {how!r}")
    values = np.asarray(log_probs, np.float64)
    if values.size == 0:
        return 1.0
    reduced = {"min": values.min, "mean": values.mean, "product": values.sum}[how]()
    return float(math.exp(min(0.0, reduced)))


def onset_token_log_probs(segments: Sequence[tuple[np.ndarray, np.ndarray, float]], codec, *,
                          include_ties: bool) -> dict[NoteKey, list[float]]:
    """{note key: the log-probabilities of the tokens that made its onset} for one file's segments in time order.

    `segments`: (codec token indices trimmed at EOS, their log-probabilities, the segment's snapped start time).
    Where two onsets share a key (two programs on one pitch at one time) the surer one is kept.
    """
    sps = codec.steps_per_second
    out: dict[NoteKey, list[float]] = {}
    program_lp: list[float] = []
    velocity_lp: list[float] = []
    velocity = 1
    for index, (tokens, log_probs, start_time) in enumerate(segments):
        max_time = segments[index + 1][2] if index + 1 < len(segments) else None
        in_ties = include_ties
        cur_steps, cur_time = 0, start_time
        time_lp: list[float] = []
        after_event = True  # the next shift starts a new run
        for token, lp in zip(np.asarray(tokens).tolist(), np.asarray(log_probs, np.float64).tolist(), strict=True):
            try:
                event = codec.decode_event_index(int(token))
            except ValueError:
                continue
            if event.type == "shift":
                if after_event:
                    time_lp, after_event = [], False
                time_lp.append(lp)
                cur_steps += event.value
                cur_time = start_time + cur_steps / sps
                if max_time is not None and cur_time > max_time:
                    break
                continue
            cur_steps, after_event = 0, True
            if event.type == "program":
                program_lp = [lp]
            elif event.type == "velocity":
                velocity, velocity_lp = event.value, [lp]
            elif event.type == "tie":
                in_ties = False
            elif event.type in ("pitch", "drum") and not (event.type == "pitch" and in_ties) and velocity != 0:
                drum = event.type == "drum"
                key = (int(round(cur_time * 1000.0)), int(event.value), drum)
                parts = [*time_lp, *velocity_lp, lp, *([] if drum else program_lp)]
                if key not in out or min(parts) > min(out[key]):
                    out[key] = parts
    return out


class NoteConfidence:
    """Confidence of a file's notes, looked up by note (`note_key`); notes it does not know (none decoded with
    probabilities, e.g. the fixed-shape or sampling decoder) get None."""

    def __init__(self, log_probs: dict[NoteKey, list[float]], how: str = DEFAULT_AGGREGATE):
        if how not in AGGREGATES:
            raise ValueError(f"confidence aggregate must be one of {AGGREGATES}, got {how!r}")
        self.log_probs = log_probs
        self.how = how

    def __call__(self, note) -> float | None:
        parts = self.log_probs.get(note_key(note))
        return None if parts is None else aggregate(parts, self.how)

    def __len__(self) -> int:
        return len(self.log_probs)


def drop_below(ns, confidence: NoteConfidence, threshold: float) -> int:
    """Removes (in place) the notes of `ns` whose confidence is below `threshold` (unknown confidence: kept);
    returns how many went."""
    if threshold <= 0.0:
        return 0
    from mt3.midi_io import keep_notes

    return keep_notes(ns, [n for n in ns.notes if (c := confidence(n)) is None or c >= threshold])
