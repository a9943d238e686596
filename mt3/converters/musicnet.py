"""MusicNet (original release, csv labels) -> records: one record per recording, one instrument per GM program.

Native layout (Zenodo 5120004, `musicnet.tar.gz` extracted with `--strip 1`, or its `musicnet/` parent):

    train_data/1727.wav   train_labels/1727.csv      (320 recordings)
    test_data/1759.wav    test_labels/1759.csv       (10 recordings)

MusicNet's own train/test split is NOT MT3's: MT3 (`mt3_reconvat_baseline.ipynb`, paper App. B.5) draws its own
validation and test ids from all 330 recordings, so both folders are pooled first and re-split here.

Label pitfalls handled here: `start_time`/`end_time` are sample indices at 44.1 kHz (not seconds), `instrument` is a
1-based GM program (program = code - 1), and there is no velocity (every note gets `VELOCITY`; MT3's mixture
vocabulary has a single velocity bin, and NoteSequence validation rejects velocity 0).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from mt3.data.records import SAMPLE_RATE, TrackRecord
from mt3.errors import InputError

NAME = "musicnet"
SPLITS = ("train", "validation", "test")

LABEL_SAMPLE_RATE = 44100  # label times are sample indices of the 44.1 kHz recordings
VELOCITY = 100  # MusicNet has no velocities; a fixed nonzero one (MT3 trains with one velocity bin)
MAX_LABEL_OVERRUN_S = 1.0  # labels may end this much after the audio; more means a wrong time unit / sample rate
REQUIRED_COLUMNS = ("start_time", "end_time", "instrument", "note")

# MT3's own random split (`mt3_reconvat_baseline.ipynb` TRACKS_BY_SPLIT); train = the other 300 recordings.
VALIDATION_IDS = frozenset(
    ["1733", "1765", "1790", "1818", "2160", "2198", "2289", "2300", "2308", "2315", "2336", "2466", "2477", "2504",
     "2611"]
)
TEST_IDS = frozenset(
    ["1729", "1776", "1813", "1893", "2118", "2186", "2296", "2431", "2432", "2487", "2497", "2501", "2507", "2537",
     "2621"]
)
_FOLDERS = (("train_data", "train_labels"), ("test_data", "test_labels"))


@dataclass(frozen=True)
class MusicNetSource:
    """One recording: its WAV and its label csv (either may be missing on disk; `load_track` reports it)."""

    id: str
    audio_path: Path
    labels_path: Path


def split_of(track_id: str) -> str:
    """MT3's split for a MusicNet id (the official train/test folders are ignored)."""
    if track_id in VALIDATION_IDS:
        return "validation"
    if track_id in TEST_IDS:
        return "test"
    return "train"


def _find_root(root: Path) -> Path:
    """Accepts the extracted release itself or its parent folder `musicnet/` (tar extracted without --strip)."""
    for candidate in (root, root / "musicnet"):
        if any((candidate / labels).is_dir() for _, labels in _FOLDERS):
            return candidate
    raise InputError(root, "not a MusicNet root: expected train_data/, train_labels/, test_data/, test_labels/")


def list_tracks(root: str | os.PathLike) -> dict[str, list[MusicNetSource]]:
    """Pools train_* and test_* recordings and splits them by MT3's id lists. Ids found in either the audio or the
    label folder are listed, so a recording missing its other half fails loudly in `load_track`."""
    base = _find_root(Path(root))
    sources: dict[str, MusicNetSource] = {}
    for data_dir, labels_dir in _FOLDERS:
        ids = {p.stem for p in (base / data_dir).glob("*.wav") if not p.name.startswith(".")}
        ids |= {p.stem for p in (base / labels_dir).glob("*.csv") if not p.name.startswith(".")}
        for track_id in ids:
            if track_id in sources:
                raise InputError(base / labels_dir / f"{track_id}.csv", "id appears in both train_* and test_*")
            sources[track_id] = MusicNetSource(
                track_id, base / data_dir / f"{track_id}.wav", base / labels_dir / f"{track_id}.csv"
            )
    if not sources:
        raise InputError(base, "no MusicNet recordings found (train_labels/*.csv, train_data/*.wav)")
    splits: dict[str, list[MusicNetSource]] = {split: [] for split in SPLITS}
    for track_id in sorted(sources):
        splits[split_of(track_id)].append(sources[track_id])
    return splits


