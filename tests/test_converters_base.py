"""The `mt3 prepare-data` driver (atomic splits, resume, --skip-bad, workers, shards) and the shared helpers."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import soundfile as sf
from native_fixtures import converted, leftover_files, make_maestro

from mt3.cli import main as cli_main
from mt3.converters import base
from mt3.data import records
from mt3.errors import InputError

# --------------------------------------------------------------------------------------------------------------------
# helpers


def _pedal_sequence():
    import note_seq

    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    ns.notes.add(pitch=60, start_time=0.5, end_time=1.0, velocity=80)
    ns.notes.add(pitch=60, start_time=1.5, end_time=1.6, velocity=80)  # re-strike while the pedal holds the first
    ns.notes.add(pitch=64, start_time=0.6, end_time=0.7, velocity=80)
    ns.notes.add(pitch=67, start_time=3.0, end_time=3.5, velocity=80)  # after the release: untouched
    ns.control_changes.add(time=0.2, control_number=64, control_value=127)
    ns.control_changes.add(time=2.0, control_number=64, control_value=0)
    ns.control_changes.add(time=0.3, control_number=67, control_value=100)
    ns.pitch_bends.add(time=0.4, bend=100)
    ns.total_time = 3.5
    return ns


def test_apply_sustain_and_clear():
    ns = _pedal_sequence()
    out = base.apply_sustain_and_clear(ns)
    ends = {(n.pitch, round(n.start_time, 3)): round(n.end_time, 3) for n in out.notes}
    # held notes end at the release (2.0), or at the next onset of the same pitch (1.5), whichever comes first
    assert ends == {(60, 0.5): 1.5, (60, 1.5): 2.0, (64, 0.6): 2.0, (67, 3.0): 3.5}
    assert not out.control_changes and not out.pitch_bends
    assert len(ns.control_changes) == 3, "the input is not modified"
    assert base.count_notes(out) == (4, 0)


def test_mix_audio_pads_shorter_signals():
    mixed = base.mix_audio([np.ones(5, np.float32), np.full(3, 2.0, np.float32)])
    assert mixed.dtype == np.float32 and mixed.tolist() == [3, 3, 3, 1, 1]
    with pytest.raises(ValueError):
        base.mix_audio([])


@pytest.mark.parametrize("rate,channels", [(48000, 2), (44100, 1), (16000, 2)])
def test_load_audio_resamples_to_16k_mono(tmp_path, rate, channels):
    t = np.arange(int(1.5 * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "a.wav"
    sf.write(str(path), np.stack([tone] * channels, axis=1), rate, subtype="PCM_16")
    audio = base.load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 24000) <= 1
    spectrum = np.abs(np.fft.rfft(audio[2000:-2000]))
    assert abs(np.argmax(spectrum) * 16000 / len(audio[2000:-2000]) - 440) < 2, "still a 440 Hz tone"


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(InputError) as info:
        base.load_audio(tmp_path / "missing.flac")
    assert info.value.path == str(tmp_path / "missing.flac")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(InputError) as info:
        base.load_audio(bad)
    assert info.value.path == str(bad)


def test_default_num_shards():
    assert [base.default_num_shards(n) for n in (0, 1, 64, 65, 962)] == [1, 1, 1, 2, 16]


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(InputError, match="unknown dataset"):
        base.prepare_dataset("maestro2", tmp_path, tmp_path / "out")
    with pytest.raises(InputError, match="dataset root not found"):
        base.prepare_dataset("maestro", tmp_path / "nope", tmp_path / "out")


# --------------------------------------------------------------------------------------------------------------------
# the driver on a MAESTRO fixture with a second validation performance


def _add_validation_row(root, expected, *, audio_ok: bool):
    """Appends a second validation performance whose audio is corrupt (or valid) after the first one."""
    src = expected[1].id
    name = "2018/MIDI-Unprocessed_Recital4_MID--AUDIO_11_R1_2018_wav--2"
    shutil.copy(root / f"{src}.midi", root / f"{name}.midi")
    if audio_ok:
        shutil.copy(root / f"{src}.wav", root / f"{name}.wav")
    else:
        (root / f"{name}.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEdata broken")
    with open(root / "maestro-v3.0.0.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not any(r["midi_filename"] == f"{name}.midi" for r in rows):
        rows.append(dict(rows[1], midi_filename=f"{name}.midi", audio_filename=f"{name}.wav"))
        with open(root / "maestro-v3.0.0.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return name, root / f"{name}.wav"


def test_failure_mid_split_leaves_nothing_finished_looking_then_rerun_resumes(tmp_path, capsys):
    root, expected = make_maestro(tmp_path)
    name, bad = _add_validation_row(root, expected, audio_ok=False)
    out = tmp_path / "out"
    args = ["prepare-data", "maestro", "--root", str(root), "--out", str(out)]

    assert cli_main(args) == 2
    assert str(bad) in capsys.readouterr().err
    # train finished before validation failed; validation had written one record when it failed, and left nothing
    files = leftover_files(out)
    assert files["manifest"] == ["train.manifest.json"]
    assert files["tfrecord"] == records.read_manifest(out, "train")["shards"]
    assert files["tmp"] == [] and not [p for p in out.iterdir() if p.name.startswith(".")]
    train_mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    _add_validation_row(root, expected, audio_ok=True)  # fix the file, run again
    assert cli_main(args) == 0
    stdout = capsys.readouterr().out
    assert "already complete" in stdout.splitlines()[3]  # the summary row of train
    assert {p: out.joinpath(p).stat().st_mtime_ns for p in train_mtimes} == train_mtimes, "train not rewritten"
    assert sorted(converted(out, "validation")) == sorted([expected[1].id, name])
    assert set(converted(out, "test")) == {expected[2].id}
    assert leftover_files(out)["tmp"] == []

    # a third run has nothing to do
    result = base.prepare_dataset("maestro", root, out)
    assert all(m["resumed"] for m in result.values()) and set(result) == {"train", "validation", "test"}


def test_skip_bad_lists_the_bad_track_and_a_later_run_keeps_the_list(tmp_path):
    root, expected = make_maestro(tmp_path)
    name, bad = _add_validation_row(root, expected, audio_ok=False)
    out = tmp_path / "out"
    result = base.prepare_dataset("maestro", root, out, skip_bad=True, splits=["validation"])
    assert [s["id"] for s in result["validation"]["skipped"]] == [name]
    assert result["validation"]["skipped"][0]["path"] == str(bad)
    assert result["validation"]["num_tracks"] == 1
    again = base.prepare_dataset("maestro", root, out, skip_bad=True, splits=["validation"])
    assert again["validation"]["resumed"] and again["validation"]["skipped"] == result["validation"]["skipped"]


def test_workers_and_shards_give_the_same_bytes(tmp_path):
    root, expected = make_maestro(tmp_path)
    _add_validation_row(root, expected, audio_ok=True)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    base.prepare_dataset("maestro", root, serial, num_shards=2, splits=["validation"])
    base.prepare_dataset("maestro", root, parallel, num_shards=2, splits=["validation"], workers=2)
    shards = records.read_manifest(serial, "validation")["shards"]
    assert shards == ["validation-00000-of-00002.tfrecord", "validation-00001-of-00002.tfrecord"]
    for shard in shards:
        assert (serial / shard).read_bytes() == (parallel / shard).read_bytes()
    # round-robin: one performance per shard
    assert [len(list(records.read_records([str(serial / s)]))) for s in shards] == [1, 1]


# --------------------------------------------------------------------------------------------------------------------
# labels that run past the audio (issue #17): a truncated download is an error naming the file, or skipped and counted


def _truncate_audio(root, seconds: float = 0.3) -> int:
    """Cuts every audio file of a native tree to its first `seconds` (same format), as an interrupted copy would."""
    count = 0
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in (".wav", ".flac"):
            data, rate = sf.read(path, always_2d=True)
            info = sf.info(path)
            sf.write(path, data[: int(seconds * rate)], rate, format=info.format, subtype=info.subtype)
            count += 1
    return count


@pytest.mark.parametrize("dataset", ["maestro", "slakh", "cerberus4"])
def test_labels_past_the_audio_are_refused_or_skipped(tmp_path, capsys, dataset):
    from native_fixtures import make_slakh

    root = make_maestro(tmp_path)[0] if dataset == "maestro" else make_slakh(tmp_path)[0]
    assert _truncate_audio(root) > 0
    code = cli_main(["prepare-data", dataset, "--root", str(root), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1, err
    assert "notes end at" in err and "the audio holds 0.3 s" in err and str(root) in err
    assert not list((tmp_path / "out").glob("*.manifest.json"))

    out = tmp_path / "out_skip"
    assert cli_main(["prepare-data", dataset, "--root", str(root), "--out", str(out), "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    skipped = [line for line in printed.splitlines() if line.startswith("skipped (")]
    assert skipped and all("notes end at" in line for line in skipped)
    for manifest in out.glob("*.manifest.json"):  # what remains holds no track whose labels outrun its audio
        split = manifest.name.split(".")[0]
        for record in records.read_records(records.shard_paths(out, split)):
            assert max((n.end_time for n in record.sequence.notes), default=0) <= len(record.audio) / 16000 + 1.0


def test_labels_within_the_tolerance_are_kept():
    import note_seq

    ns = note_seq.NoteSequence()
    ns.notes.add(pitch=60, start_time=0.0, end_time=2.9, velocity=80)
    record = records.TrackRecord(id="t", audio=np.zeros(2 * 16000, np.float32), sequence=ns, dataset="x")
    assert base.labels_past_audio(None, [record]) is None  # 0.9 s of release past 2 s of audio
    ns.notes[0].end_time = 3.2
    assert "notes end at 3.2 s but the audio holds 2.0 s" in base.labels_past_audio(None, [record])[1]
