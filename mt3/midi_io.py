"""MIDI files <-> NoteSequences, with the project's error convention.

`note_seq` does the parsing (never hand-written); this module only adds what users need around it: one clear
`InputError` naming the file for a missing file, a non-MIDI file or a MIDI without notes, and atomic writes so a
crash never leaves half a MIDI file behind. Transcriptions leave through here too: multitrack MIDI bytes (what
`mt3 serve` answers), the notes as JSON or CSV rows, and the removal of exact duplicate notes after stitching.

The MIDI writer (`prepare_notes`, then `midi_bytes`) makes the file play as transcribed in any General MIDI player:
a model's notes may hold what MIDI cannot (two sounding notes of one pitch on one channel, more than 15 pitched
programs), and the file, not the NoteSequence, is what users, DAWs and `mt3 score` see.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any

from mt3.errors import InputError


def load_midi(path: str | os.PathLike, *, allow_empty: bool = False):
    """Reads a standard MIDI file into a `note_seq.NoteSequence`.

    Programs and drum flags come from each track's program change and channel (drums on channel 10).
    Raises InputError for a missing/unreadable file, a file that is not MIDI, or (unless `allow_empty`) no notes.
    """
    import note_seq

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a MIDI file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot read file ({err.strerror})") from err
    if not data.startswith(b"MThd"):
        raise InputError(path, "not a MIDI file (missing 'MThd' header)")
    try:
        ns = note_seq.midi_to_note_sequence(data)
    except Exception as err:  # note_seq wraps several parser errors; all mean the same to a user
        raise InputError(path, f"malformed MIDI ({type(err).__name__}: {err})") from err
    if not allow_empty and not ns.notes:
        raise InputError(path, "MIDI file contains no notes")
    return ns


def notes_to_dicts(ns, confidence=None) -> list[dict[str, Any]]:
    """Notes as plain dicts {onset, offset, pitch, velocity, program, is_drum}, sorted by onset then pitch; with
    `confidence` (note -> 0..1 or None, `mt3.note_confidence.NoteConfidence`) also a "confidence" per note."""
    notes = sorted(ns.notes, key=lambda n: (n.start_time, n.pitch, n.program, n.is_drum))
    rows = [{"onset": round(float(n.start_time), 6), "offset": round(float(n.end_time), 6), "pitch": int(n.pitch),
             "velocity": int(n.velocity), "program": int(n.program), "is_drum": bool(n.is_drum)} for n in notes]
    if confidence is not None:
        for row, n in zip(rows, notes, strict=True):
            value = confidence(n)
            row["confidence"] = None if value is None else round(value, 4)
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Writing notes as a MIDI file a General MIDI player plays as transcribed (`prepare_notes`, then `midi_bytes`)

MIDI_TICKS_PER_QUARTER = 500  # at 120 qpm 1000 ticks per second: the codec's 10 ms grid survives a round trip exactly
DEFAULT_QPM = 120.0
MIN_QPM, MAX_QPM = 20.0, 400.0
PITCHED_CHANNELS = tuple(c for c in range(16) if c != 9)  # channel 10 (index 9) is General MIDI's percussion channel
SAME_ONSET_SECONDS = 0.001  # two notes of one pitch starting within one 1 ms tick are one note played once


@dataclasses.dataclass(frozen=True)
class NoteFilter:
    """What `mt3 transcribe --min-note-ms/--min-pitch/--max-pitch` keep. Drums are never filtered: a drum note's
    length is a fixed 10 ms (MT3 decodes drum onsets only) and its "pitch" is a kit piece, not a pitch."""

    min_note_ms: float = 0.0
    min_pitch: int = 0
    max_pitch: int = 127

    def __post_init__(self):
        if not 0.0 <= self.min_note_ms < 60_000.0:
            raise ValueError(f"min_note_ms must be in [0, 60000) milliseconds, got {self.min_note_ms!r}")
        for name in ("min_pitch", "max_pitch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 127:
                raise ValueError(f"{name} must be a MIDI pitch 0..127, got {value!r}")
        if self.min_pitch > self.max_pitch:
            raise ValueError(f"min_pitch ({self.min_pitch}) is above max_pitch ({self.max_pitch}): no note would "
                             "remain")

    def keeps(self, note) -> bool:
        if note.is_drum:
            return True
        return (self.min_pitch <= note.pitch <= self.max_pitch
                and (note.end_time - note.start_time) * 1000.0 >= self.min_note_ms - 1e-6)


@dataclasses.dataclass
class MidiReport:
    """What `prepare_notes` changed, for the one line `mt3 transcribe` prints about it.

    `source_index[i]` is the index in the input sequence of output note i (to carry per-note data along)."""

    pitched_programs: int = 0  # distinct pitched programs before merging
    filtered_short: int = 0
    filtered_pitch: int = 0
    merged_programs: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)  # (from, to, notes)
    overlaps_trimmed: int = 0
    overlaps_merged: int = 0
    source_index: list[int] = dataclasses.field(default_factory=list)

    def warnings(self) -> list[str]:
        """A line per change a user should know about (program merges: the file lost instruments)."""
        if not self.merged_programs:
            return []
        moves = ", ".join(f"{program_name(a)} ({a}, {n} note{'s' if n != 1 else ''}) -> {program_name(b)} ({b})"
                          for a, b, n in self.merged_programs)
        return [f"{self.pitched_programs} pitched programs but a MIDI file has {len(PITCHED_CHANNELS)} pitched "
                f"channels: merged {len(self.merged_programs)} into the most used kept program of their GM family, "
                f"so that no channel plays two programs: {moves}"]

    def summary(self) -> str:
        """'12 notes < 30 ms dropped; 3 same-pitch overlaps ended at the next onset' ('' when nothing changed)."""
        parts = []
        if self.filtered_short:
            parts.append(f"{plural(self.filtered_short, 'note')} shorter than --min-note-ms dropped")
        if self.filtered_pitch:
            parts.append(f"{plural(self.filtered_pitch, 'note')} outside the pitch range dropped")
        if self.overlaps_trimmed:
            parts.append(f"{plural(self.overlaps_trimmed, 'same-pitch overlap')} ended at the next onset")
        if self.overlaps_merged:
            parts.append(f"{plural(self.overlaps_merged, 'same-onset repeat')} merged")
        return "; ".join(parts)


def plural(count: int, noun: str) -> str:
    """'1 note', '2 notes', '1,234 notes'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def program_name(program: int, is_drum: bool = False) -> str:
    """The General MIDI instrument name ('Acoustic Grand Piano'); 'Drums' for the percussion channel."""
    import pretty_midi

    return "Drums" if is_drum else pretty_midi.program_to_instrument_name(int(program))


