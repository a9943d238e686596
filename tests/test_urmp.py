"""URMP converter on a miniature copy of `URMP/Dataset`: piece folders named by number, title and part codes, 48 kHz
24-bit AuMix/AuSep WAVs, Notes_k files of `onset_s pitch_Hz duration_s` rows, plus the clutter real copies have
(Supplementary_Files/, macOS dot-files)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from mt3.converters import urmp
from mt3.data.records import ShardWriter, read_records, shard_paths
from mt3.errors import InputError

RATE = 48000
SECONDS = 2.0
# part notes as (onset_s, MIDI pitch + detuning in semitones, duration_s): performers are never exactly in tune
PART_NOTES = [
    [(0.10, 76 + 0.30, 0.40), (0.60, 74 - 0.40, 0.50), (1.20, 72 + 0.45, 0.60)],
    [(0.10, 69 - 0.20, 0.90), (1.05, 67 + 0.10, 0.80)],
    [(0.20, 62 + 0.00, 1.30)],
    [(0.00, 48 - 0.49, 1.90), (0.05, 36 + 0.2, 0.25)],
]
PIECES = {  # folder -> (split, GM programs by part as MT3 maps the folder's codes)
    "01_Jupiter_vn_vc": ("validation", [40, 42]),
    "03_Dance_fl_cl": ("train", [73, 71]),
    "15_Surprise_tpt_tpt_tbn": ("train", [56, 56, 57]),
    "24_Pirates_vn_vn_va_vc": ("validation", [40, 40, 41, 42]),
}


def _hz(pitch):
    return 440.0 * 2 ** ((pitch - 69) / 12)


def _tones(parts, seconds=SECONDS):
    t = np.arange(int(seconds * RATE)) / RATE
    audio = np.zeros_like(t)
    for notes in parts:
        for onset, pitch, duration in notes:
            on = (t >= onset) & (t < onset + duration)
            audio[on] += 0.15 * np.sin(2 * np.pi * _hz(pitch) * t[on])
    return audio / max(1.0, np.abs(audio).max())


def write_piece(root, folder, file_codes=None, seconds=SECONDS):
    """A piece folder as URMP ships it; `file_codes` overrides the codes used in per-part file names."""
    number, title, *codes = folder.split("_")
    piece = root / folder
    piece.mkdir(parents=True)
    parts = PART_NOTES[: len(codes)]
    sf.write(piece / f"AuMix_{folder}.wav", _tones(parts, seconds), RATE, subtype="PCM_24")
    for k, (code, notes) in enumerate(zip(file_codes or codes, parts), start=1):
        sf.write(piece / f"AuSep_{k}_{code}_{number}_{title}.wav", _tones([notes], seconds), RATE, subtype="PCM_24")
        rows = [f"{onset:.7f}\t{_hz(pitch):.3f}\t{duration:.7f}\n" for onset, pitch, duration in notes]
        (piece / f"Notes_{k}_{code}_{number}_{title}.txt").write_text("".join(rows) + "\n")
        (piece / f"F0s_{k}_{code}_{number}_{title}.txt").write_text("0.000\t0.000\n")
    (piece / f"._Notes_1_{codes[0]}_{number}_{title}.txt").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    return piece


@pytest.fixture(scope="module")
def urmp_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("URMP") / "Dataset"
    for folder in PIECES:
        write_piece(root, folder, file_codes=["tpt", "tpt", "tpt"] if folder.startswith("15_") else None)
    (root / "Supplementary_Files").mkdir()
    (root / "Supplementary_Files" / "readme.txt").write_text("scores and videos")
    (root / ".DS_Store").write_bytes(b"\x00")
    return root


def test_splits_use_mt3_validation_pieces(urmp_root):
    splits = urmp.list_tracks(urmp_root)
    assert {k: [s.id for s in v] for k, v in splits.items()} == {
        split: sorted(f for f, (s, _) in PIECES.items() if s == split) for split in ("train", "validation")}
    assert urmp.list_tracks(urmp_root.parent) == splits  # URMP/ works as well as URMP/Dataset/
    assert len(urmp.VALIDATION_PIECES) == 9


@pytest.mark.parametrize("folder", list(PIECES))
def test_load_track_parts_programs_pitches(urmp_root, folder):
    source = next(s for v in urmp.list_tracks(urmp_root).values() for s in v if s.id == folder)
    [record] = urmp.load_track(source)
    assert record.id == folder and record.dataset == "urmp" and record.sample_rate == 16000
    assert record.audio.dtype == np.float32 and record.audio.ndim == 1
    assert abs(len(record.audio) - round(SECONDS * 16000)) <= 1
    programs = PIECES[folder][1]
    expected = sorted((onset, onset + duration, round(pitch), k, programs[k])
                      for k, notes in enumerate(PART_NOTES[: len(programs)]) for onset, pitch, duration in notes)
    notes = sorted((n.start_time, n.end_time, n.pitch, n.instrument, n.program) for n in record.sequence.notes)
    assert len(notes) == len(expected)
    for got, want in zip(notes, expected):
        assert got[2:] == want[2:]
        assert abs(got[0] - want[0]) < 1e-3 and abs(got[1] - want[1]) < 1e-3
    assert all(n.velocity > 0 and not n.is_drum for n in record.sequence.notes)


def test_hz_to_midi():
    assert urmp.hz_to_midi(440.0) == 69 and urmp.hz_to_midi(261.626) == 60
    assert urmp.hz_to_midi(_hz(60.49)) == 60 and urmp.hz_to_midi(_hz(60.51)) == 61


def test_records_round_trip(urmp_root, tmp_path):
    sources = urmp.list_tracks(urmp_root)["validation"]
    originals = {r.id: r for s in sources for r in urmp.load_track(s)}
    with ShardWriter(tmp_path, "validation", urmp.NAME) as writer:
        for record in originals.values():
            writer.write(record)
    back = {r.id: r for r in read_records(shard_paths(tmp_path, "validation"))}
    assert sorted(back) == sorted(originals)
    for track_id, record in back.items():
        np.testing.assert_array_equal(record.audio, originals[track_id].audio)
        assert record.sequence == originals[track_id].sequence


@pytest.mark.parametrize("row", ["0.5\t440.0", "0.5 A4 0.2", "0.5 -440 0.2", "0.5 440 -0.2"])
def test_bad_notes_row_names_file_and_line(tmp_path, row):
    piece = write_piece(tmp_path, "03_Dance_fl_cl")
    path = piece / "Notes_2_cl_03_Dance.txt"
    path.write_text(path.read_text().rstrip("\n") + f"\n\n{row}\n")
    with pytest.raises(InputError) as err:
        urmp.load_track(urmp.list_tracks(tmp_path)["train"][0])
    assert str(path) in str(err.value) and "line 4" in str(err.value)


def test_unknown_code_missing_files_and_bad_root(tmp_path):
    bad = write_piece(tmp_path, "05_Entertainer_kb_cl")
    with pytest.raises(InputError, match=r"05_Entertainer_kb_cl: unknown instrument code.*kb"):
        urmp.load_track(urmp.list_tracks(tmp_path)["train"][0])
    bad.rename(tmp_path / "05_Entertainer_sax_cl")
    piece = tmp_path / "05_Entertainer_sax_cl"
    (piece / "AuMix_05_Entertainer_kb_cl.wav").unlink()
    with pytest.raises(InputError, match=r"AuMix_05_Entertainer_sax_cl\.wav: mixture audio not found"):
        urmp.load_track(urmp.list_tracks(tmp_path)["train"][0])
    (piece / "Notes_1_kb_05_Entertainer.txt").unlink()
    with pytest.raises(InputError, match=r"Notes_1_\*\.txt: part 1 notes file missing"):
        urmp.load_track(urmp.list_tracks(tmp_path)["train"][0])
    with pytest.raises(InputError, match="not a URMP root"):
        urmp.list_tracks(piece)


def test_notes_longer_than_audio_are_rejected(tmp_path):
    write_piece(tmp_path, "01_Jupiter_vn_vc", seconds=0.5)
    with pytest.raises(InputError, match=r"01_Jupiter_vn_vc: notes run to 1\.85 s"):
        urmp.load_track(urmp.list_tracks(tmp_path)["validation"][0])


def test_prepare_data_cli_end_to_end(urmp_root, tmp_path, capsys):
    from mt3 import cli
    from mt3.data.records import read_manifest

    out = tmp_path / "prepared"
    assert cli.main(["prepare-data", "urmp", "--root", str(urmp_root), "--out", str(out)]) == 0
    for split in ("train", "validation"):
        manifest = read_manifest(out, split)
        ids = sorted(f for f, (s, _) in PIECES.items() if s == split)
        assert sorted(t["id"] for t in manifest["tracks"]) == ids
        programs = {}
        for folder in ids:
            for k, program in enumerate(PIECES[folder][1]):
                programs[str(program)] = programs.get(str(program), 0) + len(PART_NOTES[k])
        assert manifest["programs"] == programs
        assert sorted(r.id for r in read_records(shard_paths(out, split))) == ids

    bad_root = tmp_path / "bad"
    write_piece(bad_root, "03_Dance_fl_cl")
    write_piece(bad_root, "05_Entertainer_kb_cl")
    bad_out = tmp_path / "bad_out"
    capsys.readouterr()
    assert cli.main(["prepare-data", "urmp", "--root", str(bad_root), "--out", str(bad_out)]) == 2
    err = capsys.readouterr().err
    assert "mt3 prepare-data: error:" in err and str(bad_root / "05_Entertainer_kb_cl") in err and "kb" in err
    assert not (bad_out / "train.manifest.json").exists()
    assert cli.main(["prepare-data", "urmp", "--root", str(bad_root), "--out", str(bad_out), "--skip-bad"]) == 0
    assert [t["id"] for t in read_manifest(bad_out, "train")["tracks"]] == ["03_Dance_fl_cl"]
    assert "05_Entertainer_kb_cl" in capsys.readouterr().out
