"""Slakh2100 converter on miniature copies of the flac redux release and of babyslakh_16k."""

from __future__ import annotations

import json

import numpy as np
import pytest
from native_fixtures import SFX_NOTES, assert_notes_match, converted, make_slakh, notes_of

from mt3.cli import main as cli_main
from mt3.converters import slakh
from mt3.converters.base import prepare_dataset
from mt3.data import records
from mt3.errors import InputError


@pytest.fixture(scope="module")
def redux(tmp_path_factory):
    root, expected = make_slakh(tmp_path_factory.mktemp("slakh"))
    out = tmp_path_factory.mktemp("slakh_out")
    assert cli_main(["prepare-data", "slakh", "--root", str(root), "--out", str(out)]) == 0
    return root, expected, out


def _program(program: int, is_drum: bool, mapping: str) -> int:
    """The program a stem's notes carry: its Slakh class (MT3, the default on a Slakh tree) or its GM program."""
    return program if is_drum or mapping == "full" else slakh.slakh_class_program(program)


def _check_track(rec, track, mapping="slakh_class"):
    assert rec.dataset == "slakh" and rec.sample_rate == 16000
    assert abs(len(rec.audio) - track.seconds * 16000) <= 1 and np.abs(rec.audio).max() > 0.01
    assert len(rec.sequence.notes) == track.num_notes
    for program, is_drum, notes in track.parts:
        assert_notes_match(notes_of(rec, _program(program, is_drum, mapping), is_drum), notes)
    # every rendered stem is its own instrument; pitch bends and pedal events are gone
    assert len({n.instrument for n in rec.sequence.notes}) == len(track.parts)
    assert not rec.sequence.pitch_bends and not rec.sequence.control_changes


def test_redux_records_follow_the_rendered_stems(redux):
    _, expected, out = redux
    for track in expected:
        recs = converted(out, track.split)
        assert set(recs) == {track.id}, "the folder is the split; omitted/ is ignored"
        _check_track(recs[track.id], track)


def test_drum_stem_is_drum_program_0_and_unrendered_part_is_absent(redux):
    _, expected, out = redux
    rec = converted(out, "train")["Track00001"]
    drums = [n for n in rec.sequence.notes if n.is_drum]
    assert len(drums) == 5 and {n.program for n in drums} == {0}
    # MT3's Slakh classes: 0 -> Acoustic Piano 0, 30 -> Distorted 29, 33 -> Electric Bass 33, 25 -> Acoustic Guitar 24
    assert {n.program for n in rec.sequence.notes if not n.is_drum} == {0, 29, 33, 24}
    # S05 (Sound Effects, audio_rendered: false) has notes only in all_src.mid: none may appear
    assert not any(n.program == 103 for n in rec.sequence.notes)
    assert not {(n.pitch, n.start_time) for n in rec.sequence.notes} & {(n.pitch, n.start) for n in SFX_NOTES}
    # sustain applied per stem: the piano notes released under the pedal end at its release (2.0 s)
    piano = sorted((n.start_time, n.end_time) for n in rec.sequence.notes if n.program == 0 and not n.is_drum)
    assert [round(e, 3) for _, e in piano] == [2.0, 2.0, 2.75]


def test_redux_manifests(redux):
    _, expected, out = redux
    assert sorted(p.name for p in out.glob("*.manifest.json")) == [
        "test.manifest.json", "train.manifest.json", "validation.manifest.json"]
    for track in expected:
        m = records.read_manifest(out, track.split)
        assert m["dataset"] == "slakh" and m["num_tracks"] == 1 and m["num_notes"] == track.num_notes
        assert m["program_mapping"] == "slakh_class"
        drum_notes = sum(len(n) for _, d, n in track.parts if d)
        assert m["num_drum_notes"] == drum_notes
        by_program: dict[str, int] = {}
        for program, is_drum, notes in track.parts:
            if not is_drum:
                key = str(_program(program, is_drum, "slakh_class"))
                by_program[key] = by_program.get(key, 0) + len(notes)
        assert m["programs"] == by_program
        assert [t["id"] for t in m["tracks"]] == [track.id]