def plan_programs(counts: dict[int, int], channels: int = len(PITCHED_CHANNELS)) -> dict[int, int]:
    """{program: program it is written as}: every program keeps its own when at most `channels` are used.

    With more, every GM family present keeps its most used program (families ranked by notes), the remaining
    channels go to the most used other programs, and each program left over joins the kept program of its family with
    the most notes (a 16th family, only when all 16 are present, joins the most used program). Why merge rather than
    use a second port: General MIDI players ignore ports, so a second port's channel plays under another program's
    sound; a family's program (a violin for a viola) is the least wrong sound a GM player can give."""
    plan = {p: p for p in counts}
    if len(counts) <= channels:
        return plan
    by_notes = sorted(counts, key=lambda p: (-counts[p], p))
    families: dict[int, list[int]] = {}
    for p in by_notes:
        families.setdefault(p // 8, []).append(p)
    family_order = sorted(families, key=lambda f: (-sum(counts[p] for p in families[f]), f))
    kept = [families[f][0] for f in family_order[:channels]]
    kept += [p for p in by_notes if p not in kept and p // 8 in family_order[:channels]][:channels - len(kept)]
    for p in by_notes:
        if p not in kept:
            same_family = [k for k in kept if k // 8 == p // 8]
            plan[p] = max(same_family or kept, key=lambda k: (counts[k], -k))
    return plan


def prepare_notes(ns, note_filter: NoteFilter | None = None):
    """(a copy of `ns` a MIDI file holds exactly, MidiReport). Notes are sorted by onset, pitch, program.

    1. `note_filter` drops pitched notes that are too short or outside the pitch range.
    2. More than 15 pitched programs: `plan_programs` merges the least used into their family (a warning).
    3. No two sounding notes of one pitch on one channel: MIDI cannot hold them (the first note-off ends both, so a
       player cuts the longer note short). A later onset is a new attack of that key, so the earlier note ends at it
       (onsets, which carry the transcription, all survive); two onsets within 1 ms are one attack, merged into one
       note lasting to the later end.
    Every note lasts at least 1 ms and has a velocity in 1..127 (a zero-length or velocity-0 note-on is a note-off).
    `instrument` is the note's channel (pitched programs in order of first onset, drums 9). Applying it twice changes
    nothing."""
    note_filter = note_filter or NoteFilter()
    report = MidiReport()
    indexed = []
    for i, note in enumerate(ns.notes):
        if note_filter.keeps(note):
            indexed.append((i, note))
        elif note_filter.min_pitch <= note.pitch <= note_filter.max_pitch:
            report.filtered_short += 1
        else:
            report.filtered_pitch += 1
    counts: dict[int, int] = {}
    for _, note in indexed:
        if not note.is_drum:
            counts[int(note.program)] = counts.get(int(note.program), 0) + 1
    plan = plan_programs(counts)
    report.pitched_programs = len(counts)
    report.merged_programs = [(p, q, counts[p]) for p, q in sorted(plan.items()) if p != q]
    indexed.sort(key=lambda item: (item[1].start_time, item[1].pitch, bool(item[1].is_drum), plan.get(
        int(item[1].program), 0), item[1].end_time))
    out = type(ns)()
    out.CopyFrom(ns)
    del out.notes[:]
    sounding: dict[tuple[bool, int, int], Any] = {}  # (is_drum, program, pitch) -> the last note written there
    instruments: dict[int, int] = {}
    for i, source in indexed:
        program = 0 if source.is_drum else plan[int(source.program)]
        key = (bool(source.is_drum), program, int(source.pitch))
        previous = sounding.get(key)
        if previous is not None and source.start_time - previous.start_time < SAME_ONSET_SECONDS:
            previous.end_time = max(previous.end_time, source.end_time)
            previous.velocity = max(previous.velocity, source.velocity)
            report.overlaps_merged += 1
            continue
        if previous is not None and previous.end_time > source.start_time:
            previous.end_time = source.start_time
            report.overlaps_trimmed += 1
        note = out.notes.add()
        note.CopyFrom(source)
        note.program = program
        note.end_time = max(note.end_time, note.start_time + SAME_ONSET_SECONDS)
        note.velocity = min(max(int(note.velocity), 1), 127)
        note.instrument = 9 if source.is_drum else instruments.setdefault(
            program, PITCHED_CHANNELS[min(len(instruments), len(PITCHED_CHANNELS) - 1)])
        sounding[key] = note
        report.source_index.append(i)
    out.total_time = max([0.0, *(n.end_time for n in out.notes)])
    return out, report


def ticks_per_quarter(qpm: float) -> int:
    """Ticks per quarter note at which a 1 ms grid falls on whole ticks at `qpm` (500 at 120 qpm, 2000 at 90), else
    the smallest at which a tick is at most 1 ms: notes 1 ms apart (`prepare_notes`) never share a tick."""
    import math

    if float(qpm).is_integer():
        resolution = 60000 // math.gcd(60000, int(qpm))
        if resolution <= 32767:  # MIDI's division field holds 15 bits
            return resolution * max(1, -(-96 // resolution))  # at least 96 ticks per beat, as players expect
    return math.ceil(60000.0 / qpm)


def midi_bytes(ns, *, qpm: float = DEFAULT_QPM, title: str | None = None) -> bytes:
    """A General MIDI file of `ns` (after `prepare_notes`): one named track per program (its GM name; "Drums" on
    channel 10), each pitched program on a channel of its own, at tempo `qpm` (only the beat grid a DAW shows: note
    times in seconds do not depend on it). Velocities are written as `ns` holds them. No pitch bends: MT3's vocabulary
    has none, every note is on the semitone grid. Built with pretty_midi and mido, never by hand."""
    import mido
    import pretty_midi

    if not MIN_QPM <= qpm <= MAX_QPM:
        raise ValueError(f"tempo must be in {MIN_QPM:g}..{MAX_QPM:g} quarter notes per minute, got {qpm!r}")
    prepared, report = prepare_notes(ns)
    pm = pretty_midi.PrettyMIDI(resolution=ticks_per_quarter(qpm), initial_tempo=float(qpm))
    tracks: dict[tuple[bool, int], Any] = {}
    for note in prepared.notes:  # first appearance order = channel order (`prepare_notes`)
        key = (bool(note.is_drum), 0 if note.is_drum else int(note.program))
        if key not in tracks:
            tracks[key] = pretty_midi.Instrument(program=key[1], is_drum=key[0], name=program_name(key[1], key[0]))
        tracks[key].notes.append(pretty_midi.Note(velocity=int(note.velocity), pitch=int(note.pitch),
                                                  start=float(note.start_time), end=float(note.end_time)))
    plan = {int(n.program): int(n.program) for n in prepared.notes} | {a: b for a, b, _ in report.merged_programs}
    for event in [*ns.control_changes, *ns.pitch_bends]:  # a reference's pedal and bends go to their program's track
        track = tracks.get((bool(event.is_drum), 0 if event.is_drum else plan.get(int(event.program), -1)))
        if track is None:
            continue
        if hasattr(event, "control_number"):
            track.control_changes.append(pretty_midi.ControlChange(int(event.control_number),
                                                                   int(event.control_value), float(event.time)))
        else:
            track.pitch_bends.append(pretty_midi.PitchBend(int(event.bend), float(event.time)))
    # pretty_midi gives the n-th instrument channel n (skipping 9) unless it is a drum: pitched tracks first, in order
    pm.instruments = [t for t in tracks.values() if not t.is_drum] + [t for t in tracks.values() if t.is_drum]
    buffer = io.BytesIO()
    pm.write(buffer)
    midi = mido.MidiFile(file=io.BytesIO(buffer.getvalue()))
    midi.tracks[0].insert(0, mido.MetaMessage("track_name", name=title or "mt3 transcription", time=0))
    out = io.BytesIO()
    midi.save(file=out)
    return out.getvalue()


def midi_round_trip(ns):
    """`ns` as a reader of the MIDI file we write sees it (what `mt3 score` scores); exact on the 1 ms tick grid."""
    import note_seq

    return note_seq.midi_to_note_sequence(midi_bytes(ns))


def write_midi(ns, path: str | os.PathLike, *, qpm: float = DEFAULT_QPM, title: str | None = None) -> None:
    """Writes `midi_bytes(ns)` atomically (temporary name, then rename): never a half-written MIDI file."""
    from mt3.data.records import atomic_write

    data = midi_bytes(ns, qpm=qpm, title=title)
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_notes_json(ns, path: str | os.PathLike, *, confidence=None) -> None:
    """One object per note (`notes_to_dicts`; with `confidence`, a "confidence" in 0..1 per note)."""
    import json

    from mt3.data.records import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(notes_to_dicts(ns, confidence), f, indent=1)
        f.write("\n")


def write_notes_csv(ns, path: str | os.PathLike, *, confidence=None) -> None:
    """One row per note; `is_drum` is 0 or 1 (every column numeric, so spreadsheets and numpy read it as numbers);
    with `confidence` a last column "confidence" (0..1, empty where unknown)."""
    import csv

    from mt3.data.records import atomic_write

    fields = ("onset", "offset", "pitch", "velocity", "program", "is_drum")
    fields += ("confidence",) if confidence is not None else ()
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**row, "is_drum": int(row["is_drum"])} for row in notes_to_dicts(ns, confidence))


def remove_duplicate_notes(ns) -> int:
    """Removes exact duplicates in place and returns how many: drum hits with the same onset and pitch (a drum note
    has no meaningful length), other notes with the same onset, offset, pitch and program.

    Why: a model that repeats a drum token within one time step makes the stitched sequence hold the same hit many
    times (1,109 drum notes with 39 distinct (onset, pitch) pairs on one track), which a MIDI player sums and onset
    metrics count as false positives. The first of each group is kept, so the order of the rest is unchanged.
    """
    seen: set[tuple] = set()
    keep = []
    for note in ns.notes:
        onset = round(float(note.start_time), 6)
        key = (True, onset, int(note.pitch)) if note.is_drum else (
            False, onset, round(float(note.end_time), 6), int(note.pitch), int(note.program))
        if key not in seen:
            seen.add(key)
            keep.append(note)
    return keep_notes(ns, keep)


def keep_notes(ns, keep: list) -> int:
    """Keeps (in place, in order) only the notes of `ns` listed in `keep`, a sub-list of `ns.notes`; returns how
    many went. The kept notes are copied first: a protobuf repeated field cannot take back its own elements."""
    removed = len(ns.notes) - len(keep)
    if removed:
        kept = [type(n)() for n in keep]
        for copy, note in zip(kept, keep, strict=True):
            copy.CopyFrom(note)
        del ns.notes[:]
        ns.notes.extend(kept)
    return removed
