"""Cerberus4 converter: one record per (piano, guitar, bass, drums) stem combination of a Slakh redux fixture."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr
from native_fixtures import assert_notes_match, converted, expected_cerberus4, make_slakh, notes_of

from mt3.converters.base import prepare_dataset
from mt3.data import records


@pytest.fixture(scope="module")
def cerberus(tmp_path_factory):
    root, expected_slakh = make_slakh(tmp_path_factory.mktemp("slakh"))
    out = tmp_path_factory.mktemp("cerberus_out")
    result = prepare_dataset("cerberus4", root, out)
    return root, expected_cerberus4(expected_slakh), out, result


def test_one_record_per_family_combination(cerberus):
    _, expected, out, _ = cerberus
    assert sorted(converted(out, "train")) == ["Track00001_S00_S01_S02_S03", "Track00001_S00_S04_S02_S03"]
    assert sorted(converted(out, "test")) == ["Track00003_S01_S00_S03_S02"]
    for track in expected:
        rec = converted(out, track.split)[track.id]
        assert rec.dataset == "cerberus4" and rec.sample_rate == 16000
        assert abs(len(rec.audio) - track.seconds * 16000) <= 1
        assert len(rec.sequence.notes) == track.num_notes
        for program, is_drum, notes in track.parts:  # relabelled: piano 0, guitar 24, bass 32, drums is_drum
            assert_notes_match(notes_of(rec, program, is_drum), notes)
        assert {(n.program, n.is_drum) for n in rec.sequence.notes} == {(0, False), (24, False), (32, False), (0, True)}
        assert {n.instrument for n in rec.sequence.notes} == {0, 1, 2, 3}


def test_audio_is_the_sum_of_the_chosen_stems(cerberus):
    root, _, out, _ = cerberus
    rec = converted(out, "train")["Track00001_S00_S04_S02_S03"]
    stems = [sf.read(str(root / "train" / "Track00001" / "stems" / f"{s}.flac"), dtype="float64") for s in
             ("S00", "S04", "S02", "S03")]
    assert all(rate == 44100 for _, rate in stems)
    reference = soxr.resample(sum(a for a, _ in stems), 44100, 16000)
    n = min(len(reference), len(rec.audio))
    assert abs(len(reference) - len(rec.audio)) <= 1
    assert np.abs(rec.audio[:n] - reference[:n]).max() < 1e-3 * np.abs(reference).max() + 1e-4
    other = converted(out, "train")["Track00001_S00_S01_S02_S03"]
    assert np.abs(other.audio[:n] - reference[:n]).max() > 0.01, "a different guitar gives different audio"


def test_tracks_without_all_four_families_are_skipped_and_counted(cerberus):
    _, _, out, result = cerberus
    m = records.read_manifest(out, "validation")  # Track00002 has no guitar
    assert m["num_tracks"] == 0 and result["validation"]["sources_without_records"] == 1
    assert result["train"]["sources_without_records"] == 0 and result["train"]["skipped"] == []
    train = records.read_manifest(out, "train")
    assert train["num_tracks"] == 2 and sorted(train["programs"]) == ["0", "24", "32"]


def test_manifests_record_track_spec_programs(cerberus):
    """MT3's Cerberus4 tokenizer relabels stems to its track specs (not Slakh classes); the manifest says so, and a
    Slakh tree's Slakh-class default does not leak in (the distorted guitar, program 30, is 24 here, not 29)."""
    _, _, out, _ = cerberus
    for split in ("train", "validation", "test"):
        assert records.read_manifest(out, split)["program_mapping"] == "track_specs"
    from mt3 import datasets

    assert datasets.recorded_program_mapping(records.read_manifest(out, "train")) == \
        datasets.CERBERUS4_CONFIG.program_mapping
    assert {n.program for r in converted(out, "train").values() for n in r.sequence.notes} == {0, 24, 32}
