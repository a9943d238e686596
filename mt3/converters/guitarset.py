"""GuitarSet (JAMS annotations) -> records: one record per excerpt and audio source, all notes program 24.

Native layout (Zenodo 3371780, one zip per folder):

    annotation/03_BN3-119-G_solo.jams
    audio_mono-mic/03_BN3-119-G_solo_mic.wav                 (reference microphone; the default source)
    audio_mono-pickup_mix/03_BN3-119-G_solo_mix.wav          (mono downmix of the hex pickup; optional second source)

Each JAMS holds six `note_midi` annotations, one per string (`annotation_metadata.data_source` "0" low E .. "5" high
e), with fractional MIDI pitches. They are merged into one guitar track, pitches rounded, and same-pitch overlaps
(a unison played on two strings, or a note re-struck on another string before the first rings out) resolved so the
reference is representable: onsets closer than `MERGE_ONSET_S` become one note, otherwise the earlier note is cut at
the later onset. Every note gets program 24 (MT3's "Clean Guitar") and a fixed velocity (GuitarSet has none).

Split (MT3 App. B.4): per style, progressions 1 and 2 train and progression 3 validation; no test split. MT3 reports
478 train / 238 validation tracks, about twice the 240/120 excerpts, which suggests it used both the mic and the
pickup-mix audio of every excerpt (inferred, not stated): pass `audio_sources=("mic", "mix")` to reproduce that.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mt3.data.records import SAMPLE_RATE, TrackRecord
from mt3.errors import InputError

NAME = "guitarset"
SPLITS = ("train", "validation")

PROGRAM = 24  # MT3's `guitarset_instrument_to_program`: "Clean Guitar" -> 24 (other re-implementations use 25)
VELOCITY = 100  # no velocities in GuitarSet; any nonzero constant (MT3 uses one velocity bin)
MERGE_ONSET_S = 0.05  # same-pitch notes starting closer than this (mir_eval's onset tolerance) are one note
MAX_LABEL_OVERRUN_S = 1.0  # labels may end this much after the audio before we call the pair mismatched

# source name -> (folder, file suffix) of the mono audio
AUDIO_SOURCES = {"mic": ("audio_mono-mic", "_mic.wav"), "mix": ("audio_mono-pickup_mix", "_mix.wav")}
EXCERPT_RE = re.compile(r"^(?P<player>\d{2})_(?P<style>BN|Funk|Jazz|Rock|SS)(?P<prog>[123])-(?P<bpm>\d+)-"
                        r"(?P<key>[^_]+)_(?P<mode>comp|solo)$")


@dataclass(frozen=True)
class GuitarSetSource:
    """One excerpt heard through one audio source. `id` is the audio file's stem, e.g. `00_BN1-129-Eb_comp_mic`."""

    id: str
    excerpt: str
    jams_path: Path
    audio_path: Path


def split_of(excerpt: str, path: str | os.PathLike | None = None) -> str:
    """MT3's split from the progression digit after the style code: 1/2 -> train, 3 -> validation."""
    match = EXCERPT_RE.match(excerpt)
    if match is None:
        raise InputError(path if path is not None else excerpt,
                         "name is not a GuitarSet id {player}_{style}{1-3}-{bpm}-{key}_{comp|solo}")
    return "validation" if match["prog"] == "3" else "train"


def list_tracks(root: str | os.PathLike, *, audio_sources: tuple[str, ...] = ("mic",)) -> dict[str, list]:
    """One source per (annotation, audio source). Audio files are not checked here: `load_track` reports a missing
    one naming it, so `--skip-bad` can skip just that excerpt."""
    root = Path(root)
    if isinstance(audio_sources, str):  # `mt3 prepare-data guitarset --option audio_sources=mic`
        audio_sources = tuple(audio_sources.split(","))
    unknown = [s for s in audio_sources if s not in AUDIO_SOURCES]
    if unknown or not audio_sources:
        raise InputError(None, f"audio_sources must be a non-empty subset of {sorted(AUDIO_SOURCES)}, got "
                               f"{list(audio_sources)}")
    annotation_dir = root / "annotation"
    if not annotation_dir.is_dir():
        raise InputError(root, "not a GuitarSet root: expected annotation/*.jams and audio_mono-mic/*_mic.wav")
    jams_files = sorted(p for p in annotation_dir.glob("*.jams") if not p.name.startswith("."))
    if not jams_files:
        raise InputError(annotation_dir, "no .jams files")
    splits: dict[str, list[GuitarSetSource]] = {split: [] for split in SPLITS}
    for jams_path in jams_files:
        excerpt = jams_path.stem
        split = split_of(excerpt, jams_path)
        for name in audio_sources:
            folder, suffix = AUDIO_SOURCES[name]
            audio_path = root / folder / f"{excerpt}{suffix}"
            splits[split].append(GuitarSetSource(audio_path.stem, excerpt, jams_path, audio_path))
    return splits


