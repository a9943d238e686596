"""URMP -> records: one record per piece (the `AuMix` mixture), one instrument per part with MT3's program table.

Native layout (the `URMP/Dataset` folder as the publisher ships it; its parent `URMP/` is accepted too):

    01_Jupiter_vn_vc/                       {NN}_{Title}_{code1}_{code2}...
      AuMix_01_Jupiter_vn_vc.wav            mixture, 48 kHz
      Notes_1_vn_01_Jupiter.txt             part k's notes: rows `onset_s  pitch_Hz  duration_s`
      Notes_2_vc_01_Jupiter.txt
      (AuSep_*, F0s_*, Sco_*, Vid_* are not used)
    Supplementary_Files/                    ignored, as are hidden dot-files

Parts are matched by their index k, and part k's instrument is the k-th code of the FOLDER name: codes repeat within
a piece (`vn_vn`), and at least one copy mislabels a part's file names (`15_Surprise_tpt_tpt_tbn` has `Notes_3_tpt`),
so the code inside a file name is never trusted. Pitches are in Hz: MIDI = round(69 + 12 log2(f / 440)).

Split (MT3 App. B.6): validation = pieces 1, 2, 12, 13, 24, 25, 31, 38, 39; train = the other 35; no test split.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mt3.data.records import SAMPLE_RATE, TrackRecord
from mt3.errors import InputError

NAME = "urmp"
SPLITS = ("train", "validation")

VALIDATION_PIECES = frozenset({1, 2, 12, 13, 24, 25, 31, 38, 39})
# MT3's `preprocessors._URMP_INSTRUMENT_PROGRAMS` (0-based GM programs; sax is 64, not 65 as some loaders use)
PROGRAMS = {"vn": 40, "va": 41, "vc": 42, "db": 43, "tpt": 56, "tbn": 57, "tba": 58, "hn": 60, "sax": 64, "ob": 68,
            "bn": 70, "cl": 71, "fl": 73}
VELOCITY = 100  # URMP has no velocities; any nonzero constant (MT3 uses one velocity bin)
MAX_LABEL_OVERRUN_S = 1.0
PIECE_RE = re.compile(r"^(?P<number>\d+)_(?P<rest>.+)$")
NOTES_RE = re.compile(r"^Notes_(?P<k>\d+)_.+\.txt$")
AUSEP_RE = re.compile(r"^AuSep_(?P<k>\d+)_.+\.wav$")


@dataclass(frozen=True)
class URMPSource:
    """One piece folder; `id` is the folder name, e.g. `01_Jupiter_vn_vc`."""

    id: str
    folder: Path
    number: int


def _piece_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and PIECE_RE.match(p.name))


def list_tracks(root: str | os.PathLike) -> dict[str, list[URMPSource]]:
    """Every `NN_*` piece folder, split by MT3's validation piece numbers. Folder contents are checked in
    `load_track`, so `--skip-bad` can skip one broken piece."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "URMP root folder not found")
    pieces = _piece_dirs(root)
    if not pieces and (root / "Dataset").is_dir():  # the user pointed at URMP/ rather than URMP/Dataset/
        pieces = _piece_dirs(root / "Dataset")
    if not pieces:
        raise InputError(root, "not a URMP root: expected piece folders like 01_Jupiter_vn_vc/")
    splits: dict[str, list[URMPSource]] = {split: [] for split in SPLITS}
    for folder in pieces:
        number = int(PIECE_RE.match(folder.name)["number"])
        splits["validation" if number in VALIDATION_PIECES else "train"].append(URMPSource(folder.name, folder, number))
    return splits


def part_codes(folder: Path) -> list[str]:
    """The instrument codes of a piece, in part order, from its folder name.

    The number of parts comes from the per-part files (`Notes_k_*`, `AuSep_k_*`), so a title containing underscores
    cannot be mistaken for codes; an unknown code raises InputError naming the folder.
    """
    indices = set()
    for p in folder.iterdir():
        match = NOTES_RE.match(p.name) or AUSEP_RE.match(p.name)
        if match and not p.name.startswith("."):
            indices.add(int(match["k"]))
    if not indices:
        raise InputError(folder, "no Notes_k_*.txt part annotations")
    n = max(indices)
    tokens = PIECE_RE.match(folder.name)["rest"].split("_")
    if len(tokens) < n + 1:
        raise InputError(folder, f"folder name lists {len(tokens) - 1} instrument codes but there are {n} parts")
    codes = tokens[-n:]
    unknown = [c for c in codes if c not in PROGRAMS]
    if unknown:
        raise InputError(folder, f"unknown instrument code(s) {unknown}; known: {sorted(PROGRAMS)}")
    return codes


