"""Tiny copies of MAESTRO v3.0.0, Slakh2100 (flac redux), babyslakh and (through Slakh) Cerberus4 in their publishers'
exact folder layouts and file formats, for the converter tests.

Each generator writes the tree and returns what a correct converter must produce (the notes as written, the expected
pedal-extended offsets, durations, splits). Expected values come from how the fixture is built, never from the
converters. Audio is a few seconds of tones synthesised at the notes, at the native rates (44.1/48 kHz; 16 kHz for
babyslakh). MIDI is written by pretty_midi at 480 ticks per quarter and 120 qpm, so every time used here (multiples
of 1/8 s) is exact in ticks.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIDI_RESOLUTION = 480
SUSTAIN = 64


@dataclass(frozen=True)
class Note:
    pitch: int
    start: float
    end: float
    velocity: int = 80


@dataclass
class ExpectedTrack:
    """What the converted record(s) of one native track must hold."""

    id: str
    split: str
    seconds: float  # audio duration
    # per source part: (program, is_drum, notes with the EXPECTED (pedal-extended) end times)
    parts: list[tuple[int, bool, list[Note]]] = field(default_factory=list)

    @property
    def num_notes(self) -> int:
        return sum(len(notes) for _, _, notes in self.parts)


# --------------------------------------------------------------------------------------------------------------------
# file writers in the publishers' formats


def write_midi(path: Path, instruments: list[dict]) -> None:
    """instruments: [{program, is_drum, notes: [Note], cc: [(time, number, value)], bends: [(time, value)]}]."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=MIDI_RESOLUTION, initial_tempo=120.0)
    for spec in instruments:
        inst = pretty_midi.Instrument(program=spec.get("program", 0), is_drum=spec.get("is_drum", False))
        for n in spec["notes"]:
            inst.notes.append(pretty_midi.Note(velocity=n.velocity, pitch=n.pitch, start=n.start, end=n.end))
        for t, number, value in spec.get("cc", []):
            inst.control_changes.append(pretty_midi.ControlChange(number=number, value=value, time=t))
        for t, value in spec.get("bends", []):
            inst.pitch_bends.append(pretty_midi.PitchBend(pitch=value, time=t))
        pm.instruments.append(inst)
    path.parent.mkdir(parents=True, exist_ok=True)
    pm.write(str(path))


def synth(notes: list[Note], seconds: float, rate: int, *, drums: bool = False, seed: int = 0) -> np.ndarray:
    """Decaying sine tones (or noise bursts for drums) at the notes: audio aligned to the labels."""
    audio = np.zeros(int(round(seconds * rate)), np.float32)
    rng = np.random.default_rng(seed)
    for n in notes:
        start = int(round(n.start * rate))
        length = max(1, min(int(round((n.end - n.start) * rate)), len(audio) - start))
        t = np.arange(length) / rate
        if drums:
            sound = rng.standard_normal(length) * np.exp(-30 * t)
        else:
            sound = np.sin(2 * np.pi * 440.0 * 2 ** ((n.pitch - 69) / 12) * t) * np.exp(-2 * t)
        audio[start:start + length] += (0.1 * n.velocity / 127 * sound).astype(np.float32)
    return audio


def write_audio(path: Path, audio: np.ndarray, rate: int, fmt: str) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1, 1), rate, subtype="PCM_16", format=fmt)


# --------------------------------------------------------------------------------------------------------------------
# MAESTRO v3.0.0


MAESTRO_COLUMNS = ("canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename",
                   "duration")


def _maestro_tracks() -> list[dict]:
    """Three performances (one per split). Raw notes, pedal (CC64) and the offsets the pedal must produce."""
    return [
        {   # pedal down 0.25-1.75: 60 and 64 are released under the pedal and must end at 1.75; 67 is after it
            "name": "2004/MIDI-Unprocessed_SMF_02_R1_2004_01-05_ORIG_MID--AUDIO_02_R1_2004_05_Track05_wav",
            "split": "train", "rate": 44100, "seconds": 3.0, "composer": "Frédéric Chopin", "title": "Etude",
            "raw": [Note(60, 0.5, 1.0, 80), Note(64, 1.0, 1.5, 70), Note(67, 2.0, 2.5, 90)],
            "cc": [(0.25, SUSTAIN, 127), (1.75, SUSTAIN, 0), (0.5, 67, 100), (1.0, 67, 0)],
            "expected_ends": [1.75, 1.75, 2.5],
        },
        {   # pedal already down at t=0, released at 1.5; the re-struck 62 cuts the first 62 at its onset (1.0)
            "name": "2018/MIDI-Unprocessed_Chamber3_MID--AUDIO_10_R3_2018_wav--1",
            "split": "validation", "rate": 48000, "seconds": 2.5, "composer": "Johann Sebastian Bach",
            "title": "Prelude, \"C major\"",
            "raw": [Note(62, 0.125, 0.5, 60), Note(62, 1.0, 1.25, 64), Note(71, 1.75, 2.0, 100)],
            "cc": [(0.0, SUSTAIN, 100), (1.5, SUSTAIN, 0)],
            "expected_ends": [1.0, 1.5, 2.0],
        },
        {   # no pedal at all: offsets unchanged
            "name": "2017/MIDI-Unprocessed_066_PIANO066_MID--AUDIO-split_07-07-17_Piano-e_3-02_wav--3",
            "split": "test", "rate": 44100, "seconds": 2.0, "composer": "Claude Debussy", "title": "Reverie",
            "raw": [Note(48, 0.25, 0.75, 50), Note(55, 0.25, 0.75, 55), Note(72, 1.0, 1.875, 70)],
            "cc": [],
            "expected_ends": [0.75, 0.75, 1.875],
        },
    ]


