"""MusicNet converter on a miniature copy of the original release: train_/test_ folders, 44.1 kHz float WAVs and label
csvs whose times are sample indices and whose instruments are 1-based GM codes."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf

from mt3.converters import musicnet
from mt3.data.records import ShardWriter, read_records, shard_paths
from mt3.errors import InputError

RATE = 44100
HEADER = ["start_time", "end_time", "instrument", "note", "start_beat", "end_beat", "note_value"]

# (start_s, end_s, 1-based GM code, MIDI pitch): piano, violin and cello lines of a short "recording"
NOTES = [
    (0.10, 0.60, 1, 60), (0.10, 0.95, 43, 48), (0.55, 1.20, 41, 76), (0.70, 1.10, 1, 64),
    (1.25, 1.90, 41, 74), (1.30, 1.80, 1, 67), (1.00, 1.95, 43, 43),
]
SECONDS = 2.5
# official folder -> ids: 1727 train, 1733 MT3 validation, 1759 official test (MT3 train), 1729 MT3 test
TRACKS = {"train": ["1727", "1733"], "test": ["1759", "1729"]}


def _tones(notes, seconds, rate):
    t = np.arange(int(seconds * rate)) / rate
    audio = np.zeros_like(t)
    for start, end, _, pitch in notes:
        on = (t >= start) & (t < end)
        audio[on] += 0.2 * np.sin(2 * np.pi * 440 * 2 ** ((pitch - 69) / 12) * t[on])
    return (audio / max(1.0, np.abs(audio).max())).astype(np.float32)


def write_track(root, folder, track_id, notes=NOTES, seconds=SECONDS, rows=None, subtype="FLOAT"):
    (root / f"{folder}_data").mkdir(parents=True, exist_ok=True)
    (root / f"{folder}_labels").mkdir(parents=True, exist_ok=True)
    sf.write(root / f"{folder}_data" / f"{track_id}.wav", _tones(notes, seconds, RATE), RATE, subtype=subtype)
    if rows is None:
        rows = [[round(s * RATE), round(e * RATE), code, pitch, 4 * s, 0.5, "Quarter"] for s, e, code, pitch in notes]
    with open(root / f"{folder}_labels" / f"{track_id}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def musicnet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("musicnet")
    for folder, ids in TRACKS.items():
        for track_id in ids:
            write_track(root, folder, track_id, subtype="FLOAT" if track_id != "1759" else "PCM_16")
    return root


def test_splits_pool_official_folders_and_use_mt3_ids(musicnet_root):
    splits = musicnet.list_tracks(musicnet_root)
    assert {k: [s.id for s in v] for k, v in splits.items()} == {
        "train": ["1727", "1759"], "validation": ["1733"], "test": ["1729"]}
    assert len(musicnet.VALIDATION_IDS) == len(musicnet.TEST_IDS) == 15
    assert not musicnet.VALIDATION_IDS & musicnet.TEST_IDS


def test_parent_folder_is_accepted(tmp_path):
    """The tar extracted without --strip leaves the release in musicnet/."""
    write_track(tmp_path / "musicnet", "train", "2611")
    assert [s.id for s in musicnet.list_tracks(tmp_path)["validation"]] == ["2611"]


@pytest.mark.parametrize("track_id", ["1727", "1759"])  # float32 and int16 WAVs
def test_load_track_converts_units_programs_and_audio(musicnet_root, track_id):
    source = next(s for v in musicnet.list_tracks(musicnet_root).values() for s in v if s.id == track_id)
    [record] = musicnet.load_track(source)
    assert record.id == track_id and record.dataset == "musicnet" and record.sample_rate == 16000
    assert record.audio.dtype == np.float32 and record.audio.ndim == 1
    assert abs(len(record.audio) - round(SECONDS * RATE * 16000 / RATE)) <= 1
    notes = sorted(record.sequence.notes, key=lambda n: (n.start_time, n.pitch))
    expected = sorted(NOTES, key=lambda n: (n[0], n[3]))
    assert len(notes) == len(expected)
    for note, (start, end, code, pitch) in zip(notes, expected):
        assert note.pitch == pitch and note.program == code - 1
        assert abs(note.start_time - start) < 1e-3 and abs(note.end_time - end) < 1e-3
        assert note.velocity > 0 and not note.is_drum
    # one instrument index per program, consistent across notes
    pairs = {(n.program, n.instrument) for n in notes}
    assert len(pairs) == len({p for p, _ in pairs}) == len({i for _, i in pairs}) == 3
    assert record.sequence.total_time == pytest.approx(max(e for _, e, _, _ in NOTES), abs=1e-3)


def test_audio_matches_resampled_tones(musicnet_root):
    """The 16 kHz audio is the native tone resampled, not noise or a wrong-rate copy."""
    source = musicnet.list_tracks(musicnet_root)["test"][0]
    [record] = musicnet.load_track(source)
    t = np.arange(len(record.audio)) / 16000
    expected = _tones(NOTES, len(record.audio) / 16000, 16000)[: len(t)]
    core = slice(1600, len(t) - 1600)
    assert np.corrcoef(record.audio[core], expected[core])[0, 1] > 0.95


def test_records_round_trip(musicnet_root, tmp_path):
    splits = musicnet.list_tracks(musicnet_root)
    with ShardWriter(tmp_path, "train", musicnet.NAME, num_shards=2) as writer:
        for source in splits["train"]:
            for record in musicnet.load_track(source):
                writer.write(record)
    back = {r.id: r for r in read_records(shard_paths(tmp_path, "train"))}
    assert sorted(back) == ["1727", "1759"]
    for source in splits["train"]:
        [original] = musicnet.load_track(source)
        np.testing.assert_array_equal(back[source.id].audio, original.audio)
        assert back[source.id].sequence == original.sequence


@pytest.mark.parametrize(
    "rows, header, expect",
    [
        ([[4410, 8820, 1, 60, 0, 1, "Quarter"], [4410, "abc", 1, 62, 0, 1, "Quarter"]], HEADER, "row 3"),
        ([[8820, 4410, 1, 60, 0, 1, "Quarter"]], HEADER, "row 2: end_time"),
        ([[4410, 8820, 0, 60, 0, 1, "Quarter"]], HEADER, "instrument"),
        ([[4410, 8820, 1, 60.5, 0, 1, "Quarter"]], HEADER, "note"),
        ([[4410, 8820, 1, 0, 1, "Quarter"]], [h for h in HEADER if h != "note"], "missing column"),
        ([], HEADER, "no notes"),
    ],
)
def test_malformed_csv_names_file_and_row(tmp_path, rows, header, expect):
    write_track(tmp_path, "train", "1727", rows=rows)
    path = tmp_path / "train_labels" / "1727.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    with pytest.raises(InputError) as err:
        musicnet.load_track(musicnet.list_tracks(tmp_path)["train"][0])
    assert str(path) in str(err.value) and expect in str(err.value)


def test_label_times_beyond_audio_are_rejected(tmp_path):
    """Times at the wrong rate (here 48 kHz samples of a 4x longer piece) run past the audio."""
    rows = [[round(s * 4 * 48000), round(e * 4 * 48000), c, p, 0, 1, "Quarter"] for s, e, c, p in NOTES]
    write_track(tmp_path, "train", "1727", rows=rows)
    with pytest.raises(InputError, match="1727.csv.*wrong unit or sample rate"):
        musicnet.load_track(musicnet.list_tracks(tmp_path)["train"][0])


def test_missing_audio_or_labels_and_bad_root(tmp_path):
    write_track(tmp_path, "train", "1727")
    write_track(tmp_path, "test", "1759")
    (tmp_path / "train_data" / "1727.wav").unlink()
    (tmp_path / "test_labels" / "1759.csv").unlink()
    by_id = {s.id: s for v in musicnet.list_tracks(tmp_path).values() for s in v}
    with pytest.raises(InputError, match=r"train_data/1727\.wav: audio file not found"):
        musicnet.load_track(by_id["1727"])
    with pytest.raises(InputError, match=r"test_labels/1759\.csv: label file not found"):
        musicnet.load_track(by_id["1759"])
    with pytest.raises(InputError, match="not a MusicNet root"):
        musicnet.list_tracks(tmp_path / "train_data")


def test_prepare_data_cli_end_to_end(musicnet_root, tmp_path, capsys):
    from mt3 import cli
    from mt3.data.records import read_manifest

    out = tmp_path / "prepared"
    assert cli.main(["prepare-data", "musicnet", "--root", str(musicnet_root), "--out", str(out)]) == 0
    expected = {"train": ["1727", "1759"], "validation": ["1733"], "test": ["1729"]}
    for split, ids in expected.items():
        manifest = read_manifest(out, split)
        assert sorted(t["id"] for t in manifest["tracks"]) == ids
        assert manifest["num_notes"] == len(ids) * len(NOTES)
        assert manifest["programs"] == {str(c - 1): len(ids) * sum(n[2] == c for n in NOTES) for c in (1, 41, 43)}
        assert sorted(r.id for r in read_records(shard_paths(out, split))) == ids

    # one broken label file: the run fails naming it and leaves no finished-looking split; --skip-bad goes on
    bad_root = tmp_path / "bad"
    write_track(bad_root, "train", "1727")
    bad_rows = [[4410, 8820, 1, 60, 0, 1, "Quarter"], [8820, "x", 1, 60, 1, 1, "Half"]]
    write_track(bad_root, "train", "1752", rows=bad_rows)
    bad_out = tmp_path / "bad_out"
    capsys.readouterr()
    assert cli.main(["prepare-data", "musicnet", "--root", str(bad_root), "--out", str(bad_out)]) == 2
    err = capsys.readouterr().err
    assert "mt3 prepare-data: error:" in err and str(bad_root / "train_labels" / "1752.csv") in err and "row 3" in err
    assert not (bad_out / "train.manifest.json").exists()
    assert cli.main(["prepare-data", "musicnet", "--root", str(bad_root), "--out", str(bad_out), "--skip-bad"]) == 0
    assert [t["id"] for t in read_manifest(bad_out, "train")["tracks"]] == ["1727"]
    assert "1752.csv" in capsys.readouterr().out
