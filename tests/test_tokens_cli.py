"""`mt3 tokens`: a multi-track MIDI with drums, sustain pedal, overlapping notes and notes spanning many segments
survives segment-wise tokenization with ties (F1 = 1.0 against the input), and bad inputs exit 2 naming the file."""

from __future__ import annotations

import json

import mir_eval
import note_seq
import numpy as np
import pytest

from mt3 import cli
from mt3.midi_io import load_midi, write_midi


@pytest.fixture(scope="module")
def band_midi(music21_sequences, tmp_path_factory):
    """The Bach chorale (4 programs) plus piano with pedal, a long organ pad, overlapping notes and drums."""
    ns = note_seq.NoteSequence()
    ns.CopyFrom(music21_sequences["bach_chorale"])
    ns.tempos.add(time=0.0, qpm=120.0)
    add = lambda **kw: ns.notes.add(velocity=kw.pop("velocity", 90), **kw)
    for i in range(20):  # piano with pedal: notes released early, held by CC64 until the pedal lifts
        add(pitch=60 + i % 7, start_time=0.5 * i, end_time=0.5 * i + 0.1, program=0, instrument=4)
    for t, value in [(0.0, 127), (2.3, 0), (3.0, 127), (7.77, 0)]:
        ns.control_changes.add(time=t, control_number=64, control_value=value, instrument=4, program=0)
    add(pitch=48, start_time=0.25, end_time=17.0, program=19, instrument=5)  # organ pad over ~8 segments
    add(pitch=55, start_time=1.0, end_time=12.5, program=19, instrument=5)  # overlapping, other pitch, same program
    add(pitch=67, start_time=2.0, end_time=2.05, program=19, instrument=5)  # very short
    for i in range(40):
        add(pitch=(36, 38, 42)[i % 3], start_time=0.25 * i, end_time=0.25 * i + 0.1, is_drum=True, instrument=9,
            velocity=100)
    ns.total_time = max(n.end_time for n in ns.notes)
    path = tmp_path_factory.mktemp("tokens") / "band.mid"
    write_midi(ns, path)
    return path


def f1_scores(ref_ns, est_ns):
    """(drumless onset+offset F1, multi-instrument F1: per (program, is_drum) track, drums onset-only)."""
    def match(ref, est, offsets):
        if not ref or not est:
            return 0
        iv = lambda notes: np.array([[n.start_time, n.end_time] for n in notes])
        hz = lambda notes: np.array([440.0 * 2 ** ((n.pitch - 69) / 12) for n in notes])
        return len(mir_eval.transcription.match_notes(iv(ref), hz(ref), iv(est), hz(est),
                                                      offset_ratio=0.2 if offsets else None))

    f1 = lambda m, r, e: 2 * m / (r + e) if r + e else 1.0
    ref_nd = [n for n in ref_ns.notes if not n.is_drum]
    est_nd = [n for n in est_ns.notes if not n.is_drum]
    tracks = {(0 if n.is_drum else n.program, n.is_drum) for n in list(ref_ns.notes) + list(est_ns.notes)}
    select = lambda ns, p, d: [n for n in ns.notes if n.is_drum == d and (d or n.program == p)]
    matched = sum(match(select(ref_ns, p, d), select(est_ns, p, d), not d) for p, d in tracks)
    return f1(match(ref_nd, est_nd, True), len(ref_nd), len(est_nd)), f1(matched, len(ref_ns.notes),
                                                                          len(est_ns.notes))


def expected_segments(ref, seconds):
    """MT3 framing of the notes' duration + 0.1 s: 128-sample frames after padding by 128 - len % 128 samples."""
    samples = int(np.ceil((max(n.end_time for n in ref.notes) + 0.1) * 16000))
    frames = (samples + 128 - samples % 128) // 128
    return int(np.ceil(frames / round(seconds * 125)))


def run(capsys, *argv):
    code = cli.main(["tokens", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("seconds", [1.0, 2.048, 3.7, 10.0])
def test_mt3_vocab_reconstructs_the_input(band_midi, tmp_path, capsys, seconds):
    out_path = tmp_path / "out.mid"
    code, out, err = run(capsys, band_midi, "--vocab", "mt3", "--segment-seconds", seconds, "-o", out_path, "--json")
    assert code == 0, err
    counts = json.loads(out)
    assert counts["invalid_events"] == 0 and counts["dropped_events"] == 0
    ref = note_seq.apply_sustain_control_changes(load_midi(band_midi))
    assert counts["segments"] == expected_segments(ref, seconds)
    est = load_midi(out_path)
    assert counts["notes_in"] == len(ref.notes) and counts["notes_out"] == len(est.notes)
    assert {(n.program, n.is_drum) for n in est.notes} == {(0 if n.is_drum else n.program, n.is_drum)
                                                          for n in ref.notes}
    assert f1_scores(ref, est) == (1.0, 1.0)


def test_score_command_agrees(band_midi, tmp_path, capsys):
    out_path = tmp_path / "out.mid"
    assert run(capsys, band_midi, "-o", out_path)[0] == 0
    assert cli.main(["score", str(band_midi), str(out_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["onset_offset_f1"] == pytest.approx(1.0) and result["multi_instrument_f1"] == pytest.approx(1.0)


def test_text_output_and_ismir2021(band_midi, tmp_path, capsys):
    out_path = tmp_path / "piano.mid"
    code, out, _ = run(capsys, band_midi, "--vocab", "ismir2021", "-o", out_path)
    assert code == 0 and "invalid events" in out and str(out_path) in out
    est = load_midi(out_path)
    assert {n.program for n in est.notes if not n.is_drum} == {0}  # flat: no program tokens
    # 4.096 s segments by default for ismir2021
    ref = note_seq.apply_sustain_control_changes(load_midi(band_midi))
    assert f"in {expected_segments(ref, 4.096)} segments" in out


def test_bad_inputs_exit_2_naming_the_file(tmp_path, capsys):
    not_midi = tmp_path / "notes.mid"
    not_midi.write_text("not a midi file")
    empty = tmp_path / "empty.mid"
    write_midi(note_seq.NoteSequence(ticks_per_quarter=220), empty)
    for path in (tmp_path / "missing.mid", not_midi, empty):
        code, out, err = run(capsys, path, "-o", tmp_path / "out.mid")
        assert code == 2
        assert str(path) in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out.mid").exists()


def test_existing_output_is_refused_unless_overwrite(band_midi, tmp_path, capsys):
    out_path = tmp_path / "out.mid"
    out_path.write_bytes(b"someone's file")
    code, _, err = run(capsys, band_midi, "-o", out_path)
    assert code == 2 and err.strip() == f"mt3 tokens: error: {out_path}: output exists (pass --overwrite to replace it)"
    assert out_path.read_bytes() == b"someone's file"
    assert run(capsys, band_midi, "-o", out_path, "--overwrite")[0] == 0
    assert out_path.read_bytes()[:4] == b"MThd"
    code, _, err = run(capsys, band_midi, "-o", band_midi, "--overwrite")
    assert code == 2 and "would replace the input" in err