def make_maestro(base: Path, *, with_csv: bool = True, json_shape: str = "v3") -> tuple[Path, list[ExpectedTrack]]:
    """Writes `base/maestro-v3.0.0/` (csv + column-oriented json, year folders, .midi + stereo .wav)."""
    root = Path(base) / "maestro-v3.0.0"
    expected, rows = [], []
    for i, t in enumerate(_maestro_tracks()):
        midi_name, audio_name = t["name"] + ".midi", t["name"] + ".wav"
        write_midi(root / midi_name, [{"program": 0, "notes": t["raw"], "cc": t["cc"]}])
        ends = dict(zip(t["raw"], t["expected_ends"]))
        left = synth([Note(n.pitch, n.start, ends[n], n.velocity) for n in t["raw"]], t["seconds"], t["rate"])
        right = 0.8 * left + 0.01 * synth([Note(40, 0.0, t["seconds"])], t["seconds"], t["rate"], seed=i)
        write_audio(root / audio_name, np.stack([left, right], axis=1), t["rate"], "WAV")
        rows.append({"canonical_composer": t["composer"], "canonical_title": t["title"], "split": t["split"],
                     "year": t["name"][:4], "midi_filename": midi_name, "audio_filename": audio_name,
                     "duration": t["seconds"]})
        notes = [Note(n.pitch, n.start, e, n.velocity) for n, e in zip(t["raw"], t["expected_ends"])]
        expected.append(ExpectedTrack(t["name"], t["split"], t["seconds"], [(0, False, notes)]))
    if with_csv:
        with open(root / "maestro-v3.0.0.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=MAESTRO_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    if json_shape == "v3":  # column-oriented, as published with v3.0.0
        data = {c: {str(i): r[c] for i, r in enumerate(rows)} for c in MAESTRO_COLUMNS}
        (root / "maestro-v3.0.0.json").write_text(json.dumps(data))
    elif json_shape == "v2":  # list of records (v2.0.0)
        (root / "maestro-v2.0.0.json").write_text(json.dumps(rows))
    (root / "LICENSE").write_text("Creative Commons Attribution Non-Commercial Share-Alike 4.0\n")
    (root / "README").write_text("MAESTRO v3.0.0 (test fixture)\n")
    return root, expected


# --------------------------------------------------------------------------------------------------------------------
# Slakh2100 (flac redux) and babyslakh


@functools.lru_cache(maxsize=1)
def bach_parts(seconds: float = 3.0) -> tuple[tuple[Note, ...], ...]:
    """The four voices of music21's bundled Bach chorale BWV 66.6 (first `seconds` at 120 qpm) as Note tuples."""
    import music21

    score = music21.corpus.parse("bach/bwv66.6")
    parts = []
    for part in score.parts:
        notes = []
        for n in part.flatten().notes:
            start = float(n.getOffsetInHierarchy(score)) * 0.5
            end = min(start + float(n.quarterLength) * 0.5, seconds)
            if start < seconds and end > start:
                for p in n.pitches:
                    notes.append(Note(p.midi, start, end, 90))
        parts.append(tuple(notes))
    return tuple(parts)


# Piano stem: pedal held 0.25-2.0 extends the first two notes to 2.0; the last starts after the release.
SLAKH_PIANO_RAW = [Note(60, 0.5, 0.75, 80), Note(67, 1.0, 1.25, 70), Note(72, 2.25, 2.75, 90)]
SLAKH_PIANO_CC = [(0.25, SUSTAIN, 127), (2.0, SUSTAIN, 0)]
SLAKH_PIANO_ENDS = [2.0, 2.0, 2.75]
DRUM_NOTES = [Note(36, t, t + 0.125, 100) for t in (0.0, 1.0, 2.0)] + [Note(38, t, t + 0.125, 90) for t in (0.5, 1.5)]
SFX_NOTES = [Note(84, 0.5, 1.0, 100), Note(86, 1.5, 2.0, 100)]  # S05 "Sound Effects": only in all_src.mid


def _stem(program: int, inst_class: str, name: str, notes, *, drum=False, rendered=True, cc=(), bends=(),
          ends=None) -> dict:
    """A stem as the fixture writes it; `ends` are the expected (pedal-extended) offsets when they differ."""
    return {"program": program, "inst_class": inst_class, "midi_program_name": name, "notes": list(notes),
            "is_drum": drum, "rendered": rendered, "cc": list(cc), "bends": list(bends), "ends": ends}


def _slakh_tracks() -> list[dict]:
    soprano, alto, tenor, bass = bach_parts()
    piano = _stem(0, "Piano", "Acoustic Grand Piano", SLAKH_PIANO_RAW, cc=SLAKH_PIANO_CC, ends=SLAKH_PIANO_ENDS)
    drums = _stem(128, "Drums", "Drums", DRUM_NOTES, drum=True)
    return [
        {   # two guitars -> two Cerberus4 combinations; a Sound Effects part that was never rendered
            "id": "Track00001", "split": "train", "seconds": 3.0,
            "stems": {
                "S00": piano,
                "S01": _stem(30, "Guitar", "Distortion Guitar", alto, bends=[(0.5, 2000), (1.0, 0)]),
                "S02": _stem(33, "Bass", "Electric Bass (finger)", bass),
                "S03": drums,
                "S04": _stem(25, "Guitar", "Acoustic Guitar (steel)", tenor),
                "S05": _stem(103, "Sound Effects", "FX 8 (sci-fi)", SFX_NOTES, rendered=False),
            },
        },
        {   # no guitar: a Slakh track, but not a Cerberus4 one
            "id": "Track00002", "split": "validation", "seconds": 2.5,
            "stems": {
                "S00": _stem(4, "Piano", "Electric Piano 1", soprano),
                "S01": _stem(34, "Bass", "Electric Bass (pick)", bass),
                "S02": drums,
                "S03": _stem(48, "Strings (continued)", "String Ensembles 1", alto),
            },
        },
        {   # exactly one of each family -> one Cerberus4 combination
            "id": "Track00003", "split": "test", "seconds": 2.0,
            "stems": {
                "S00": _stem(27, "Guitar", "Electric Guitar (clean)", alto),
                "S01": _stem(1, "Piano", "Bright Acoustic Piano", soprano),
                "S02": drums,
                "S03": _stem(32, "Bass", "Acoustic Bass", bass),
            },
        },
    ]


def _cut(notes, seconds: float) -> list[Note]:
    return [Note(n.pitch, n.start, min(n.end, seconds), n.velocity) for n in notes if n.start < seconds]


def _expected_notes(stem: dict, seconds: float) -> list[Note]:
    notes = _cut(stem["notes"], seconds)
    if stem["ends"] is None:
        return notes
    return [Note(n.pitch, n.start, e, n.velocity) for n, e in zip(notes, stem["ends"], strict=True)]


def _write_slakh_track(track_dir: Path, track: dict, *, baby: bool) -> None:
    import yaml

    rate, ext, fmt = (16000, ".wav", "WAV") if baby else (44100, ".flac", "FLAC")
    seconds = track["seconds"]
    stems_meta, mix = {}, np.zeros(int(round(seconds * rate)), np.float32)
    all_src = []
    for k, (name, stem) in enumerate(track["stems"].items()):
        notes = _cut(stem["notes"], seconds)
        inst = {"program": 0 if stem["is_drum"] else stem["program"], "is_drum": stem["is_drum"], "notes": notes,
                "cc": stem["cc"], "bends": stem["bends"]}
        all_src.append(inst)
        meta = {
            "audio_rendered": stem["rendered"], "inst_class": stem["inst_class"], "is_drum": stem["is_drum"],
            "midi_program_name": stem["midi_program_name"], "midi_saved": stem["rendered"],
            "plugin_name": "session_horns_pro.nkm" if stem["rendered"] else "None", "program_num": stem["program"],
        }
        if stem["rendered"]:
            meta["integrated_loudness"] = -18.5 - k
            write_midi(track_dir / "MIDI" / f"{name}.mid", [inst])
            audio = synth(_expected_notes(stem, seconds), seconds, rate, drums=stem["is_drum"], seed=k)
            write_audio(track_dir / "stems" / f"{name}{ext}", audio, rate, fmt)
            mix += audio
        if baby:  # babyslakh's flags are wrong: they say nothing was rendered or saved
            meta["audio_rendered"] = meta["midi_saved"] = False
        stems_meta[name] = meta
    write_midi(track_dir / "all_src.mid", all_src)
    write_audio(track_dir / f"mix{ext}", mix * 0.5, rate, fmt)
    metadata = {
        "UUID": hashlib.md5(track["id"].encode()).hexdigest(),
        "audio_dir": "stems" if baby else f"{track['id']}/stems",
        "lmd_midi_dir": "lmd_matched/O/O/H/TROOHTB128F931F9DF/1a81ae092884234f3264e2f45927f00a.mid",
        "midi_dir": "MIDI" if baby else f"{track['id']}/MIDI",
        "normalization_factor": -13.0, "normalized": True, "overall_gain": 0.5, "target_peak": -1.0,
        "stems": stems_meta,
    }
    (track_dir / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=True))