def hz_to_midi(frequency: float) -> int:
    return round(69 + 12 * math.log2(frequency / 440.0))


def read_notes(path: str | os.PathLike) -> list[tuple[float, float, int]]:
    """Parses one `Notes_k_*.txt` into (start_s, end_s, midi_pitch); zero-duration rows are dropped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read notes file ({err})") from err
    notes = []
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 3:
                raise ValueError
            onset, frequency, duration = (float(f) for f in fields)
        except ValueError:
            raise InputError(path, f"line {line_number}: expected 'onset_s pitch_Hz duration_s', got {line.strip()!r}"
                             ) from None
        if not all(math.isfinite(v) for v in (onset, frequency, duration)) or onset < 0 or duration < 0:
            raise InputError(path, f"line {line_number}: bad onset/duration in {line.strip()!r}")
        if frequency <= 0 or not 0 <= hz_to_midi(frequency) <= 127:
            raise InputError(path, f"line {line_number}: pitch {frequency:g} Hz is not a MIDI note frequency")
        if duration > 0:
            notes.append((onset, onset + duration, hz_to_midi(frequency)))
    return notes


def _part_notes_file(folder: Path, k: int) -> Path:
    matches = sorted(p for p in folder.glob(f"Notes_{k}_*.txt") if not p.name.startswith("."))
    if len(matches) != 1:
        problem = "missing" if not matches else f"ambiguous ({', '.join(p.name for p in matches)})"
        raise InputError(folder / f"Notes_{k}_*.txt", f"part {k} notes file {problem}")
    return matches[0]


def build_sequence(parts: list[tuple[str, list[tuple[float, float, int]]]], track_id: str):
    """One `instrument` per part (k - 1), program from the part's code."""
    import note_seq

    ns = note_seq.NoteSequence(ticks_per_quarter=note_seq.STANDARD_PPQ)
    ns.id = track_id
    ns.collection_name = NAME
    flat = [(s, e, p, i, PROGRAMS[code]) for i, (code, notes) in enumerate(parts) for s, e, p in notes]
    for start, end, pitch, instrument, program in sorted(flat):
        ns.notes.add(pitch=pitch, start_time=start, end_time=end, velocity=VELOCITY, program=program,
                     instrument=instrument, is_drum=False)
    ns.total_time = max((n[1] for n in flat), default=0.0)
    return ns


def load_track(source: URMPSource) -> list[TrackRecord]:
    folder = source.folder
    codes = part_codes(folder)
    parts = [(code, read_notes(_part_notes_file(folder, k))) for k, code in enumerate(codes, start=1)]
    mix = folder / f"AuMix_{folder.name}.wav"
    if not mix.is_file():
        candidates = sorted(p for p in folder.glob("AuMix_*.wav") if not p.name.startswith("."))
        if len(candidates) != 1:
            raise InputError(mix, "mixture audio not found")
        mix = candidates[0]
    audio = _load_audio(mix)
    seconds = len(audio) / SAMPLE_RATE
    last = max((e for _, notes in parts for _, e, _ in notes), default=0.0)
    if last > seconds + MAX_LABEL_OVERRUN_S:
        raise InputError(folder, f"notes run to {last:.2f} s but {mix.name} lasts {seconds:.2f} s")
    ns = build_sequence(parts, source.id)
    ns.filename = mix.name
    return [TrackRecord(id=source.id, audio=audio, sequence=ns, dataset=NAME)]


def _load_audio(path: Path):
    from mt3.audio import load_audio  # lazy: soundfile/soxr only when a track is actually read

    return load_audio(path, sample_rate=SAMPLE_RATE)