def _observations(path: Path, annotation: dict, where: str) -> list[dict]:
    """The observations of one annotation, from JAMS's list form or its dense column form."""
    data = annotation.get("data")
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        columns = [data.get(k) for k in ("time", "duration", "value")]
        if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) != 1:
            raise InputError(path, f"{where}: column-form data needs equal-length time/duration/value lists")
        return [{"time": t, "duration": d, "value": v} for t, d, v in zip(*columns)]
    raise InputError(path, f"{where}: 'data' must be a list of observations or a column dict")


def read_jams_notes(path: str | os.PathLike) -> list[tuple[float, float, float, str]]:
    """All `note_midi` observations of one JAMS file as (start_s, end_s, fractional_pitch, string).

    Raises InputError naming the file for broken JSON, a file without `note_midi` annotations, or a bad observation.
    Zero-duration observations are dropped (a NoteSequence cannot hold them).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "annotation file not found")
    try:
        doc = json.loads(path.read_text())
    except UnicodeDecodeError as err:
        raise InputError(path, f"not a text JAMS file ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(annotations, list):
        raise InputError(path, "not a JAMS file: no 'annotations' list")
    note_annotations = [a for a in annotations if isinstance(a, dict) and a.get("namespace") == "note_midi"]
    if not note_annotations:
        raise InputError(path, "no note_midi annotations (expected one per string)")
    notes = []
    for index, annotation in enumerate(note_annotations):
        string = str((annotation.get("annotation_metadata") or {}).get("data_source", index))
        where = f"note_midi annotation of string {string}"
        for i, obs in enumerate(_observations(path, annotation, where)):
            try:
                start, duration, pitch = (float(obs[k]) for k in ("time", "duration", "value"))
            except (KeyError, TypeError, ValueError):
                raise InputError(path, f"{where}, observation {i}: needs numeric time, duration, value") from None
            if not all(math.isfinite(v) for v in (start, duration, pitch)) or start < 0 or duration < 0:
                raise InputError(path, f"{where}, observation {i}: bad time {start}/duration {duration}/value {pitch}")
            if not 0 <= round(pitch) <= 127:
                raise InputError(path, f"{where}, observation {i}: pitch {pitch} is outside MIDI 0..127")
            if duration > 0:
                notes.append((start, start + duration, pitch, string))
    return notes


def merge_strings(notes: list[tuple[float, float, float, str]]) -> list[tuple[float, float, int]]:
    """Rounds pitches and resolves same-pitch overlaps across strings; returns sorted (start_s, end_s, pitch)."""
    by_pitch: dict[int, list[list[float]]] = {}
    for start, end, pitch, _ in sorted(notes):
        merged = by_pitch.setdefault(round(pitch), [])
        if merged and start < merged[-1][1]:
            previous = merged[-1]
            if start - previous[0] < MERGE_ONSET_S:  # one note sounded on two strings
                previous[1] = max(previous[1], end)
                continue
            previous[1] = start  # re-struck: the earlier note stops where the new one starts
        merged.append([start, end])
    out = [(s, e, p) for p, spans in by_pitch.items() for s, e in spans if e > s]
    return sorted(out, key=lambda n: (n[0], n[2]))


def build_sequence(notes: list[tuple[float, float, int]], track_id: str):
    import note_seq

    ns = note_seq.NoteSequence(ticks_per_quarter=note_seq.STANDARD_PPQ)
    ns.id = track_id
    ns.collection_name = NAME
    for start, end, pitch in notes:
        ns.notes.add(pitch=pitch, start_time=start, end_time=end, velocity=VELOCITY, program=PROGRAM,
                     instrument=0, is_drum=False)
    ns.total_time = max((n[1] for n in notes), default=0.0)
    return ns


def load_track(source: GuitarSetSource) -> list[TrackRecord]:
    notes = merge_strings(read_jams_notes(source.jams_path))
    if not source.audio_path.is_file():
        raise InputError(source.audio_path, "audio file not found (the annotation exists for this excerpt)")
    audio = _load_audio(source.audio_path)
    seconds = len(audio) / SAMPLE_RATE
    last = max((n[1] for n in notes), default=0.0)
    if last > seconds + MAX_LABEL_OVERRUN_S:
        raise InputError(source.jams_path,
                         f"notes run to {last:.2f} s but {source.audio_path.name} lasts {seconds:.2f} s")
    ns = build_sequence(notes, source.id)
    ns.filename = source.audio_path.name
    return [TrackRecord(id=source.id, audio=audio, sequence=ns, dataset=NAME)]


def _load_audio(path: Path):
    from mt3.audio import load_audio  # lazy: soundfile/soxr only when a track is actually read

    return load_audio(path, sample_rate=SAMPLE_RATE)