def _expected_slakh(track: dict, split: str) -> ExpectedTrack:
    parts = [(0 if s["is_drum"] else s["program"], s["is_drum"], _expected_notes(s, track["seconds"]))
             for s in track["stems"].values() if s["rendered"]]
    return ExpectedTrack(track["id"], split, track["seconds"], parts)


def make_slakh(base: Path, *, baby: bool = False) -> tuple[Path, list[ExpectedTrack]]:
    """Writes `base/slakh2100_flac_redux/{train,validation,test,omitted}/Track*` (or `base/babyslakh_16k/Track*`)."""
    root = Path(base) / ("babyslakh_16k" if baby else "slakh2100_flac_redux")
    expected = []
    for track in _slakh_tracks():
        folder = root / track["id"] if baby else root / track["split"] / track["id"]
        _write_slakh_track(folder, track, baby=baby)
        expected.append(_expected_slakh(track, "train" if baby else track["split"]))
    if not baby:  # a MIDI duplicate the redux release moved aside: must never be converted
        dup = dict(_slakh_tracks()[2], id="Track00004")
        _write_slakh_track(root / "omitted" / "Track00004", dup, baby=False)
    return root, expected


CERBERUS_FAMILY_PROGRAMS = {"piano": 0, "guitar": 24, "bass": 32}


