"""MIDI files <-> NoteSequences, with the project's error convention.

`note_seq` does the parsing (never hand-written); this module only adds what users need around it: one clear
`InputError` naming the file for a missing file, a non-MIDI file or a MIDI without notes, and atomic writes so a
crash never leaves half a MIDI file behind. Transcriptions leave through here too: multitrack MIDI bytes (what
`mt3 serve` answers), the notes as JSON or CSV rows, and the removal of exact duplicate notes after stitching.
"""

from __future__ import annotations

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


def notes_to_dicts(ns) -> list[dict[str, Any]]:
    """Notes as plain dicts {onset, offset, pitch, velocity, program, is_drum}, sorted by onset then pitch."""
    notes = sorted(ns.notes, key=lambda n: (n.start_time, n.pitch, n.program, n.is_drum))
    return [{"onset": round(float(n.start_time), 6), "offset": round(float(n.end_time), 6), "pitch": int(n.pitch),
             "velocity": int(n.velocity), "program": int(n.program), "is_drum": bool(n.is_drum)} for n in notes]


def midi_bytes(ns) -> bytes:
    """Multitrack standard MIDI file bytes: one track per program, drums on the percussion channel.

    `note_seq` builds one pretty_midi instrument per (instrument, program, is_drum); the stitched NoteSequence has one
    instrument per program and instrument 9 for drums (`note_sequences.assign_instruments`).
    """
    import note_seq

    pm = note_seq.note_sequence_to_pretty_midi(ns)
    buffer = io.BytesIO()
    pm.write(buffer)
    return buffer.getvalue()


def midi_round_trip(ns):
    """`ns` as a reader of the MIDI file we write sees it (what `mt3 score` scores); exact on the 1 ms tick grid."""
    import note_seq

    return note_seq.midi_to_note_sequence(midi_bytes(ns))


def write_midi(ns, path: str | os.PathLike) -> None:
    """Writes `midi_bytes(ns)` atomically (temporary name, then rename): never a half-written MIDI file."""
    from mt3.data.records import atomic_write

    data = midi_bytes(ns)
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_notes_json(ns, path: str | os.PathLike) -> None:
    import json

    from mt3.data.records import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(notes_to_dicts(ns), f, indent=1)
        f.write("\n")


def write_notes_csv(ns, path: str | os.PathLike) -> None:
    """One row per note; `is_drum` is 0 or 1 (every column numeric, so spreadsheets and numpy read it as numbers)."""
    import csv

    from mt3.data.records import atomic_write

    fields = ("onset", "offset", "pitch", "velocity", "program", "is_drum")
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**row, "is_drum": int(row["is_drum"])} for row in notes_to_dicts(ns))


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
    removed = len(ns.notes) - len(keep)
    if removed:
        kept = [type(n)() for n in keep]
        for copy, note in zip(kept, keep, strict=True):
            copy.CopyFrom(note)
        del ns.notes[:]
        ns.notes.extend(kept)
    return removed
