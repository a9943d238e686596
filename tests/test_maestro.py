"""MAESTRO v3.0.0 converter on a miniature copy of the release (csv + json, year folders, .midi + stereo .wav)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from native_fixtures import assert_notes_match, converted, make_maestro, notes_of

from mt3.cli import main as cli_main
from mt3.converters import maestro
from mt3.converters.base import prepare_dataset
from mt3.data import records
from mt3.errors import InputError


@pytest.fixture(scope="module")
def maestro_tree(tmp_path_factory):
    return make_maestro(tmp_path_factory.mktemp("maestro"))


@pytest.fixture(scope="module")
def maestro_out(maestro_tree, tmp_path_factory):
    root, _ = maestro_tree
    out = tmp_path_factory.mktemp("maestro_out")
    assert cli_main(["prepare-data", "maestro", "--root", str(root), "--out", str(out)]) == 0
    return out


def test_records_hold_pedal_extended_piano_notes_and_16k_audio(maestro_tree, maestro_out):
    _, expected = maestro_tree
    for track in expected:
        recs = converted(maestro_out, track.split)
        assert set(recs) == {track.id}, "each split holds exactly its own performance"
        rec = recs[track.id]
        assert rec.dataset == "maestrov3" and rec.sample_rate == 16000
        assert abs(len(rec.audio) - track.seconds * 16000) <= 1  # 44.1/48 kHz stereo -> 16 kHz mono
        assert rec.audio.dtype == np.float32 and rec.audio.ndim == 1 and np.abs(rec.audio).max() > 0.01
        (program, is_drum, notes), = track.parts
        assert_notes_match(notes_of(rec, program, is_drum), notes)
        assert len(rec.sequence.notes) == len(notes)
        assert not rec.sequence.control_changes, "pedal applied, then control changes removed"
        assert {n.instrument for n in rec.sequence.notes} == {0}


def test_manifests(maestro_tree, maestro_out):
    _, expected = maestro_tree
    for track in expected:
        m = records.read_manifest(maestro_out, track.split)
        assert m["dataset"] == "maestrov3" and m["split"] == track.split
        assert m["num_tracks"] == 1 and m["num_notes"] == track.num_notes and m["num_drum_notes"] == 0
        assert m["programs"] == {"0": track.num_notes}
        assert m["tracks"] == [{"id": track.id, "seconds": pytest.approx(track.seconds, abs=1e-3),
                                "notes": track.num_notes}]
        assert m["hours"] == pytest.approx(track.seconds / 3600, abs=1e-4)
        assert all((maestro_out / s).exists() for s in m["shards"])


@pytest.mark.parametrize("json_shape", ["v3", "v2"])
def test_json_metadata_lists_the_same_tracks_as_the_csv(tmp_path, json_shape):
    root, expected = make_maestro(tmp_path, with_csv=False, json_shape=json_shape)
    listing = maestro.list_tracks(root)
    assert {s: [t.id for t in v] for s, v in listing.items()} == {
        s: [t.id for t in expected if t.split == s] for s in ("train", "validation", "test")}
    track = listing["train"][0]
    assert track.midi_path == root / (track.id + ".midi") and track.audio_path == root / (track.id + ".wav")


def test_csv_is_preferred_over_json(tmp_path):
    root, _ = make_maestro(tmp_path)
    (root / "maestro-v3.0.0.json").write_text("{ not json")
    assert sum(len(v) for v in maestro.list_tracks(root).values()) == 3


def _run(root, out, *extra):
    return cli_main(["prepare-data", "maestro", "--root", str(root), "--out", str(out), *extra])


def test_malformed_csv_is_named(tmp_path, capsys):
    root, _ = make_maestro(tmp_path)
    csv_path = root / "maestro-v3.0.0.csv"
    csv_path.write_text('canonical_composer,canonical_title,split\n"Chopin,Etude,train\n')
    assert _run(root, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("mt3 prepare-data: error: ") and str(csv_path) in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_csv_without_required_columns_is_named(tmp_path):
    root, _ = make_maestro(tmp_path)
    csv_path = root / "maestro-v3.0.0.csv"
    csv_path.write_text("composer,title\nChopin,Etude\n")
    with pytest.raises(InputError, match="missing column") as info:
        maestro.list_tracks(root)
    assert info.value.path == str(csv_path)


def test_missing_listed_audio_exits_2_naming_it_and_skip_bad_converts_the_rest(tmp_path, capsys, caplog):
    root, expected = make_maestro(tmp_path)
    missing = root / (expected[1].id + ".wav")
    missing.unlink()
    assert _run(root, tmp_path / "out") == 2
    assert str(missing) in capsys.readouterr().err

    out = tmp_path / "out2"
    assert _run(root, out, "--skip-bad") == 0
    assert f"skipped (validation) {expected[1].id}: {missing}: " in capsys.readouterr().out, "reported in the summary"
    assert any(r.levelname == "WARNING" and str(missing) in r.getMessage() for r in caplog.records), "and logged"
    assert set(converted(out, "train")) == {expected[0].id} and set(converted(out, "test")) == {expected[2].id}
    assert records.read_manifest(out, "validation")["num_tracks"] == 0
    skipped = json.loads((out / "validation.skipped.json").read_text())["skipped"]
    assert [(s["id"], s["path"]) for s in skipped] == [(expected[1].id, str(missing))]
    assert not (out / "train.skipped.json").exists()


def test_midi_that_is_not_midi_is_named(tmp_path, capsys):
    root, expected = make_maestro(tmp_path)
    bad = root / (expected[2].id + ".midi")
    bad.write_bytes(b"RIFF....WAVEfmt not a midi file")
    assert _run(root, tmp_path / "out", "--splits", "test") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a MIDI file" in err


def test_missing_listed_midi_is_named(tmp_path):
    root, expected = make_maestro(tmp_path)
    (root / (expected[0].id + ".midi")).unlink()
    with pytest.raises(InputError) as info:
        prepare_dataset("maestro", root, tmp_path / "out", splits=["train"])
    assert info.value.path == str(root / (expected[0].id + ".midi"))