def test_babyslakh_flat_layout_wrong_flags_and_16k_wav(tmp_path):
    root, expected = make_slakh(tmp_path, baby=True)
    out = tmp_path / "out"
    result = prepare_dataset("slakh", root, out)
    assert list(result) == ["train"], "no split folders: everything in one split"
    recs = converted(out, "train")
    assert sorted(recs) == [t.id for t in expected]
    for track in expected:
        _check_track(recs[track.id], track)


def test_babyslakh_split_override(tmp_path):
    root, expected = make_slakh(tmp_path, baby=True)
    out = tmp_path / "out"
    assert cli_main(["prepare-data", "slakh", "--root", str(root), "--out", str(out), "--splits", "validation"]) == 0
    assert sorted(converted(out, "validation")) == [t.id for t in expected]
    assert not (out / "train.manifest.json").exists()


def test_splits_option_converts_only_those_splits(tmp_path):
    root, _ = make_slakh(tmp_path)
    result = prepare_dataset("slakh", root, tmp_path / "out", splits=["test"])
    assert list(result) == ["test"] and result["test"]["tracks"][0]["id"] == "Track00003"
    with pytest.raises(InputError, match="no slakh tracks for split 'dev'"):
        prepare_dataset("slakh", root, tmp_path / "out", splits=["dev"])


def test_slakh_class_program_follows_mt3_table():
    # a few members of each kind of class range, from the paper's Table 7 grouping
    cases = {0: 0, 1: 0, 2: 4, 5: 4, 8: 8, 15: 8, 19: 16, 24: 24, 27: 26, 30: 29, 32: 32, 35: 32, 33: 33, 38: 33,
             40: 40, 43: 43, 44: 48, 49: 48, 46: 46, 47: 47, 51: 50, 54: 52, 55: 55, 59: 56, 62: 61, 65: 64, 66: 66,
             67: 67, 69: 69, 72: 73, 79: 73, 85: 80, 95: 88}
    assert {p: slakh.slakh_class_program(p) for p in cases} == cases
    assert len(set(slakh.SLAKH_CLASS_PROGRAMS.values())) == 34  # MT3's 34 Slakh classes (drums aside)
    for p in (96, 103, 127):
        with pytest.raises(ValueError):
            slakh.slakh_class_program(p)


def test_program_mapping_default_full_and_auto_for_the_local_corpus(tmp_path):
    root, expected = make_slakh(tmp_path)
    assert slakh.list_tracks(root)["train"][0].program_mapping == "slakh_class"  # a Slakh tree: MT3's classes
    full, = slakh.load_track(slakh.list_tracks(root, program_mapping="full")["train"][0])
    assert {n.program for n in full.sequence.notes if not n.is_drum} == {0, 30, 33, 25}
    _check_track(full, expected[0], "full")
    # the local corpus (a tree with build-corpus's corpus.json) keeps its GM programs by default
    (root / "corpus.json").write_text("{}")
    assert slakh.list_tracks(root)["train"][0].program_mapping == "full"
    assert slakh.list_tracks(root, program_mapping="slakh_class")["train"][0].program_mapping == "slakh_class"
    out = tmp_path / "local"
    assert cli_main(["prepare-data", "slakh", "--root", str(root), "--out", str(out), "--splits", "train"]) == 0
    m = records.read_manifest(out, "train")
    assert m["program_mapping"] == "full" and set(m["programs"]) == {"0", "30", "33", "25"}
    with pytest.raises(InputError, match="program_mapping must be auto, full or slakh_class"):
        slakh.list_tracks(root, program_mapping="midi_class")