def read_labels(path: str | os.PathLike) -> list[tuple[float, float, int, int]]:
    """Parses one label csv into (start_s, end_s, program, pitch) tuples, times converted from 44.1 kHz samples.

    Zero-length notes (end == start) are dropped: a NoteSequence cannot hold them. Anything else malformed raises
    InputError naming the file and the row (line number).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "label file not found")
    notes = []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise InputError(path, f"missing column(s) {', '.join(missing)} in header {header}")
            reader.fieldnames = header
            for row in reader:
                notes.append(_parse_row(path, reader.line_num, row))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(path, f"cannot read label csv ({err})") from err
    notes = [n for n in notes if n is not None]
    if not notes:
        raise InputError(path, "no notes in label csv")
    return notes


def _parse_row(path: Path, line: int, row: dict) -> tuple[float, float, int, int] | None:
    values = {}
    for column in REQUIRED_COLUMNS:
        text = (row.get(column) or "").strip()
        try:
            value = float(text)
        except ValueError:
            raise InputError(path, f"row {line}: {column} {text!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise InputError(path, f"row {line}: {column} {text!r} must be a finite non-negative number")
        values[column] = value
    start, end = values["start_time"], values["end_time"]
    if end < start:
        raise InputError(path, f"row {line}: end_time {end:g} is before start_time {start:g}")
    code, pitch = values["instrument"], values["note"]
    if code != int(code) or not 1 <= code <= 128:
        raise InputError(path, f"row {line}: instrument {code:g} is not a 1-based GM program (1..128)")
    if pitch != int(pitch) or not 0 <= pitch <= 127:
        raise InputError(path, f"row {line}: note {pitch:g} is not a MIDI pitch (0..127)")
    if end == start:
        return None
    return start / LABEL_SAMPLE_RATE, end / LABEL_SAMPLE_RATE, int(code) - 1, int(pitch)


def build_sequence(notes: list[tuple[float, float, int, int]], track_id: str):
    """NoteSequence of the labels; each program gets its own `instrument` index (in program order)."""
    import note_seq

    ns = note_seq.NoteSequence(ticks_per_quarter=note_seq.STANDARD_PPQ)
    ns.id = track_id
    ns.collection_name = NAME
    instrument_of = {program: i for i, program in enumerate(sorted({n[2] for n in notes}))}
    for start, end, program, pitch in sorted(notes, key=lambda n: (n[0], n[3], n[2], n[1])):
        ns.notes.add(pitch=pitch, start_time=start, end_time=end, velocity=VELOCITY, program=program,
                     instrument=instrument_of[program], is_drum=False)
    ns.total_time = max(n[1] for n in notes)
    return ns


def load_track(source: MusicNetSource) -> list[TrackRecord]:
    """Labels first (cheap, most likely to be broken), then the audio at 16 kHz mono, then a unit sanity check."""
    notes = read_labels(source.labels_path)
    if not source.audio_path.is_file():
        raise InputError(source.audio_path, "audio file not found (labels exist for this recording)")
    audio = _load_audio(source.audio_path)
    seconds = len(audio) / SAMPLE_RATE
    last = max(n[1] for n in notes)
    if last > seconds + MAX_LABEL_OVERRUN_S:
        raise InputError(
            source.labels_path,
            f"labels run to {last:.2f} s but the audio lasts {seconds:.2f} s: times must be sample indices at "
            f"{LABEL_SAMPLE_RATE} Hz (wrong unit or sample rate?)",
        )
    ns = build_sequence(notes, source.id)
    ns.filename = source.audio_path.name
    return [TrackRecord(id=source.id, audio=audio, sequence=ns, dataset=NAME)]


def _load_audio(path: Path):
    from mt3.audio import load_audio  # lazy: soundfile/soxr only when a track is actually read

    return load_audio(path, sample_rate=SAMPLE_RATE)
