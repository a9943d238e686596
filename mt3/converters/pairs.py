"""Your own recordings: a folder of audio files, each beside a MIDI file of the same stem -> records.

    my_recordings/                          my_recordings/
      take1.wav   take1.mid                   train/take1.flac   train/take1.mid
      set2/song.flac  set2/song.midi    or    validation/b.wav   validation/b.midi
      ...                                     test/c.mp3         test/c.mid

Any audio format `mt3.audio` reads (`AUDIO_EXTENSIONS`) pairs with a `.mid`/`.midi` file of the same relative path
minus the extension; subfolders are walked. Splits: the folders `train/`, `validation/`, `test/` when any of them
exists (then every pair must sit inside one); otherwise each pair's split is a hash of its relative path without
extension (`hash_split`: sha256 -> [0, 1), 80/10/10 train/validation/test, the same rule as `mt3 build-corpus`), so
adding or removing other files never moves a pair between splits, and a small folder may leave a split empty.

Labels: the MIDI's notes with the sustain pedal applied to the offsets (as every converter does), each note keeping
its track's program and drum flag (channel 10). `--option program=N` (0-127) gives every note program N instead and
`--option program=drums` makes them all drums, for single-instrument recordings whose MIDI carries no or a wrong
program change; the manifest records it (`forced_program`), so a resume with another choice is refused.

Bad pairs (audio without MIDI, MIDI without audio, unreadable audio or MIDI, notes ending after the audio) raise one
`InputError` naming the file, so `--skip-bad` leaves out just that pair. A dataset prepared into `DATA_DIR/NAME`
registers itself as MT3's tasks `NAME_notes_ties_vb1_{train,validation,test}` (`mt3.tasks.register_prepared_datasets`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mt3.converters.base import SPLITS, hash_split
from mt3.data.records import TrackRecord
from mt3.errors import InputError

NAME = "pairs"
MIDI_EXTENSIONS = (".mid", ".midi")
DRUMS = "drums"
# A prepared folder's name becomes a task name prefix (seqio allows word characters, '.' and ':'; we keep it simple).
DATASET_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESERVED_NAMES = ("mega", "local_mix")  # NAME_notes_ties_vb1_train would be a built-in mixture's name


@dataclass(frozen=True)
class PairSource:
    """One (audio, MIDI) pair. `id` is the relative path without extension (POSIX), e.g. `set2/song`; a missing half
    is None and reported by `load_track`, so `--skip-bad` can leave out just this pair."""

    id: str
    audio_path: Path | None
    midi_path: Path | None
    program: int | str | None = None  # None: the MIDI's programs; 0-127: every note; "drums": every note a drum




def parse_program(program) -> int | str | None:
    """`--option program=N` (0-127) or `program=drums` -> the forced program; InputError otherwise."""
    if program is None:
        return None
    text = str(program).strip().lower()
    if text == DRUMS:
        return DRUMS
    if text.isdigit() and 0 <= int(text) <= 127:
        return int(text)
    raise InputError(None, f"--option program={program}: expected a General MIDI program 0-127 or 'drums'")


def check_out(out: str | os.PathLike) -> None:
    """The output folder's name becomes the task prefix `NAME_notes_ties_vb1`: refuse names that cannot be one or
    that a built-in dataset already uses."""
    from mt3 import datasets

    name = Path(out).resolve().name
    if not DATASET_NAME_RE.match(name):
        raise InputError(out, f"folder name {name!r} cannot name tasks ({name}_notes_ties_vb1_train): use letters, "
                              "digits and '_', starting with a letter")
    builtin = {c.name for c in datasets.ALL_CONFIGS} | {c.folder for c in datasets.ALL_CONFIGS} | set(RESERVED_NAMES)
    if name in builtin:
        raise InputError(out, f"folder name {name!r} is a built-in dataset's; choose another name for --out")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                        p.relative_to(folder).parts))


def _pairs(folder: Path, base: Path, program) -> list[PairSource]:
    """The pairs under `folder`, ids relative to `base` (a split folder, or the root without split folders)."""
    from mt3.audio import AUDIO_EXTENSIONS

    audio: dict[str, list[Path]] = {}
    midi: dict[str, list[Path]] = {}
    for path in _files(folder):
        suffix = path.suffix.lower()
        key = path.relative_to(base).with_suffix("").as_posix()
        if suffix in AUDIO_EXTENSIONS:
            audio.setdefault(key, []).append(path)
        elif suffix in MIDI_EXTENSIONS:
            midi.setdefault(key, []).append(path)
    for kind, found in (("audio", audio), ("MIDI", midi)):
        for key, paths in found.items():
            if len(paths) > 1:
                raise InputError(paths[0], f"{len(paths)} {kind} files share the stem {key!r} "
                                           f"({', '.join(p.name for p in paths)}); keep one")
    return [PairSource(key, audio.get(key, [None])[0], midi.get(key, [None])[0], program)
            for key in sorted(set(audio) | set(midi))]


def list_tracks(root: str | os.PathLike, *, program=None) -> dict[str, list[PairSource]]:
    """{split: pairs}; split folders when any exists, else the hash split of each pair's relative path."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder of audio + MIDI pairs")
    program = parse_program(program)
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs:
        outside = [p for p in _pairs(root, root, program) if p.id.split("/", 1)[0] not in split_dirs]
        if outside:
            first = outside[0].audio_path or outside[0].midi_path
            raise InputError(first, f"{len(outside)} file(s) outside the split folders "
                                    f"{', '.join(s + '/' for s in split_dirs)}: move each pair into one of them")
        listing = {s: _pairs(folder, folder, program) for s, folder in split_dirs.items()}
    else:
        listing = {s: [] for s in SPLITS}
        for pair in _pairs(root, root, program):
            listing[hash_split(pair.id)].append(pair)
    if not any(listing.values()):
        raise InputError(root, "no audio or MIDI files found (audio beside a .mid/.midi file of the same name)")
    return listing


def manifest_fields(sources: list[PairSource]) -> dict:
    """Recorded in each split's manifest: the MIDI's own programs, unless one was forced (`forced_program`)."""
    return {"program_mapping": "full", "forced_program": sources[0].program if sources else None}


def load_track(source: PairSource) -> list[TrackRecord]:
    from mt3.audio import AUDIO_EXTENSIONS
    from mt3.converters.base import apply_sustain_and_clear, load_audio
    from mt3.midi_io import load_midi

    if source.midi_path is None:
        raise InputError(source.audio_path, f"no MIDI file beside it (expected {Path(source.audio_path).stem}.mid or "
                                            ".midi)")
    if source.audio_path is None:
        raise InputError(source.midi_path, f"no audio file beside it (expected {Path(source.midi_path).stem}.wav or "
                                           f"another of {' '.join(AUDIO_EXTENSIONS)})")
    ns = apply_sustain_and_clear(load_midi(source.midi_path))
    if source.program is not None:
        for note in ns.notes:
            note.is_drum = source.program == DRUMS
            note.program = 0 if note.is_drum else int(source.program)
            note.instrument = 0
    ns.id = source.id
    ns.collection_name = NAME
    ns.filename = source.midi_path.name
    audio = load_audio(source.audio_path)
    return [TrackRecord(id=source.id, audio=audio, sequence=ns, dataset=NAME)]
