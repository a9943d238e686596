"""Slakh2100 (flac redux; also babyslakh and `mt3 build-corpus` output) -> one record per track (the full mix).

Layout: `ROOT/{train,validation,test}/TrackXXXXX/` (the directory is the split; `omitted/` is ignored) or, as in
babyslakh, `ROOT/TrackXXXXX/` without split folders: then every track goes to one split, "train" unless the user names
one (`--splits validation`, passed here as `flat_split`).

Per track the labels are built from the stems that were really rendered, judged by the files, never by the yaml flags
(babyslakh's flags are wrong): a stem counts when `MIDI/Sxx.mid` and `stems/Sxx.flac` (or `.wav`) both exist.
`all_src.mid` is never read: it also holds parts that were not rendered. Each stem becomes its own `instrument`, its
sustain pedal is applied, its pitch bends dropped (as MT3). Drum stems (`program_num: 128` or `is_drum: true`) become
`is_drum` notes with program 0.

Programs (`program_mapping`, `--option program_mapping=...`): "slakh_class" maps each stem to its MT3 "Slakh class"
program (paper Table 7: 30 -> 29, 1 -> 0, 17 -> 16, ...), which is what MT3's Slakh task tokenizes; "full" keeps
each stem's `program_num`. The default, "auto", is "slakh_class" for a Slakh tree and "full" for the local corpus
(a tree holding `mt3 build-corpus`'s corpus.json), whose tasks are trained on GM programs. The mapping used is written
into each split's manifest (`manifest_fields`), and the tasks check it (`mt3.datasets.check_program_mapping`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mt3.data.records import TrackRecord
from mt3.errors import InputError

NAME = "slakh"
SPLITS = ("train", "validation", "test")
PROGRAM_MAPPING = "auto"  # "auto", "full" (keep program_num) or "slakh_class" (MT3's Slakh-class programs)
PROGRAM_MAPPINGS = ("full", "slakh_class")
CORPUS_MARKER = "corpus.json"  # written by `mt3 build-corpus` at the root of the local corpus
DRUM_PROGRAM_NUM = 128
AUDIO_EXTENSIONS = (".flac", ".wav")

# MT3's Slakh classes (paper Table 7 / preprocessors._SLAKH_CLASS_PROGRAMS) as program_num ranges; the yaml has no
# such class, so it is derived from program_num (the same grouping as YourMT3's MT3_FULL). 96-127 have no class.
_SLAKH_CLASS_RANGES: tuple[tuple[tuple[int, ...], int, str], ...] = (
    ((0, 1, 3, 6, 7), 0, "Acoustic Piano"),
    ((2, 4, 5), 4, "Electric Piano"),
    (tuple(range(8, 16)), 8, "Chromatic Percussion"),
    (tuple(range(16, 24)), 16, "Organ"),
    ((24, 25), 24, "Acoustic Guitar"),
    ((26, 27, 28), 26, "Clean Electric Guitar"),
    ((29, 30, 31), 29, "Distorted Electric Guitar"),
    ((32, 35), 32, "Acoustic Bass"),
    ((33, 34, 36, 37, 38, 39), 33, "Electric Bass"),
    ((40,), 40, "Violin"),
    ((41,), 41, "Viola"),
    ((42,), 42, "Cello"),
    ((43,), 43, "Contrabass"),
    ((44, 45, 48, 49), 48, "String Ensemble"),
    ((46,), 46, "Orchestral Harp"),
    ((47,), 47, "Timpani"),
    ((50, 51), 50, "Synth Strings"),
    ((52, 53, 54), 52, "Choir and Voice"),
    ((55,), 55, "Orchestral Hit"),
    ((56, 59), 56, "Trumpet"),
    ((57,), 57, "Trombone"),
    ((58,), 58, "Tuba"),
    ((60,), 60, "French Horn"),
    ((61, 62, 63), 61, "Brass Section"),
    ((64, 65), 64, "Soprano/Alto Sax"),
    ((66,), 66, "Tenor Sax"),
    ((67,), 67, "Baritone Sax"),
    ((68,), 68, "Oboe"),
    ((69,), 69, "English Horn"),
    ((70,), 70, "Bassoon"),
    ((71,), 71, "Clarinet"),
    (tuple(range(72, 80)), 73, "Pipe"),
    (tuple(range(80, 88)), 80, "Synth Lead"),
    (tuple(range(88, 96)), 88, "Synth Pad"),
)
SLAKH_CLASS_PROGRAMS: dict[int, int] = {p: prog for members, prog, _ in _SLAKH_CLASS_RANGES for p in members}


def slakh_class_program(program_num: int) -> int:
    """MT3's token program for a stem's GM `program_num` (its Slakh class). ValueError for 96-127 (no class)."""
    if program_num not in SLAKH_CLASS_PROGRAMS:
        raise ValueError(f"program {program_num} has no Slakh class (classes cover programs 0-95)")
    return SLAKH_CLASS_PROGRAMS[program_num]


def resolve_program_mapping(root: Path, program_mapping: str = PROGRAM_MAPPING) -> str:
    """The mapping to apply, "full" or "slakh_class": "auto" means "full" for the local corpus (corpus.json at
    `root`), else MT3's "slakh_class". InputError for anything else."""
    if program_mapping == "auto":
        return "full" if (Path(root) / CORPUS_MARKER).is_file() else "slakh_class"
    if program_mapping not in PROGRAM_MAPPINGS:
        raise InputError(None, f"program_mapping must be auto, full or slakh_class, got {program_mapping!r}")
    return program_mapping


@dataclass(frozen=True)
class SlakhTrack:
    id: str  # the folder name, e.g. "Track00001"
    path: Path
    program_mapping: str = "slakh_class"  # resolved ("full" or "slakh_class")