def expected_cerberus4(expected_slakh: list[ExpectedTrack]) -> list[ExpectedTrack]:
    """Cerberus4 records from the Slakh fixture, listed by hand from `_slakh_tracks` (stems: piano, guitar, bass,
    drums)."""
    stems = {t["id"]: t["stems"] for t in _slakh_tracks()}
    combos = {"Track00001": [("S00", "S01", "S02", "S03"), ("S00", "S04", "S02", "S03")],
              "Track00003": [("S01", "S00", "S03", "S02")]}
    by_id = {t.id: t for t in expected_slakh}
    out = []
    for track_id, track_combos in combos.items():
        slakh_track = by_id[track_id]
        for combo in track_combos:
            parts = []
            for (program, drum), name in zip([(0, False), (24, False), (32, False), (0, True)], combo):
                parts.append((program, drum, _expected_notes(stems[track_id][name], slakh_track.seconds)))
            out.append(ExpectedTrack("_".join((track_id,) + combo), slakh_track.split, slakh_track.seconds, parts))
    return out


# --------------------------------------------------------------------------------------------------------------------
# reading converted output back


def converted(out: Path, split: str) -> dict:
    """{id: TrackRecord} of a converted split, read from the shards its manifest lists."""
    from mt3.data import records

    return {r.id: r for r in records.read_records(records.shard_paths(out, split))}


def notes_of(record, program: int, is_drum: bool) -> list:
    """The record's notes of one (program, is_drum) part as sorted (pitch, start, end, velocity) tuples."""
    return sorted((n.pitch, n.start_time, n.end_time, n.velocity) for n in record.sequence.notes
                  if n.program == program and n.is_drum == is_drum)


def assert_notes_match(actual: list, expected: list[Note], tol: float = 1e-3) -> None:
    """Same notes, onsets and offsets within `tol` seconds (1 ms), same velocities."""
    expected = sorted((n.pitch, n.start, n.end, n.velocity) for n in expected)
    assert len(actual) == len(expected), (actual, expected)
    for a, e in zip(actual, expected):
        assert a[0] == e[0] and a[3] == e[3], (a, e)
        assert abs(a[1] - e[1]) <= tol and abs(a[2] - e[2]) <= tol, (a, e)


def leftover_files(out: Path) -> dict[str, list[str]]:
    """Shards/manifests/temporaries present in an output folder (for atomicity checks)."""
    names = sorted(p.name for p in Path(out).iterdir()) if Path(out).exists() else []
    return {
        "tfrecord": [n for n in names if n.endswith(".tfrecord")],
        "manifest": [n for n in names if n.endswith(".manifest.json")],
        "tmp": [n for n in names if n.endswith(".tmp")],
    }