def test_resuming_with_another_program_mapping_is_an_error(tmp_path, capsys):
    root, _ = make_slakh(tmp_path)
    out = tmp_path / "out"
    args = ["prepare-data", "slakh", "--root", str(root), "--out", str(out), "--splits", "test"]
    assert cli_main(args) == 0
    assert "program_mapping: slakh_class" in capsys.readouterr().out
    assert cli_main(args + ["--option", "program_mapping=slakh_class"]) == 0  # same mapping: resumed
    assert "already complete" in capsys.readouterr().out
    assert cli_main(args + ["--option", "program_mapping=full"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'test.manifest.json'}: split 'test' is already prepared with program_mapping=slakh_class" in err
    assert records.read_manifest(out, "test")["program_mapping"] == "slakh_class"  # untouched


def test_manifest_without_mapping_reads_as_full_programs(tmp_path):
    """Splits prepared before manifests recorded the mapping (the local corpus, always full) resume unchanged."""
    root, _ = make_slakh(tmp_path)
    (root / "corpus.json").write_text("{}")
    out = tmp_path / "out"
    prepare_dataset("slakh", root, out, splits=["test"])
    path = records.manifest_path(out, "test")
    legacy = json.loads(path.read_text())
    del legacy["program_mapping"]
    path.write_text(json.dumps(legacy))
    assert prepare_dataset("slakh", root, out, splits=["test"])["test"]["resumed"]
    (root / "corpus.json").unlink()  # now "auto" means MT3's classes, which these shards do not carry
    with pytest.raises(InputError, match="already prepared with program_mapping=full"):
        prepare_dataset("slakh", root, out, splits=["test"])


def test_stem_without_slakh_class_names_the_stem_and_the_way_out(tmp_path):
    import yaml

    root, _ = make_slakh(tmp_path)
    meta_path = root / "test" / "Track00003" / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["stems"]["S00"]["program_num"] = 105  # Banjo: no Slakh class
    meta_path.write_text(yaml.safe_dump(meta))
    with pytest.raises(InputError, match="stem S00: program 105 has no Slakh class.*program_mapping=full"):
        slakh.load_track(slakh.list_tracks(root)["test"][0])
    rec, = slakh.load_track(slakh.list_tracks(root, program_mapping="full")["test"][0])
    assert 105 in {n.program for n in rec.sequence.notes}


def test_malformed_yaml_is_named_and_skip_bad_converts_the_others(tmp_path, capsys):
    root, expected = make_slakh(tmp_path, baby=True)
    bad = root / "Track00002" / "metadata.yaml"
    bad.write_text("stems:\n  S00: {program_num: 0\n  audio_rendered: [true\n")
    assert cli_main(["prepare-data", "slakh", "--root", str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: malformed YAML" in err
    assert not list((tmp_path / "out").glob("*.tfrecord"))

    out = tmp_path / "out2"
    assert cli_main(["prepare-data", "slakh", "--root", str(root), "--out", str(out), "--skip-bad"]) == 0
    assert sorted(converted(out, "train")) == ["Track00001", "Track00003"]
    skipped = json.loads((out / "train.skipped.json").read_text())["skipped"]
    assert [(s["id"], s["path"]) for s in skipped] == [("Track00002", str(bad))]


def test_stem_midi_that_is_not_midi_is_named(tmp_path, capsys):
    root, _ = make_slakh(tmp_path)
    bad = root / "test" / "Track00003" / "MIDI" / "S02.mid"
    bad.write_bytes(b"fLaC\x00\x00\x00\x22 not midi")
    assert cli_main(["prepare-data", "slakh", "--root", str(root), "--out", str(tmp_path / "o"), "--splits",
                     "test"]) == 2
    assert f"{bad}: not a MIDI file" in capsys.readouterr().err


def test_missing_mix_is_named(tmp_path):
    root, _ = make_slakh(tmp_path)
    (root / "test" / "Track00003" / "mix.flac").unlink()
    with pytest.raises(InputError) as info:
        slakh.load_track(slakh.list_tracks(root)["test"][0])
    assert info.value.path == str(root / "test" / "Track00003" / "mix.flac")


def test_track_without_usable_stems_is_an_error(tmp_path):
    root, _ = make_slakh(tmp_path)
    track = root / "test" / "Track00003"
    for f in (track / "stems").iterdir():  # MIDI present but no stem audio: nothing was rendered
        f.unlink()
    with pytest.raises(InputError, match="no usable stems") as info:
        slakh.load_track(slakh.list_tracks(root)["test"][0])
    assert info.value.path == str(track)


def test_not_a_slakh_tree(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(InputError, match="not a Slakh2100 tree"):
        slakh.list_tracks(tmp_path)