@dataclass(frozen=True)
class Stem:
    """A rendered stem: both its MIDI and its audio file exist."""

    name: str  # "S00"
    program_num: int  # as in the yaml (128 for drums)
    is_drum: bool
    midi_path: Path
    audio_path: Path


def _is_track_dir(path: Path) -> bool:
    return path.is_dir() and (path.name.startswith("Track") or (path / "metadata.yaml").is_file())


def list_tracks(root: Path, *, flat_split: str = "train",
                program_mapping: str = PROGRAM_MAPPING) -> dict[str, list[SlakhTrack]]:
    """{split: tracks}; split folders if any exist, else all `Track*` folders of `root` into `flat_split`."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "Slakh root is not a directory")
    program_mapping = resolve_program_mapping(root, program_mapping)
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    if split_dirs:
        layout = {s: root / s for s in split_dirs}
    elif any(_is_track_dir(p) for p in root.iterdir()):
        layout = {flat_split: root}
    else:
        raise InputError(root, "not a Slakh2100 tree (expected train/ validation/ test/ or Track*/ folders)")
    return {
        split: [SlakhTrack(p.name, p, program_mapping) for p in sorted(folder.iterdir()) if _is_track_dir(p)]
        for split, folder in layout.items()
    }


def manifest_fields(sources: list[SlakhTrack]) -> dict:
    """Recorded in each split's manifest: the program mapping its notes carry."""
    mappings = {s.program_mapping for s in sources}
    if len(mappings) != 1:
        raise ValueError(f"one split must use one program mapping, got {sorted(mappings)}")
    return {"program_mapping": mappings.pop()}


def read_metadata(track_dir: Path) -> dict:
    import yaml

    path = track_dir / "metadata.yaml"
    if not path.is_file():
        raise InputError(path, "metadata.yaml not found")
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(path, f"malformed YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("stems"), dict):
        raise InputError(path, "malformed metadata: no 'stems' mapping")
    return meta


def rendered_stems(track_dir: Path, meta: dict | None = None) -> list[Stem]:
    """The stems with both `MIDI/Sxx.mid` and `stems/Sxx.{flac,wav}` on disk, sorted by name."""
    meta = read_metadata(track_dir) if meta is None else meta
    yaml_path = track_dir / "metadata.yaml"
    stems = []
    for name in sorted(meta["stems"]):
        info = meta["stems"][name]
        if not isinstance(info, dict):
            raise InputError(yaml_path, f"malformed metadata: stem {name} is not a mapping")
        midi = track_dir / "MIDI" / f"{name}.mid"
        audio = next((p for ext in AUDIO_EXTENSIONS if (p := track_dir / "stems" / f"{name}{ext}").is_file()), None)
        if not midi.is_file() or audio is None:
            continue
        try:
            program_num = int(info["program_num"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(yaml_path, f"stem {name}: missing or invalid program_num") from err
        is_drum = bool(info.get("is_drum", False)) or program_num == DRUM_PROGRAM_NUM
        if not is_drum and not 0 <= program_num <= 127:
            raise InputError(yaml_path, f"stem {name}: program_num {program_num} out of range 0-127")
        stems.append(Stem(str(name), program_num, is_drum, midi, audio))
    return stems


def stem_sequence(stem: Stem, *, program: int, is_drum: bool, instrument: int):
    """One stem's notes from its own MIDI: sustain applied, bends/CCs dropped, relabelled to one program/instrument."""
    from mt3.converters.base import apply_sustain_and_clear
    from mt3.midi_io import load_midi

    ns = apply_sustain_and_clear(load_midi(stem.midi_path, allow_empty=True))
    for note in ns.notes:
        note.program = 0 if is_drum else program
        note.is_drum = is_drum
        note.instrument = instrument
    return ns


def merge_sequences(parts: list, *, track_id: str, dataset: str):
    """A NoteSequence holding the notes of `parts` (time-sorted), total_time over all of them."""
    import note_seq

    ns = note_seq.NoteSequence(ticks_per_quarter=note_seq.STANDARD_PPQ)
    ns.id = track_id
    ns.collection_name = dataset
    ns.tempos.add(time=0.0, qpm=120.0)
    notes = [n for part in parts for n in part.notes]
    notes.sort(key=lambda n: (n.start_time, n.instrument, n.pitch, n.end_time))
    ns.notes.extend(notes)
    ns.total_time = max((n.end_time for n in notes), default=0.0)
    return ns


def find_mix(track_dir: Path) -> Path:
    for ext in AUDIO_EXTENSIONS:
        if (path := track_dir / f"mix{ext}").is_file():
            return path
    raise InputError(track_dir / "mix.flac", "mix audio not found (mix.flac or mix.wav)")


def load_track(source: SlakhTrack) -> list[TrackRecord]:
    from mt3.converters.base import load_audio

    stems = rendered_stems(source.path)
    if not stems:
        raise InputError(source.path, "no usable stems (none has both MIDI/Sxx.mid and stems/Sxx.flac|wav)")
    yaml_path = source.path / "metadata.yaml"
    parts = []
    for index, stem in enumerate(stems):
        program = stem.program_num
        if not stem.is_drum and source.program_mapping == "slakh_class":
            try:
                program = slakh_class_program(stem.program_num)
            except ValueError as err:
                raise InputError(yaml_path, f"stem {stem.name}: {err}; prepare with --option program_mapping=full "
                                            "to keep GM programs, or --skip-bad") from err
        parts.append(stem_sequence(stem, program=program, is_drum=stem.is_drum, instrument=index))
    ns = merge_sequences(parts, track_id=source.id, dataset=NAME)
    audio = load_audio(find_mix(source.path))
    return [TrackRecord(id=source.id, audio=audio, sequence=ns, dataset=NAME)]

