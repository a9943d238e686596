"""`mt3 transcribe`'s outputs and batch behaviour (issue 28) on the tiny trained model's transcriptions of rendered
audio: the MIDI file read back with mido/pretty_midi (one program per channel, no same-pitch overlap, named tracks,
velocity), the note filters and tempo, the summary line, --skip-existing, `-o -`, the progress bar's unit, the quiet
input warning against what the model really gives.

The model is loaded once per module; `transcription._load_model` is patched to return it so the command line runs
in-process without reloading (the flags still go through argparse and `cli.main`).
"""

from __future__ import annotations

import io
import json
import os
import re

import mido
import numpy as np
import pretty_midi
import pytest
import soundfile
from helpers import build_tiny_model
from test_midi_io import assert_playable

from mt3 import cli, model_loading, transcription
from mt3.audio import write_wav


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def model(tiny):
    return model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)


@pytest.fixture
def mt3_transcribe(model, monkeypatch, capsys):
    """Runs `mt3 transcribe ARGS` in-process with the loaded tiny model; returns (exit code, stderr lines)."""
    monkeypatch.setattr(transcription, "_load_model", lambda *a, **k: model)

    def run(*args: str, progress: bool = False) -> tuple[int, list[str]]:
        code = cli.main(["transcribe", *map(str, args), *([] if progress else ["--no-progress"])])
        return code, capsys.readouterr().err.splitlines()

    return run


SUMMARY = re.compile(r"^mt3 transcribe: done: (\d+) files? transcribed, (\d+) skipped \(outputs exist\), (\d+) failed; "
                     r"([\d,]+) notes?; [\d.]+ s of audio in [\d.]+ s$")


def summary(lines: list[str]) -> tuple[int, int, int, int]:
    match = SUMMARY.match(lines[-1])
    assert match, f"the last line is the summary: {lines[-1]!r}"
    return tuple(int(g.replace(",", "")) for g in match.groups())


def test_midi_file_is_playable_named_and_agrees_with_the_csv(tiny, mt3_transcribe, tmp_path):
    out = tmp_path / "out"
    code, lines = mt3_transcribe(tiny.wav(3), tiny.wav(4), "-o", out, "--csv", "--json")
    assert code == 0
    for i in (3, 4):
        data = (out / f"track{i}.mid").read_bytes()
        facts = assert_playable(data)
        pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
        assert pm.instruments and all(inst.name == ("Drums" if inst.is_drum else pretty_midi.program_to_instrument_name(
            inst.program)) for inst in pm.instruments)
        assert facts["names"][0] == "mt3 transcription"  # the same bytes as `mt3 eval` writes for this audio
        assert set(facts["velocities"]) == {100}, "one velocity bin: MT3's default velocity, not 127"
        rows = (out / f"track{i}.notes.csv").read_text().splitlines()[1:]
        midi_notes = sorted((round(n.start, 3), n.pitch) for inst in pm.instruments for n in inst.notes)
        csv_notes = sorted((round(float(r.split(",")[0]), 3), int(r.split(",")[2])) for r in rows)
        assert midi_notes == csv_notes, "the CSV holds what the MIDI file holds"
        notes = json.loads((out / f"track{i}.notes.json").read_text())
        assert {n["velocity"] for n in notes} == {100} and len(notes) == len(rows)
    done, skipped, failed, notes = summary(lines)
    assert (done, skipped, failed) == (2, 0, 0) and notes == sum(
        len((out / f"track{i}.notes.csv").read_text().splitlines()) - 1 for i in (3, 4))
    per_file = [line for line in lines if " -> " in line]
    assert len(per_file) == 2 and all(re.search(r"\(\d+ notes?; \d+ invalid, \d+ dropped events", line)
                                      for line in per_file)


