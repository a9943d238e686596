"""Instrument consistency across segments at inference time (magenta/mt3#87), and the figures that measure it.

MT3 decodes each 2.048 s segment on its own, so one instrument's notes can hop between programs from segment to
segment ("instrument leakage"). Nothing here retrains anything; three inference-time remedies, all off by default so
MT3's own behaviour stays reproducible (`inference.InferenceConfig` fields, gin knobs in infer.gin, CLI flags):

- a program set given by the user (`--programs 0,33,40`): by default (`programs_mode` "move") the file is decoded
  freely and every note of another program moves to the nearest allowed one (`nearest_allowed`: same GM family
  first, else the nearest program number); "mask" instead forbids every other program token in the decoder, which
  makes the model drop notes it would have given another program (192 -> 105 pitched notes on a string piece given
  `--programs 0,32`), so it is for a set the user is sure of;
- a two-pass decode: the first pass's notes give the file's program histogram, the programs holding at least
  `min_program_share` of the (non-drum) notes form the file's set, and the second pass decodes with that mask;
- post-hoc reassignment of each note's program: to the file's dominant program of its GM family ("family"), or of all
  non-drum notes to the file's single dominant program ("dominant").

Drums are a separate event type in MT3's vocabulary, so no remedy touches them. Every remedy says what it did
(`ProgramReport`: programs kept, notes moved and where, notes a masked pass lost), printed by `mt3 transcribe` and
returned by `mt3 serve`. The measurement follows MR-MT3
(Tan et al., 2023): for every reference instrument, over how many estimated programs its (onset-matched) notes are
spread, and how many distinct programs the estimate uses against the reference. Pure numpy + note_seq.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mt3 import note_sequences, vocabularies

REASSIGN_MODES = ("none", "family", "dominant")
PROGRAMS_MODES = ("move", "mask")  # a user program set: move other programs' notes into it, or mask the decoder
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


Moves = list[tuple[int, int, int]]  # (from program, to program, notes), sorted


def _moved(ns, target: dict[int, int]) -> tuple[Any, Moves]:
    """A copy of `ns` whose non-drum notes of each program p in `target` take program target[p] (instruments
    re-numbered one per program), and the moves made."""
    counts = program_note_counts(ns)
    moves = sorted((p, q, counts[p]) for p, q in target.items() if p != q and counts.get(p))
    if not moves:
        return ns, []
    out = ns.__class__()
    out.CopyFrom(ns)
    for note in out.notes:
        if not note.is_drum and note.program in target:
            note.program = target[note.program]
    note_sequences.assign_instruments(out)
    return out, moves


def reassign_programs_with_moves(ns, mode: str) -> tuple[Any, Moves]:
    """`reassign_programs` and the moves it made."""
    if mode not in REASSIGN_MODES:
        raise ValueError(f"reassign_programs must be one of {REASSIGN_MODES}, got {mode!r}")
    counts = program_note_counts(ns)
    if mode == "none" or not counts:
        return ns, []
    if mode == "dominant":
        top = counts.most_common(1)[0][0]
        return _moved(ns, {p: top for p in counts})
    best: dict[int, tuple[int, int]] = {}
    for p, c in counts.items():  # ties go to the lower program: deterministic
        if p // 8 not in best or (c, -p) > (best[p // 8][1], -best[p // 8][0]):
            best[p // 8] = (p, c)
    return _moved(ns, {p: best[p // 8][0] for p in counts})


def reassign_programs(ns, mode: str):
    """A copy of `ns` whose non-drum notes take the file's dominant program of their GM family ('family') or the
    file's single dominant program ('dominant'); instruments re-numbered one per program. 'none' returns `ns`."""
    return reassign_programs_with_moves(ns, mode)[0]


