"""`mt3 prepare-data pairs`: folders of real (audio, MIDI) pairs -> records, splits, forced programs, drums, bad pairs.

The pairs are excerpts of real music21 scores (four wind/bass programs, a string quartet) written as standard MIDI
files, with audio rendered from the same notes (additive synthesis, 16 kHz wav and 44.1 kHz flac), plus a drum part
written by pretty_midi on channel 10. Expected values come from the notes written, never from the converter.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from data_fixtures import sub_sequence, synth
from native_fixtures import DRUM_NOTES, converted, write_audio
from native_fixtures import synth as synth_notes
from native_fixtures import write_midi as write_instruments

from mt3.cli import main as cli_main
from mt3.converters import pairs
from mt3.data import records
from mt3.midi_io import write_midi

SECONDS = 3.0


def _notes(ns) -> list[tuple]:
    return sorted((n.pitch, round(n.start_time, 3), round(n.end_time, 3), n.program, n.is_drum) for n in ns.notes)


def write_pair(folder, stem: str, ns, *, fmt: str = "wav", midi_ext: str = ".mid", audio_seconds=None):
    """MIDI of `ns` + audio rendered from its notes; returns the notes as written (pitch, on, off, program, drum)."""
    midi_path = folder / f"{stem}{midi_ext}"
    midi_path.parent.mkdir(parents=True, exist_ok=True)
    write_midi(ns, midi_path)
    audio = synth(ns, audio_seconds)
    if fmt == "flac":  # a different format and rate: the converter resamples to 16 kHz
        import soxr
        write_audio(folder / f"{stem}.flac", soxr.resample(audio, 16000, 44100), 44100, "FLAC")
    else:
        write_audio(folder / f"{stem}.wav", audio, 16000, "WAV")
    return _notes(ns)


@pytest.fixture(scope="module")
def excerpts(music21_sequences):
    """Six 3-second excerpts of real pieces (chorale: programs 73/71/70/32; quartet: 40/41/42)."""
    chorale, quartet = music21_sequences["bach_chorale"], music21_sequences["string_quartet"]
    return [sub_sequence(chorale, 3.0 * i, 3.0 * i + SECONDS) for i in range(3)] + \
           [sub_sequence(quartet, 3.0 * i, 3.0 * i + SECONDS) for i in range(3)]


def _run(root, out, *extra):
    return cli_main(["prepare-data", "pairs", "--root", str(root), "--out", str(out), *extra])


def test_split_folders_keep_programs_and_drums_from_the_midi(tmp_path, excerpts, capsys):
    root = tmp_path / "recordings"
    expected = {
        ("train", "take1"): write_pair(root / "train", "take1", excerpts[0]),
        ("train", "set2/take2"): write_pair(root / "train", "set2/take2", excerpts[3], fmt="flac", midi_ext=".midi"),
        ("validation", "take3"): write_pair(root / "validation", "take3", excerpts[1]),
        ("test", "take4"): write_pair(root / "test", "take4", excerpts[4], fmt="flac"),
    }
    # a song with a drum kit: pretty_midi puts is_drum tracks on channel 10, which note_seq reads back as drums
    write_instruments(root / "train" / "groove.mid", [{"program": 33, "notes": [n for n in DRUM_NOTES[:2]]},
                                                      {"program": 0, "is_drum": True, "notes": DRUM_NOTES}])
    write_audio(root / "train" / "groove.wav", synth_notes(DRUM_NOTES, 3.0, 22050, drums=True), 22050, "WAV")
    out = tmp_path / "data" / "mine"
    assert _run(root, out) == 0
    assert (f"tasks: mine_notes_ties_vb1_{{train,validation,test}} and the mixture mine_notes_ties_vb1_eval, "
            f"registered when the data dir ($MT3_DATA_DIR or gin DATA_DIR) is {tmp_path / 'data'}") in \
        capsys.readouterr().out
    for (split, track_id), notes in expected.items():
        record = converted(out, split)[track_id]
        assert record.dataset == "pairs" and record.sample_rate == 16000
        assert abs(len(record.audio) - (max(n[2] for n in notes) + 0.5) * 16000) <= 2, "16 kHz mono, full length"
        assert _notes(record.sequence) == notes, "every note with its MIDI track's program"
    assert set(converted(out, "train")) == {"take1", "set2/take2", "groove"}, "ids are paths inside the split folder"
    groove = converted(out, "train")["groove"].sequence
    drums = sorted((n.pitch, round(n.start_time, 3)) for n in groove.notes if n.is_drum)
    assert drums == sorted((n.pitch, n.start) for n in DRUM_NOTES)
    assert {n.program for n in groove.notes if not n.is_drum} == {33}
    manifest = records.read_manifest(out, "train")
    assert manifest["dataset"] == "pairs" and manifest["forced_program"] is None
    assert manifest["num_drum_notes"] == len(DRUM_NOTES) and {"73", "40", "33"} <= set(manifest["programs"])


def test_without_split_folders_each_pair_goes_where_a_hash_of_its_path_says(tmp_path, excerpts):
    root = tmp_path / "flat"
    stems = [f"piece{i:02d}" for i in range(14)] + ["live/a", "live/b"]
    for i, stem in enumerate(stems):
        write_pair(root, stem, excerpts[i % len(excerpts)])

    def expected_split(stem):  # the documented rule: sha256 of the relative path without extension, 80/10/10
        u = int.from_bytes(hashlib.sha256(stem.encode()).digest()[:8], "big") / 2**64
        return "train" if u < 0.8 else "validation" if u < 0.9 else "test"

    listing = pairs.list_tracks(root)
    assert {s: sorted(p.id for p in v) for s, v in listing.items() if v} == \
        {s: sorted(t for t in stems if expected_split(t) == s) for s in {expected_split(t) for t in stems}}
    assert len({expected_split(t) for t in stems}) >= 2, "the fixture's stems spread over several splits"
    write_pair(root, "added_later", excerpts[0])
    again = pairs.list_tracks(root)
    assert all(expected_split(p.id) == s for s, v in again.items() for p in v), "adding a pair moves no other"
    out = tmp_path / "flatset"
    assert _run(root, out) == 0
    for split in ("train", "validation", "test"):
        wanted = sorted(p.id for p in again[split])
        assert sorted(converted(out, split)) == wanted if wanted else not records.split_is_complete(out, split)


@pytest.mark.parametrize("option,program,is_drum", [("program=41", 41, False), ("program=drums", 0, True)])
def test_option_program_forces_one_instrument(tmp_path, excerpts, option, program, is_drum):
    root = tmp_path / "solo"
    written = write_pair(root / "train", "a", excerpts[0])
    out = tmp_path / "solo_set"
    assert _run(root, out, "--option", option) == 0
    notes = converted(out, "train")["a"].sequence.notes
    assert {(n.program, n.is_drum, n.instrument) for n in notes} == {(program, is_drum, 0)}
    assert sorted((n.pitch, round(n.start_time, 3)) for n in notes) == sorted((n[0], n[1]) for n in written)
    assert records.read_manifest(out, "train")["forced_program"] == ("drums" if is_drum else program)


def test_resume_with_another_forced_program_is_refused(tmp_path, excerpts, capsys):
    root = tmp_path / "solo"
    write_pair(root / "train", "a", excerpts[0])
    out = tmp_path / "solo_set"
    assert _run(root, out, "--option", "program=41") == 0
    assert _run(root, out) == 2
    assert "forced_program=41" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["128", "violin", "-1"])
def test_bad_program_option_is_one_line(tmp_path, excerpts, capsys, value):
    root = tmp_path / "solo"
    write_pair(root / "train", "a", excerpts[0])
    assert _run(root, tmp_path / "x", "--option", f"program={value}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"program={value}" in err and "0-127" in err


@pytest.mark.parametrize("name", ["my-set", "9lives", "local", "maestrov3", "mega"])
def test_out_name_must_name_tasks(tmp_path, excerpts, capsys, name):
    root = tmp_path / "solo"
    write_pair(root / "train", "a", excerpts[0])
    assert _run(root, tmp_path / name) == 2
    err = capsys.readouterr().err
    assert name in err and err.count("\n") == 1
    assert not (tmp_path / name).exists()


def test_files_outside_split_folders_are_refused(tmp_path, excerpts, capsys):
    root = tmp_path / "mixed"
    write_pair(root / "train", "a", excerpts[0])
    write_pair(root, "stray", excerpts[1])
    assert _run(root, tmp_path / "mine") == 2
    err = capsys.readouterr().err
    assert "outside the split folders" in err and "stray" in err


def _bad(kind, root, excerpts):
    """Breaks one pair of root/train and returns (the file the error must name, words it must contain)."""
    folder = root / "train"
    if kind == "audio without midi":
        write_pair(folder, "bad", excerpts[1])
        (folder / "bad.mid").unlink()
        return folder / "bad.wav", "no MIDI file beside it"
    if kind == "midi without audio":
        write_pair(folder, "bad", excerpts[1])
        (folder / "bad.wav").unlink()
        return folder / "bad.mid", "no audio file beside it"
    if kind == "midi longer than audio":
        write_pair(folder, "bad", excerpts[1], audio_seconds=0.5)
        return folder / "bad.wav", "notes end at"
    if kind == "unreadable audio":
        write_pair(folder, "bad", excerpts[1])
        (folder / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
        return folder / "bad.wav", "unreadable, corrupt or unsupported audio"
    if kind == "unreadable midi":
        write_pair(folder, "bad", excerpts[1])
        (folder / "bad.mid").write_bytes(b"this is not a midi file")
        return folder / "bad.mid", "not a MIDI file"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["audio without midi", "midi without audio", "midi longer than audio",
                                  "unreadable audio", "unreadable midi"])
def test_each_bad_pair_is_one_line_and_skip_bad_converts_the_rest(tmp_path, excerpts, capsys, kind):
    root = tmp_path / "recordings"
    good = write_pair(root / "train", "good", excerpts[0])
    path, words = _bad(kind, root, excerpts)
    assert _run(root, tmp_path / "mine") == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar: the one error line
    assert err.startswith("mt3 prepare-data: error: ") and str(path) in err and words in err
    assert not records.split_is_complete(tmp_path / "mine", "train")

    out = tmp_path / "mine2"
    assert _run(root, out, "--skip-bad") == 0
    assert f"skipped (train) bad: {path}: " in capsys.readouterr().out
    assert list(converted(out, "train")) == ["good"] and _notes(converted(out, "train")["good"].sequence) == good
    skipped = json.loads((out / "train.skipped.json").read_text())["skipped"]
    assert [(s["id"], s["path"]) for s in skipped] == [("bad", str(path))]


def test_an_empty_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no music here")
    assert _run(tmp_path / "empty", tmp_path / "mine") == 2
    assert "no audio or MIDI files found" in capsys.readouterr().err


def test_a_prepared_folder_registers_mt3s_tasks_and_they_read_its_records(tmp_path, excerpts, monkeypatch):
    import seqio

    from mt3 import datasets, tasks

    root = tmp_path / "recordings"
    for split, stems in (("train", ["a", "b"]), ("validation", ["c"]), ("test", ["d"])):
        for i, stem in enumerate(stems):
            write_pair(root / split, stem, excerpts[i + (2 if split != "train" else 0)])
    data_dir = tmp_path / "data"
    assert _run(root, data_dir / "my_band") == 0
    datasets_dir = data_dir / "slakh_copy"  # another converter's output is not a pairs dataset: never registered
    assert _run(root, datasets_dir) == 0
    for manifest in datasets_dir.glob("*.manifest.json"):
        manifest.write_text(manifest.read_text().replace('"dataset": "pairs"', '"dataset": "slakh"'))

    assert [c.name for c in datasets.discover_prepared(data_dir)] == ["my_band"]
    try:
        _check_registered_tasks(tasks.register_prepared_datasets(data_dir), data_dir, monkeypatch)
    finally:  # other tests see the registry as mt3.tasks left it
        for name in [n for n in seqio.TaskRegistry.names() if n.startswith("my_band_")]:
            seqio.TaskRegistry.remove(name)
        seqio.MixtureRegistry.remove("my_band_notes_ties_vb1_eval")
        tasks._PREPARED.pop("my_band", None)


def _check_registered_tasks(registered, data_dir, monkeypatch):
    import seqio

    from mt3 import datasets, tasks

    assert registered == ["my_band_notes_ties_vb1"]
    assert tasks.register_prepared_datasets(data_dir) == [], "registering again is a no-op"
    for name in ("my_band_notes_ties_vb1_train", "my_band_notes_ties_vb1_validation", "my_band_notes_ties_vb1_test"):
        assert name in seqio.TaskRegistry.names()
    assert "my_band_notes_ties_vb1_eval" in seqio.MixtureRegistry.names()
    assert not any(n.startswith("slakh_copy") for n in seqio.TaskRegistry.names())

    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(data_dir))
    train = seqio.get_mixture_or_task("my_band_notes_ties_vb1_train")
    ex = next(train.get_dataset({"inputs": 256, "targets": 1024}, split="train", shuffle=False).as_numpy_iterator())
    assert ex["inputs"].shape[1] == 128 and ex["targets"].size > 2, "128-sample audio frames and note tokens of a pair"
    test = seqio.get_mixture_or_task("my_band_notes_ties_vb1_test")
    ids = {x["id"].decode() for x in test.get_dataset({"inputs": 256, "targets": 1024}, split="eval",
                                                      shuffle=False).as_numpy_iterator()}
    assert ids == {"d"}, "the test task reads the test folder's pair"
