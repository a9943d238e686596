"""MAESTRO v3.0.0 (piano): `maestro-v3.0.0/{csv,json}` + year folders of `.midi`/`.wav` -> records.

Labels are the performance MIDI (program 0) with the sustain pedal applied to the offsets and control changes removed,
which is what MT3's references hold (it applies the pedal before serialising them). Splits are the metadata's `split`
column, unchanged (train/validation/test = 962/137/177). The CSV is read when present; otherwise the JSON, in either
the column-oriented v3 shape or the list-of-records v2 shape.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from mt3.data.records import TrackRecord
from mt3.errors import InputError

NAME = "maestrov3"
SPLITS = ("train", "validation", "test")
REQUIRED_COLUMNS = ("split", "midi_filename", "audio_filename")


@dataclass(frozen=True)
class MaestroTrack:
    id: str  # midi_filename without extension, e.g. "2018/MIDI-Unprocessed_Chamber3_MID--AUDIO_10_R3_2018_wav--1"
    midi_path: Path
    audio_path: Path


def find_metadata(root: Path) -> Path:
    """The metadata file: maestro-v3.0.0.csv, else another maestro-v*.csv, else a maestro-v*.json."""
    preferred = root / "maestro-v3.0.0.csv"
    if preferred.is_file():
        return preferred
    for pattern in ("maestro-v*.csv", "maestro-v*.json"):
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if found:
            return found[-1]
    raise InputError(root, "no MAESTRO metadata found (expected maestro-v3.0.0.csv or maestro-v3.0.0.json)")


def read_metadata(path: Path) -> list[dict[str, str]]:
    """Rows of {split, midi_filename, audio_filename, ...} from the CSV or either JSON shape."""
    if path.suffix == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f, strict=True))
        except (csv.Error, UnicodeDecodeError) as err:
            raise InputError(path, f"malformed CSV ({err})") from err
        columns = set(rows[0]) if rows else set()
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(path, f"malformed JSON ({err})") from err
        if isinstance(data, list):  # v2.0.0: a list of records
            rows = data
        elif isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):  # v3: column -> {row: value}
            keys = sorted({k for col in data.values() for k in col}, key=lambda k: int(k) if k.isdigit() else k)
            rows = [{col: data[col].get(k) for col in data} for k in keys]
        else:
            raise InputError(path, "unrecognised MAESTRO JSON (neither column-oriented v3 nor a list of records)")
        if not all(isinstance(r, dict) for r in rows):
            raise InputError(path, "unrecognised MAESTRO JSON (rows are not objects)")
        columns = set().union(*rows) if rows else set()
    if not rows:
        raise InputError(path, "metadata lists no performances")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(path, f"malformed metadata: missing column(s) {', '.join(missing)}")
    for i, row in enumerate(rows):
        for c in REQUIRED_COLUMNS:
            if not isinstance(row.get(c), str) or not row[c]:
                raise InputError(path, f"malformed metadata: row {i + 1} has no {c}")
        if row["split"] not in SPLITS:
            raise InputError(path, f"row {i + 1}: unknown split {row['split']!r} (expected one of {', '.join(SPLITS)})")
    return rows


def list_tracks(root: Path) -> dict[str, list[MaestroTrack]]:
    root = Path(root)
    metadata = find_metadata(root)
    tracks: dict[str, list[MaestroTrack]] = {s: [] for s in SPLITS}
    for row in read_metadata(metadata):
        midi = row["midi_filename"]
        track_id = midi.rsplit(".", 1)[0] if "." in Path(midi).name else midi
        tracks[row["split"]].append(MaestroTrack(track_id, root / midi, root / row["audio_filename"]))
    return tracks


def load_track(source: MaestroTrack) -> list[TrackRecord]:
    from mt3.converters.base import apply_sustain_and_clear, load_audio
    from mt3.midi_io import load_midi

    if not source.audio_path.is_file():
        raise InputError(source.audio_path, "audio file listed in the MAESTRO metadata not found")
    ns = apply_sustain_and_clear(load_midi(source.midi_path))
    for note in ns.notes:
        note.program = 0
        note.is_drum = False
        note.instrument = 0
    ns.id = source.id
    ns.collection_name = NAME
    ns.filename = source.midi_path.name
    audio = load_audio(source.audio_path)
    return [TrackRecord(id=source.id, audio=audio, sequence=ns, dataset=NAME)]