def nearest_allowed(program: int, programs: Sequence[int]) -> int:
    """The program of `programs` a note of `program` moves to: the nearest program number within its GM family,
    else the nearest program number overall (ties to the lower). Why this rule: a family's programs are variants of
    one instrument (a viola's notes belong with a violin), and GM numbers neighbouring families by kinship
    (guitar 24-31, bass 32-39, strings 40-47), so the nearest number is the closest sound left."""
    same_family = [q for q in programs if q // 8 == program // 8]
    return min(same_family or programs, key=lambda q: (abs(q - program), q))


def move_into_set(ns, programs: Sequence[int]) -> tuple[Any, Moves]:
    """`ns` with every non-drum note outside `programs` moved to `nearest_allowed`, and the moves made. The logit
    mask alone cannot promise a set either: a segment that emits no program token decodes its notes as program 0
    (MT3's decoding state)."""
    if not programs:
        return ns, []
    return _moved(ns, {p: nearest_allowed(p, programs) for p in program_note_counts(ns) if p not in programs})


def restrict_to_set(ns, programs: Sequence[int]):
    """`ns` with every non-drum note outside `programs` moved into the set (`move_into_set`)."""
    return move_into_set(ns, programs)[0]


def _name(program: int) -> str:
    import pretty_midi

    return f"{pretty_midi.program_to_instrument_name(int(program))} ({program})"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _moves_text(moves: Moves) -> str:
    return ", ".join(f"{_name(a)} -> {_name(b)} {n}" for a, b, n in moves)


@dataclasses.dataclass
class ProgramReport:
    """What the instrument options did to one file: the set, how it was applied, the notes moved, the programs kept.

    Why: an option that silently changes notes cannot be trusted; `lines()` is what `mt3 transcribe` prints per file
    and `mt3 serve` returns (`instrument_options`)."""

    programs: tuple[int, ...] | None = None  # the file's set: the user's, or two-pass's pass 1
    source: str = ""  # "--programs" or "two-pass"
    masked: bool = False  # the set was a decoder mask (the notes the model would have given others are not there)
    first_pass_notes: int | None = None  # two-pass: pitched notes of pass 1 (pass 2 has `decoded_notes`)
    decoded_notes: int = 0  # pitched notes of the (final) decode
    moved: Moves = dataclasses.field(default_factory=list)  # into the set
    reassign: str = "none"
    reassigned: Moves = dataclasses.field(default_factory=list)
    kept: dict[int, int] = dataclasses.field(default_factory=dict)  # final program -> notes

    def lines(self) -> list[str]:
        out = []
        if self.programs is not None:
            names = ", ".join(_name(p) for p in self.programs) or "none (pass 1 found no pitched notes)"
            decoded, given = _plural(self.decoded_notes, "pitched note"), ",".join(map(str, self.programs))
            if self.source == "two-pass":
                head = (f"two-pass: pass 1 found {names} in its {_plural(self.first_pass_notes or 0, 'pitched note')}"
                        f"; pass 2, masked to them, decoded {decoded} "
                        f"({_change(self.decoded_notes - (self.first_pass_notes or 0))})")
            elif self.masked:
                head = (f"--programs {given} (mask): the decoder could name no other program, so notes it would have "
                        f"given one may be missing ({decoded} decoded; --programs-mode move keeps them)")
            else:
                head = f"--programs {given} (move): {decoded} decoded"
            out.append(head)
            total = sum(n for _, _, n in self.moved)
            out.append(f"{_plural(total, 'note')} of other programs moved to the nearest allowed (same GM family "
                       f"first, else the nearest program number){': ' + _moves_text(self.moved) if total else ''}")
        if self.reassign != "none":
            total = sum(n for _, _, n in self.reassigned)
            rule = "its GM family's" if self.reassign == "family" else "the file's"
            out.append(f"--reassign-programs {self.reassign}: {_plural(total, 'note')} moved to {rule} most used "
                       f"program{': ' + _moves_text(self.reassigned) if total else ''}")
        if out:
            kept = ", ".join(f"{_name(p)} {n}" for p, n in sorted(self.kept.items()))
            out.append(f"programs kept (notes): {kept or 'none'}")
        return out


def _change(delta: int) -> str:
    return f"{-delta:,} fewer" if delta < 0 else f"{delta:,} more" if delta > 0 else "as many"


def apply_program_options(ns, *, programs: Sequence[int] | None, source: str, masked: bool, reassign: str,
                          first_pass_ns=None) -> tuple[Any, ProgramReport]:
    """A decoded file's notes moved into its program set (if any), then reassigned (`reassign`), and the report."""
    report = ProgramReport(programs=None if programs is None else tuple(programs), source=source, masked=masked,
                           reassign=reassign, decoded_notes=sum(program_note_counts(ns).values()))
    if first_pass_ns is not None:
        report.first_pass_notes = sum(program_note_counts(first_pass_ns).values())
    if programs:
        ns, report.moved = move_into_set(ns, programs)
    ns, report.reassigned = reassign_programs_with_moves(ns, reassign)
    report.kept = dict(program_note_counts(ns))
    return ns, report


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
