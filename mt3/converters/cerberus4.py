"""Cerberus4 (MT3's slice of Slakh2100): every combination of one piano, one guitar, one bass and one drum stem.

Built from a Slakh root (same layouts and splits as `mt3.converters.slakh`). For each track, all combinations of
exactly one rendered stem of each family (piano = programs 0-7, guitar 24-31, bass 32-39, drums = is_drum; paper
App. B.3) give one record each: audio = sum of the chosen stems' 16 kHz audio (raw sum, not peak-normalised; the
stems are already gain-matched to the mix), notes relabelled to MT3's track specs piano 0, guitar 24, bass 32,
drums is_drum (instrument 0..3 in that order), as MT3's Cerberus4 tokenizer relabels each track to its spec's program
(not to the stem's Slakh class); manifests record `program_mapping: track_specs`. Record id: `TrackXXXXX_Sa_Sb_Sc_Sd`
(piano, guitar, bass, drum stem).
A track lacking any family yields no record; the driver counts such tracks (`sources_without_records`).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from mt3.converters import slakh
from mt3.converters.slakh import SlakhTrack, Stem
from mt3.data.records import TrackRecord

NAME = "cerberus4"
SPLITS = slakh.SPLITS

# family -> (token program, predicate on a rendered stem); order fixes ids and instrument indices
FAMILIES: tuple[tuple[str, int, object], ...] = (
    ("piano", 0, lambda s: not s.is_drum and 0 <= s.program_num <= 7),
    ("guitar", 24, lambda s: not s.is_drum and 24 <= s.program_num <= 31),
    ("bass", 32, lambda s: not s.is_drum and 32 <= s.program_num <= 39),
    ("drums", 0, lambda s: s.is_drum),
)


def list_tracks(root: Path, *, flat_split: str = "train") -> dict[str, list[SlakhTrack]]:
    # the stems' own programs are never used: every stem is relabelled to its family's track-spec program
    return slakh.list_tracks(root, flat_split=flat_split, program_mapping="full")


def manifest_fields(sources: list[SlakhTrack]) -> dict:
    """Recorded in each split's manifest: programs are MT3's Cerberus4 track specs (piano 0, guitar 24, bass 32)."""
    return {"program_mapping": "track_specs"}


def family_stems(stems: list[Stem]) -> list[list[Stem]]:
    """The stems of each family, in FAMILIES order."""
    return [[s for s in stems if member(s)] for _, _, member in FAMILIES]


def load_track(source: SlakhTrack) -> list[TrackRecord]:
    from mt3.converters.base import load_audio, mix_audio

    groups = family_stems(slakh.rendered_stems(source.path))
    if not all(groups):
        return []
    audio: dict[str, object] = {}
    notes: dict[str, object] = {}
    records = []
    for combo in itertools.product(*groups):
        parts = []
        for index, ((_, program, _), stem) in enumerate(zip(FAMILIES, combo)):
            if stem.name not in audio:
                audio[stem.name] = load_audio(stem.audio_path, allow_silence=True)
            if stem.name not in notes:  # families are disjoint, so a stem always gets the same index
                notes[stem.name] = slakh.stem_sequence(stem, program=program, is_drum=stem.is_drum, instrument=index)
            parts.append(notes[stem.name])
        record_id = "_".join([source.id] + [s.name for s in combo])
        ns = slakh.merge_sequences(parts, track_id=record_id, dataset=NAME)
        records.append(TrackRecord(id=record_id, audio=mix_audio(audio[s.name] for s in combo), sequence=ns,
                                   dataset=NAME))
    return records
