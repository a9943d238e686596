"""`mt3 score REF.mid EST.mid [--json]` on real MIDI files written from music21 scores."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import note_seq
import pytest

from mt3 import cli
from mt3.midi_io import write_midi

HEADLINE = ("onset", "onset_offset", "multi_instrument", "drum_onset", "frame")


def _run(capsys, *argv):
    code = cli.main(["score", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _check_unit_or_null(result: dict):
    for prefix in HEADLINE:
        for name in ("precision", "recall", "f1"):
            value = result[f"{prefix}_{name}"]
            assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0), (prefix, name, value)


def test_json_output(music21_sequences, music21_midi_files, tmp_path):
    ref_path = music21_midi_files["bach_chorale"]
    est = copy.deepcopy(music21_sequences["bach_chorale"])
    for n in est.notes:
        if n.program == 70:
            n.program = 0  # bassoon heard as piano
    est.notes.add(pitch=38, start_time=1.0, end_time=1.1, velocity=90, is_drum=True, instrument=9)
    est_path = tmp_path / "est.mid"
    write_midi(est, est_path)

    proc = subprocess.run([sys.executable, "-m", "mt3.cli", "score", str(ref_path), str(est_path), "--json"],
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    _check_unit_or_null(result)
    assert result["onset_f1"] == pytest.approx(1.0)
    assert result["multi_instrument_f1"] < result["onset_offset_f1"]
    assert result["drum_onset_f1"] == 0.0  # an estimated drum hit with no reference drums
    classes = result["instrument_classes"]
    assert set(classes) == {"Piano", "Bass", "Reed", "Pipe", "Drums"}
    assert classes["Pipe"]["onset_offset_f1"] == pytest.approx(1.0)
    assert classes["Drums"]["onset_offset_f1"] is None


def test_table_output(music21_midi_files, capsys):
    path = music21_midi_files["string_quartet"]
    code, out, _ = _run(capsys, path, path)
    assert code == 0
    assert "Multi-instrument (full)" in out and "Strings" in out
    onset_row = next(line for line in out.splitlines() if line.startswith("Onset "))
    assert onset_row.split()[-3:] == ["1.0000"] * 3
    drum_row = next(line for line in out.splitlines() if line.startswith("Drum onset"))
    assert drum_row.split()[-3:] == ["-"] * 3


def test_empty_estimate_scores_zero(music21_midi_files, tmp_path, capsys):
    empty = tmp_path / "empty.mid"
    write_midi(note_seq.NoteSequence(), empty)
    code, out, _ = _run(capsys, music21_midi_files["piano_piece"], empty, "--json")
    assert code == 0
    result = json.loads(out)
    _check_unit_or_null(result)
    assert result["est_notes"] == 0
    assert result["onset_f1"] == result["onset_offset_f1"] == result["multi_instrument_f1"] == 0.0
    assert result["frame_f1"] == 0.0


def test_sustain_is_applied_to_both_files(tmp_path, capsys):
    pedalled = note_seq.NoteSequence()
    pedalled.notes.add(pitch=60, start_time=0.0, end_time=0.2, velocity=80)
    pedalled.control_changes.add(time=0.1, control_number=64, control_value=127)
    pedalled.control_changes.add(time=2.0, control_number=64, control_value=0)
    pedalled.total_time = 2.0
    held = note_seq.NoteSequence()
    held.notes.add(pitch=60, start_time=0.0, end_time=2.0, velocity=80)
    held.total_time = 2.0
    write_midi(pedalled, tmp_path / "pedalled.mid")
    write_midi(held, tmp_path / "held.mid")
    for ref, est in (("pedalled", "held"), ("held", "pedalled")):
        code, out, _ = _run(capsys, tmp_path / f"{ref}.mid", tmp_path / f"{est}.mid", "--json")
        assert code == 0 and json.loads(out)["onset_offset_f1"] == pytest.approx(1.0)


@pytest.mark.parametrize("problem", ["missing", "not_midi", "empty_ref"])
def test_bad_input_exits_2_naming_the_file(music21_midi_files, tmp_path, capsys, problem):
    good = music21_midi_files["bach_chorale"]
    bad = tmp_path / f"{problem}.mid"
    if problem == "not_midi":
        bad.write_text("this is not a MIDI file\n")
    elif problem == "empty_ref":
        write_midi(note_seq.NoteSequence(), bad)
    argv = (bad, good) if problem == "empty_ref" else (good, bad)
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and lines[0].startswith("mt3 score: error:")


def test_ref_against_itself_explains_the_frame_velocity_threshold(tmp_path, capsys):
    """Quiet reference notes (velocity <= 30) are inactive reference frames but active estimated ones: REF vs REF has
    onset F1 1 and frame F1 below 1, and the table says why next to the Frame row."""
    ns = note_seq.NoteSequence()
    for i, velocity in enumerate((100, 100, 20)):
        ns.notes.add(pitch=60 + i, start_time=i * 0.5, end_time=i * 0.5 + 0.4, velocity=velocity, program=0)
    path = tmp_path / "ref.mid"
    write_midi(ns, path)
    code, out, _ = _run(capsys, path, path)
    lines = out.splitlines()
    frame = next(i for i, line in enumerate(lines) if line.startswith("Frame "))
    assert code == 0 and float(lines[frame].split()[-1]) < 0.9
    assert "above summed velocity 30" in lines[frame + 1] and "against itself" in lines[frame + 1]


def test_json_into_a_closed_pipe_stops_quietly(music21_midi_files):
    """`mt3 score --json A B | head -c 600` once ended in a BrokenPipe traceback."""
    from helpers import REPO, subprocess_env

    path = music21_midi_files["string_quartet"]
    proc = subprocess.Popen([sys.executable, "-m", "mt3.cli", "score", "--json", str(path), str(path)], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader goes away before anything is written (as `head` does after 600 bytes)
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 141  # 128 + SIGPIPE, as a shell reports a tool the closed pipe stopped


def test_reference_much_longer_than_the_estimate_warns(music21_midi_files, tmp_path, capsys):
    """A whole piece (60 s) scored against a 2 s excerpt's notes: a warning on stderr and in the JSON, and the scores
    are still those of what the files hold (every later reference note missed)."""
    from mt3.midi_io import load_midi

    reference = music21_midi_files["string_quartet"]
    excerpt = load_midi(reference)
    kept = [n for n in excerpt.notes if n.end_time <= 2.0]
    del excerpt.notes[:]
    excerpt.notes.extend(kept)
    write_midi(excerpt, tmp_path / "excerpt.mid")
    code, out, err = _run(capsys, reference, tmp_path / "excerpt.mid", "--json")
    result = json.loads(out)
    assert code == 0 and err.startswith(f"mt3 score: warning: {reference} lasts 60.0 s but the notes of ")
    assert result["warnings"] == [err.strip().removeprefix("mt3 score: warning: ")]
    assert result["onset_precision"] == pytest.approx(1.0) and result["onset_recall"] == pytest.approx(
        len(kept) / result["ref_notes"])
    code, out, err = _run(capsys, reference, reference, "--json")
    assert code == 0 and err == "" and json.loads(out)["warnings"] == []
