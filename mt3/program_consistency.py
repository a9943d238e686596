"""Instrument consistency across segments at inference time (magenta/mt3#87), and the figures that measure it.

MT3 decodes each 2.048 s segment on its own, so one instrument's notes can hop between programs from segment to
segment ("instrument leakage"). Nothing here retrains anything; three inference-time remedies, all off by default so
MT3's own behaviour stays reproducible (`inference.InferenceConfig` fields, gin knobs in infer.gin, CLI flags):

- a program set given by the user (`--programs 0,33,40`): a decoder logit mask forbids every other program token;
- a two-pass decode: the first pass's notes give the file's program histogram, the programs holding at least
  `min_program_share` of the (non-drum) notes form the file's set, and the second pass decodes with that mask;
- post-hoc reassignment of each note's program: to the file's dominant program of its GM family ("family"), or of all
  non-drum notes to the file's single dominant program ("dominant").

Drums are a separate event type in MT3's vocabulary, so no remedy touches them. The measurement follows MR-MT3
(Tan et al., 2023): for every reference instrument, over how many estimated programs its (onset-matched) notes are
spread, and how many distinct programs the estimate uses against the reference. Pure numpy + note_seq.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mt3 import note_sequences, vocabularies

REASSIGN_MODES = ("none", "family", "dominant")
ONSET_TOLERANCE = 0.05  # mir_eval's onset window, as the onset F1 uses


def check_programs(programs: Iterable[int] | None, where: str = "programs") -> tuple[int, ...] | None:
    """A user program list -> sorted unique tuple; ValueError naming `where` when an entry is not a GM program."""
    if programs is None:
        return None
    out = []
    for p in programs:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 0 <= int(p) <= 127:
            raise ValueError(f"{where}: {p!r} is not a General MIDI program (an int 0..127)")
        out.append(int(p))
    if not out:
        raise ValueError(f"{where}: an empty program set would forbid every pitched note; leave it unset instead")
    return tuple(sorted(set(out)))


def parse_programs(text: str) -> tuple[int, ...]:
    """'0,33,40' -> (0, 33, 40) (the `--programs` flag); ValueError naming the bad entry."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise ValueError(f"--programs: {text!r} is not a comma-separated list of GM programs ({err})") from None
    return check_programs(values, "--programs")


def program_note_counts(ns) -> collections.Counter:
    """Non-drum notes per program."""
    return collections.Counter(n.program for n in ns.notes if not n.is_drum)


def estimate_program_set(ns, min_share: float) -> tuple[int, ...]:
    """The file's programs: those holding at least `min_share` of its non-drum notes (the top one always)."""
    counts = program_note_counts(ns)
    if not counts:
        return ()
    total = sum(counts.values())
    top = counts.most_common(1)[0][0]
    return tuple(sorted({p for p, c in counts.items() if c >= min_share * total} | {top}))


def allowed_ids(codec, programs: Sequence[int], vocab_size: int) -> np.ndarray:
    """bool [vocab_size]: False on the program tokens outside `programs` (vocabulary ids = codec index + 3).

    An empty set constrains nothing (a file whose first pass found no pitched notes)."""
    allowed = np.ones(vocab_size, bool)
    if not programs:
        return allowed
    low, high = codec.event_type_range("program")
    ids = vocabularies.encode_tokens(np.arange(low, high + 1))
    allowed[ids] = False
    allowed[ids[np.asarray(programs, int)]] = True
    return allowed


def reassign_programs(ns, mode: str):
    """A copy of `ns` whose non-drum notes take the file's dominant program of their GM family ('family') or the
    file's single dominant program ('dominant'); instruments re-numbered one per program. 'none' returns `ns`."""
    if mode not in REASSIGN_MODES:
        raise ValueError(f"reassign_programs must be one of {REASSIGN_MODES}, got {mode!r}")
    counts = program_note_counts(ns)
    if mode == "none" or not counts:
        return ns
    if mode == "dominant":
        top = counts.most_common(1)[0][0]
        target = {p: top for p in counts}
    else:
        best: dict[int, tuple[int, int]] = {}
        for p, c in counts.items():  # ties go to the lower program: deterministic
            if p // 8 not in best or (c, -p) > (best[p // 8][1], -best[p // 8][0]):
                best[p // 8] = (p, c)
        target = {p: best[p // 8][0] for p in counts}
    out = ns.__class__()
    out.CopyFrom(ns)
    for note in out.notes:
        if not note.is_drum:
            note.program = target[note.program]
    note_sequences.assign_instruments(out)
    return out


def restrict_to_set(ns, programs: Sequence[int]):
    """`ns` with every non-drum note outside `programs` moved into the set: to the set's program of its GM family
    holding the most notes, else to the set's program holding the most notes. The logit mask alone cannot promise
    this: a segment that emits no program token decodes its notes as program 0 (MT3's decoding state)."""
    if not programs:
        return ns
    counts = program_note_counts(ns)
    if set(counts) <= set(programs):
        return ns
    rank = sorted(programs, key=lambda p: (-counts.get(p, 0), p))
    target = {p: next((q for q in rank if q // 8 == p // 8), rank[0]) for p in counts if p not in programs}
    out = ns.__class__()
    out.CopyFrom(ns)
    for note in out.notes:
        if not note.is_drum and note.program in target:
            note.program = target[note.program]
    note_sequences.assign_instruments(out)
    return out


def leakage_figures(ref_ns, est_ns) -> dict[str, Any]:
    """MR-MT3's leakage figures for one track (non-drum notes).

    Reference and estimated notes are matched by onset (50 ms) and pitch, ignoring programs (mir_eval); then for each
    reference instrument: `programs_per_instrument` = distinct estimated programs among its matched notes (1 = no
    leakage), `main_program_share` = the share of its matched notes in its most frequent estimated program.
    Both are means over instruments with matched notes; `ref_programs` / `est_programs` count distinct programs.
    """
    import mir_eval

    ref = [n for n in ref_ns.notes if not n.is_drum]
    est = [n for n in est_ns.notes if not n.is_drum]
    figures: dict[str, Any] = {"ref_programs": len({n.program for n in ref}),
                               "est_programs": len({n.program for n in est}),
                               "programs_per_instrument": None, "main_program_share": None}
    if not ref or not est:
        return figures

    def arrays(notes):
        intervals = np.array([[n.start_time, max(n.end_time, n.start_time + 1e-3)] for n in notes])
        return intervals, np.array([440.0 * 2 ** ((n.pitch - 69) / 12) for n in notes])

    (ref_iv, ref_hz), (est_iv, est_hz) = arrays(ref), arrays(est)
    pairs = mir_eval.transcription.match_notes(ref_iv, ref_hz, est_iv, est_hz, onset_tolerance=ONSET_TOLERANCE,
                                               offset_ratio=None)
    by_instrument: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for r, e in pairs:
        by_instrument[(ref[r].instrument, ref[r].program)].append(est[e].program)
    if by_instrument:
        spread = [len(set(progs)) for progs in by_instrument.values()]
        share = [collections.Counter(progs).most_common(1)[0][1] / len(progs) for progs in by_instrument.values()]
        figures.update(programs_per_instrument=float(np.mean(spread)), main_program_share=float(np.mean(share)))
    return figures


def mean_leakage(per_track: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Means over tracks of `leakage_figures` (None entries skipped)."""
    keys = ("ref_programs", "est_programs", "programs_per_instrument", "main_program_share")
    out: dict[str, float | None] = {}
    for key in keys:
        values = [t[key] for t in per_track if t.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out
