"""MIDI files <-> NoteSequences, with the project's error convention.

`note_seq` does the parsing (never hand-written); this module only adds what users need around it: one clear
`InputError` naming the file for a missing file, a non-MIDI file or a MIDI without notes, and atomic writes so a
crash never leaves half a MIDI file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

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


def write_midi(ns, path: str | os.PathLike) -> None:
    """Writes a NoteSequence as a multitrack MIDI file atomically (temporary name, then rename)."""
    import note_seq

    from mt3.records import atomic_write

    pm = note_seq.note_sequence_to_pretty_midi(ns)
    with atomic_write(path, "wb") as f:
        pm.write(f)