def test_note_filters_and_tempo(tiny, mt3_transcribe, tmp_path):
    code, _ = mt3_transcribe(tiny.wav(3), "-o", tmp_path / "all", "--json")
    everything = json.loads((tmp_path / "all" / "track3.notes.json").read_text())
    pitches = sorted(n["pitch"] for n in everything)
    low, high = pitches[len(pitches) // 4], pitches[3 * len(pitches) // 4]
    lengths = sorted({round(n["offset"] - n["onset"], 3) for n in everything})
    limit_ms = lengths[len(lengths) // 2] * 1000.0
    low_name = pretty_midi.note_number_to_name(low)
    high_hz = f"{pretty_midi.note_number_to_hz(high) + 1.0:.1f}Hz"  # just above `high`: the highest pitch below it
    code, lines = mt3_transcribe(tiny.wav(3), "-o", tmp_path / "some", "--json", "--min-note-ms", limit_ms,
                                 "--min-pitch", low_name, "--max-pitch", high_hz, "--midi-tempo", "90")
    assert code == 0
    kept = json.loads((tmp_path / "some" / "track3.notes.json").read_text())
    expected = [n for n in everything if n["is_drum"] or (low <= n["pitch"] <= high
                                                          and (n["offset"] - n["onset"]) * 1000 >= limit_ms - 1e-3)]
    assert 0 < len(kept) < len(everything)
    assert [(n["onset"], n["pitch"]) for n in kept] == [(n["onset"], n["pitch"]) for n in expected]
    assert re.search(r"\d+ notes? shorter than --min-note-ms dropped", "\n".join(lines))
    midi = mido.MidiFile(tmp_path / "some" / "track3.mid")
    assert [m.tempo for t in midi.tracks for m in t if m.type == "set_tempo"] == [666666]
    pm = pretty_midi.PrettyMIDI(str(tmp_path / "some" / "track3.mid"))
    assert sorted((round(n.start, 2), n.pitch) for i in pm.instruments for n in i.notes) == sorted(
        (round(n["onset"], 2), n["pitch"]) for n in kept), "the tempo moves the beat grid, not the notes"


def test_pitch_flags_take_numbers_names_and_hertz(tiny, mt3_transcribe, tmp_path):
    import argparse

    from mt3.commands.transcribe import parse_pitch

    assert (parse_pitch("60"), parse_pitch("C4"), parse_pitch("F#3"), parse_pitch("Bb2")) == (60, 60, 54, 46)
    assert parse_pitch("440Hz") == pytest.approx(69.0)
    for bad in ("H2", "128", "5Hz", "-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="is (not a pitch|outside the MIDI pitch range)"):
            parse_pitch(bad)
    code, lines = mt3_transcribe(tiny.wav(3), "-o", tmp_path / "o", "--min-pitch", "C5", "--max-pitch", "C4")
    assert code == 2 and lines[-1] == ("mt3 transcribe: error: --min-note-ms/--min-pitch/--max-pitch: min_pitch (72) "
                                       "is above max_pitch (60): no note would remain")
    assert not (tmp_path / "o").exists()


def test_skip_existing_redoes_only_what_is_missing(tiny, mt3_transcribe, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name, i in (("a.wav", 3), ("b.wav", 4)):
        samples, rate = soundfile.read(tiny.wav(i), dtype="float32")
        soundfile.write(inputs / name, samples, rate)
    assert mt3_transcribe(inputs / "a.wav", "-o", out)[0] == 0
    first = (out / "a.mid").stat().st_mtime_ns
    code, lines = mt3_transcribe(inputs, "-o", out)
    assert code == 2 and summary(lines)[:3] == (1, 0, 1) and "--skip-existing to keep it" in lines[0]
    (out / "b.mid").unlink()
    code, lines = mt3_transcribe(inputs, "-o", out, "--skip-existing")
    assert code == 0 and summary(lines)[:3] == (1, 1, 0)
    assert [line for line in lines if " -> " in line][0].startswith(f"mt3 transcribe: {inputs / 'b.wav'} -> ")
    code, lines = mt3_transcribe(inputs, "-o", out, "--skip-existing", "--png")  # only the PNGs are missing
    assert code == 0 and summary(lines)[:3] == (2, 0, 0) and (out / "a.mid").stat().st_mtime_ns == first
    assert sorted(p.name for p in out.iterdir()) == ["a.mid", "a.png", "b.mid", "b.png"]
    code, lines = mt3_transcribe(inputs, "-o", out, "--skip-existing", "--png")
    assert code == 0 and summary(lines) == (0, 2, 0, 0) and not any("model loaded" in line for line in lines)
    with pytest.raises(SystemExit) as exited:
        mt3_transcribe(inputs, "-o", out, "--skip-existing", "--overwrite")
    assert exited.value.code == 2


def test_dash_output_writes_one_midi_to_stdout(tiny, model, monkeypatch, capsysbinary, tmp_path):
    monkeypatch.setattr(transcription, "_load_model", lambda *a, **k: model)
    assert cli.main(["transcribe", str(tiny.wav(3)), "-o", "-", "--no-progress"]) == 0
    captured = capsysbinary.readouterr()
    facts = assert_playable(captured.out)
    assert facts["tracks"] >= 1 and not os.path.exists("-")
    err = captured.err.decode().splitlines()
    assert f"mt3 transcribe: {tiny.wav(3)} -> stdout (" in "\n".join(err) and SUMMARY.match(err[-1])
    for args, problem in (([str(tiny.wav(3)), "--png"], "-o - writes only the MIDI file to stdout; --png need"),
                          ([str(tiny.wav(3)), str(tiny.wav(4))], "-o - writes the MIDI of one input to stdout; 2")):
        assert cli.main(["transcribe", *args, "-o", "-", "--no-progress"]) == 2
        captured = capsysbinary.readouterr()
        assert captured.out == b"" and problem in captured.err.decode()


def test_help_explains_events_pitch_bends_and_counts_seconds(tiny, mt3_transcribe, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["transcribe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "No pitch bends are written" in text and "--skip-existing" in text and "'-' writes the MIDI" in text
    assert text.count("invalid and dropped events") == 1 and "Invalid: an event that makes no sense" in text
    code, lines = mt3_transcribe(tiny.wav(4), "-o", tmp_path / "o", progress=True)
    bar = "\n".join(lines)
    assert code == 0 and re.search(r"\d+\.\d/\d+\.\d s of audio", bar) and "seg/s" not in bar


def test_quiet_input_warning_says_what_the_model_does(tiny, mt3_transcribe, tmp_path):
    """The tiny model's config sets INPUT_PEAK_DB = -1: at -60 dBFS it hears the file normalised (the same notes as at
    full level); at -84 dBFS, below the -80 dBFS noise floor it never normalises, no notes, as the line says."""
    samples, rate = soundfile.read(tiny.wav(3), dtype="float32")
    samples = samples / np.abs(samples).max()
    for db in (-60, -84):
        write_wav(tmp_path / f"at{-db}.wav", samples * np.float32(10 ** (db / 20)), rate, subtype="FLOAT")
    write_wav(tmp_path / "full.wav", samples, rate, subtype="FLOAT")
    code, lines = mt3_transcribe(tmp_path / "full.wav", tmp_path / "at60.wav", tmp_path / "at84.wav", "-o",
                                 tmp_path / "o", "--json")
    text = "\n".join(lines)
    assert code == 0
    assert f"{tmp_path / 'at60.wav'}: the audio is very quiet (peak -60 dBFS); the model hears it normalised" in text
    assert (f"{tmp_path / 'at84.wav'}: the audio is nearly silent (peak -84 dBFS, at or below the -80 dBFS this model "
            "takes for a noise floor and does not normalise), so expect no notes") in text
    notes = {name: json.loads((tmp_path / "o" / f"{name}.notes.json").read_text()) for name in ("full", "at60", "at84")}
    def without_confidence(rows):  # confidence is a float read off the decoder: equal notes, last digits may differ
        return [{k: v for k, v in row.items() if k != "confidence"} for row in rows]

    assert notes["full"] and without_confidence(notes["at60"]) == without_confidence(notes["full"])
    assert all(abs(a["confidence"] - b["confidence"]) < 0.01 for a, b in zip(notes["at60"], notes["full"], strict=True))
    assert notes["at84"] == []
