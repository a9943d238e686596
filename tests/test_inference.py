"""Tests for mt3.inference and `mt3 transcribe`: cached == uncached decoding on a trained checkpoint, stitching across
segment boundaries, batching with static shapes, robustness to any token output, multitrack MIDI, the CLI.

`build_tiny_model` (also used by test_evaluation, test_server and test_browser) writes a tiny prepared dataset from a
real music21 chorale (references parsed from MIDI files, audio synthesised from the notes) and trains a tiny model on it
through mt3.training.train's gin API for a couple of hundred steps: enough to emit real notes, so metrics are not all
zero.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil

import numpy as np
import pytest
from helpers import CHECKPOINT_PERIOD, TRAIN_STEPS, TinyModel, build_tiny_model, random_inference_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mt3 import inference, midi_io, model_loading, note_sequences, vocabularies
from mt3.data import track_tokens
from mt3.errors import InputError
from mt3.training import checkpoints


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyModel:
    return build_tiny_model(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_im(tiny) -> inference.InferenceModel:
    return model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)


# ---------------------------------------------------------------------------------------------------------------------
# decoding


def test_loaded_model_matches_model_dir(tiny, tiny_im):
    assert tiny_im.info["step"] == TRAIN_STEPS
    assert tiny_im.input_frames == 256 and tiny_im.spec.include_ties
    assert tiny_im.batch_size == 4 and tiny_im.config.max_decode_len == 192  # gin bindings applied
    assert tiny_im.model.module.config.emb_dim == 64  # rebuilt from config.gin
    assert checkpoints.complete_steps(tiny.model_dir) == [CHECKPOINT_PERIOD, TRAIN_STEPS]
    with pytest.raises(InputError, match="no checkpoint at step 7"):
        model_loading.restore_params(tiny.model_dir, tiny_im.model, 7)
    with pytest.raises(InputError, match="no config.gin"):
        model_loading.load_inference_model(tiny.root)


def test_cached_decoding_equals_uncached_on_checkpoint(tiny, tiny_im):
    from mt3.audio import load_audio
    from mt3.models import decoding

    segments = tiny_im.segment_audio(load_audio(tiny.wav(3))).frames[:2]
    module = tiny_im.model.module
    cached = decoding.decode(module, tiny_im.params, segments, max_decode_len=96)
    uncached = decoding.decode_uncached(module, tiny_im.params, segments, max_decode_len=96)
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
    tokens = [tiny_im.ids_to_tokens(row) for row in np.asarray(cached)]
    assert all(len(t) > 5 for t in tokens)  # the trained model emits real events


def test_batches_share_one_compiled_shape_and_match_single_files(tiny, tiny_im):
    from mt3.audio import load_audio

    long_audio, short_audio = load_audio(tiny.wav(3)), load_audio(tiny.wav(4))[: 16000 * 3]
    together = tiny_im.transcribe_many([long_audio, short_audio], progress=False)
    alone = [tiny_im.transcribe(long_audio), tiny_im.transcribe(short_audio)]
    assert [r.num_segments for r in together] == [3, 2]  # 4.1 s and 3 s of audio in 2.048 s segments
    for a, b in zip(together, alone, strict=True):
        assert midi_io.notes_to_dicts(a.ns) == midi_io.notes_to_dicts(b.ns)
        assert (a.invalid_events, a.dropped_events) == (b.invalid_events, b.dropped_events)
    assert together[0].ns.notes, "the trained model should transcribe some notes"


def test_compacting_decoder_gives_the_fixed_shape_decoders_tokens_on_real_audio(tiny, tiny_im):
    """Today's fixed-shape loop (all rows, a max_decode_len cache) vs the default compacting decoder, on the
    trained model's real audio: identical tokens; the fixed-shape loop keeps one compiled shape for 3- and 2-row
    batches."""
    from mt3.audio import load_audio

    fixed = model_loading.load_inference_model(tiny.model_dir,
                                               gin_bindings=[*tiny.bindings, "COMPACT_DECODING = False"])
    assert tiny_im.config.compact_decoding and not fixed.config.compact_decoding
    frames = [f for i in (3, 4) for f in tiny_im.segment_audio(load_audio(tiny.wav(i))).frames]
    compact_tokens = tiny_im.decode_segments(frames)
    fixed_tokens = fixed.decode_segments(frames)
    assert len(frames) == 6 and len({len(t) for t in fixed_tokens}) >= 2  # rows end at different steps
    for a, b in zip(compact_tokens, fixed_tokens, strict=True):
        np.testing.assert_array_equal(a, b)
    long_audio, short_audio = load_audio(tiny.wav(3)), load_audio(tiny.wav(4))[: 16000 * 3]
    fixed.transcribe_many([long_audio, short_audio], progress=False)
    assert fixed._predict._cache_size() == 1  # 5 segments, 3 and 2 per call (batch 4), one compiled shape


def test_program_options_constrain_and_two_pass_uses_the_first_pass_set(tiny):
    """A user program set leaves no other program in the notes: 'move' (default) keeps every note of the free decode
    and says where each program's notes went, 'mask' decodes with the mask; two-pass decodes with pass 1's set."""
    from mt3 import program_consistency
    from mt3.audio import load_audio

    audio = [load_audio(tiny.wav(i)) for i in (3, 4)]
    plain = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
    first = plain.transcribe_many(audio, progress=False)
    found = [program_consistency.program_note_counts(r.ns) for r in first]
    assert all(found)
    user = model_loading.load_inference_model(tiny.model_dir, gin_bindings=[*tiny.bindings, "PROGRAMS = [40]"])
    for r, free, counts in zip(user.transcribe_many(audio, progress=False), first, found, strict=True):
        assert set(program_consistency.program_note_counts(r.ns)) == {40}
        assert len(r.ns.notes) == len(free.ns.notes)  # moved, none dropped
        report = r.program_report
        assert report.moved == sorted((p, 40, n) for p, n in counts.items() if p != 40) and not report.masked
        assert report.kept == {40: sum(counts.values())}
        assert report.lines()[0] == f"--programs 40 (move): {sum(counts.values()):,} pitched notes decoded"
    masked = model_loading.load_inference_model(tiny.model_dir, gin_bindings=[*tiny.bindings, "PROGRAMS = [40]",
                                                                              "PROGRAMS_MODE = 'mask'"])
    for r in masked.transcribe_many(audio, progress=False):
        assert set(program_consistency.program_note_counts(r.ns)) <= {40} and r.program_report.masked
        assert "(mask): the decoder could name no other program" in r.program_report.lines()[0]
    assert plain.transcribe_many(audio, progress=False)[0].program_report is None  # no option, no report
    two = model_loading.load_inference_model(tiny.model_dir, gin_bindings=[
        *tiny.bindings, "TWO_PASS_PROGRAMS = True", "MIN_PROGRAM_SHARE = 0.3", "REASSIGN_PROGRAMS = 'family'"])
    for r, pass1 in zip(two.transcribe_many(audio, progress=False), first, strict=True):
        allowed = program_consistency.estimate_program_set(pass1.ns, 0.3)  # reassignment stays inside it too
        assert set(program_consistency.program_note_counts(r.ns)) <= set(allowed)
    with pytest.raises(ValueError, match="greedy"):
        inference.InferenceConfig(programs=(0,), programs_mode="mask", temperature=1.0)
    inference.InferenceConfig(programs=(0,), temperature=1.0)  # moving notes afterwards works after sampling too
    with pytest.raises(ValueError, match="programs_mode"):
        inference.InferenceConfig(programs=(0,), programs_mode="drop")
    with pytest.raises(ValueError, match="programs"):
        inference.InferenceConfig(programs=(0, 200))


def test_sampling_changes_output_and_greedy_is_deterministic():
    greedy = random_inference_model()
    hot = random_inference_model(temperature=5.0, seed=3)
    frames = np.random.default_rng(0).normal(scale=0.1, size=(2, 256, 128)).astype(np.float32)
    first = greedy.predict_batch(frames)[0]
    np.testing.assert_array_equal(first, greedy.predict_batch(frames)[0])
    assert (first != hot.predict_batch(frames)[0]).any()
    assert (hot.predict_batch(frames)[0] != hot.predict_batch(frames)[0]).any()  # a fresh rng per batch
    with pytest.raises(ValueError, match="temperature"):
        inference.InferenceConfig(temperature=-1.0)


# ---------------------------------------------------------------------------------------------------------------------
# stitching


def _segment_token_rows(ns, num_frames: int, segment_frames: int, codec) -> tuple[list[np.ndarray], list[float]]:
    frame_times = track_tokens.audio_frame_times(num_frames * note_sequences.HOP_WIDTH - 1)
    track = track_tokens.tokenize_note_sequence(ns, frame_times, codec, note_sequences.NoteEncodingWithTiesSpec)
    rows, starts = [], []
    for start in range(0, len(frame_times), segment_frames):
        targets = track_tokens.segment_targets(track, start, start + segment_frames, codec, True)
        ids = np.zeros(300, np.int32)  # model output layout: ids, EOS, then PAD
        ids[: len(targets)] = vocabularies.encode_tokens(targets)
        ids[len(targets)] = vocabularies.EOS_ID
        rows.append(ids)
        starts.append(float(frame_times[start]))
    return rows, starts


def test_note_crossing_segment_boundaries_comes_out_as_one_note():
    import note_seq

    im = random_inference_model()
    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    ns.notes.add(pitch=60, velocity=100, start_time=0.5, end_time=5.5, program=40)  # spans 3 segments of 2.048 s
    ns.notes.add(pitch=64, velocity=100, start_time=1.0, end_time=1.5, program=40)
    ns.notes.add(pitch=36, velocity=100, start_time=3.0, end_time=3.01, is_drum=True)
    ns.notes.add(pitch=43, velocity=100, start_time=1.9, end_time=2.3, program=33)  # crosses one boundary
    ns.total_time = 5.5
    rows, starts = _segment_token_rows(ns, 800, im.input_frames, im.codec)
    assert len(rows) == 4
    tie_token = im.codec.encode_event(note_sequences.event_codec.Event("tie", 0))
    # every segment opens with a tie section
    assert all(tie_token in vocabularies.decode_tokens(r, im.codec.num_classes) for r in rows)
    result = im.stitch([im.ids_to_tokens(r) for r in rows], starts, 6.4)
    assert (result.invalid_events, result.dropped_events) == (0, 0)
    got = sorted((n.pitch, n.program, n.is_drum, round(n.start_time, 2), round(n.end_time, 2)) for n in result.ns.notes)
    assert got == [(36, 0, True, 3.0, 3.01), (43, 33, False, 1.9, 2.3), (60, 40, False, 0.5, 5.5),
                   (64, 40, False, 1.0, 1.5)]
    # control: drop pitch 60 from the second segment's tie section and the note ends at that segment's start
    pitch60 = im.codec.encode_event(note_sequences.event_codec.Event("pitch", 60))
    second = np.asarray(im.ids_to_tokens(rows[1]))
    tie_at = int(np.argmax(second == tie_token))
    untied = np.concatenate([[t for t in second[:tie_at] if t != pitch60], second[tie_at:]]).astype(np.int32)
    broken = im.stitch([im.ids_to_tokens(rows[0]), untied, *(im.ids_to_tokens(r) for r in rows[2:])], starts, 6.4)
    assert [(round(n.start_time, 2), round(n.end_time, 2)) for n in broken.ns.notes if n.pitch == 60] == [(0.5, 2.04)]
    assert broken.invalid_events > 0  # the later offset of the no-longer-sounding note is counted, not fatal


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.integers(0, 1535), max_size=60), min_size=1, max_size=4))
def test_any_model_output_stitches_without_raising(rows):
    im = _stitch_model()
    tokens = [im.ids_to_tokens(np.asarray(r, np.int32)) for r in rows]
    starts = [i * im.segment_seconds for i in range(len(rows))]
    result = im.stitch(tokens, starts, len(rows) * im.segment_seconds)
    assert result.invalid_events >= 0 and result.dropped_events >= 0
    for n in result.ns.notes:
        assert n.end_time > n.start_time and 0 <= n.pitch <= 127


@functools.cache
def _stitch_model() -> inference.InferenceModel:
    return random_inference_model()


# ---------------------------------------------------------------------------------------------------------------------
# outputs


def test_midi_is_multitrack_with_drums_and_round_trips_exactly():
    import note_seq
    import pretty_midi

    im = random_inference_model()
    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    for pitch, program, drum, start in ((60, 0, False, 0.13), (48, 33, False, 0.5), (38, 0, True, 0.77),
                                        (72, 73, False, 1.21)):
        ns.notes.add(pitch=pitch, velocity=90, start_time=start, end_time=start + 0.37, program=program, is_drum=drum)
    ns.total_time = 2.0
    rows, starts = _segment_token_rows(ns, 300, im.input_frames, im.codec)
    result = im.stitch([im.ids_to_tokens(r) for r in rows], starts, 2.4)
    pm = pretty_midi.PrettyMIDI(__import__("io").BytesIO(midi_io.midi_bytes(result.ns)))
    tracks = sorted((i.program, i.is_drum, len(i.notes)) for i in pm.instruments if i.notes)
    assert tracks == [(0, False, 1), (0, True, 1), (33, False, 1), (73, False, 1)]
    back = midi_io.midi_round_trip(result.ns)
    key = lambda n: (n.pitch, n.is_drum)  # noqa: E731
    for a, b in zip(sorted(result.ns.notes, key=key), sorted(back.notes, key=key), strict=True):
        assert abs(a.start_time - b.start_time) < 1e-9 and abs(a.end_time - b.end_time) < 1e-9
        assert (a.program, a.is_drum) == (b.program, b.is_drum)


# ---------------------------------------------------------------------------------------------------------------------
# `mt3 transcribe`


def test_transcribe_cli_many_files_one_corrupt(tiny, tmp_path, capsys):
    from mt3 import cli

    audio_dir = tmp_path / "in"
    audio_dir.mkdir()
    shutil.copy(tiny.wav(3), audio_dir / "first.wav")
    shutil.copy(tiny.wav(4), audio_dir / "second.wav")
    (audio_dir / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt this is not audio")
    out = tmp_path / "out"
    common = ["-o", str(out), "--checkpoint", str(tiny.model_dir), "--no-progress", *tiny.gin_flags]
    assert cli.main(["transcribe", str(audio_dir), "--png", "--json", *common]) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "broken.wav" in error_lines[0] and "first.wav" not in error_lines[0]
    assert re.search(r"model loaded in [\d.]+ s", err) and re.search(r"[\d.]+ s of it compiling", err)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{ext}" for stem in ("first", "second") for ext in (".mid", ".png", ".notes.json"))
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(str(out / "first.mid"))
    notes = json.loads((out / "first.notes.json").read_text())
    assert len(notes) == sum(len(i.notes) for i in midi.instruments) > 0
    assert set(notes[0]) == {"onset", "offset", "pitch", "velocity", "program", "is_drum", "confidence"}
    assert all(0 <= n["onset"] < n["offset"] and 0 <= n["pitch"] <= 127 for n in notes)
    assert {n["program"] for n in notes if not n["is_drum"]} == {i.program for i in midi.instruments
                                                                 if i.notes and not i.is_drum}
    assert (out / "first.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # refuses to overwrite; --overwrite replaces; --csv writes a CSV with the same notes
    before = (out / "first.mid").stat().st_mtime_ns
    assert cli.main(["transcribe", str(audio_dir / "first.wav"), *common]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "first.mid").stat().st_mtime_ns == before
    assert cli.main(["transcribe", str(audio_dir / "first.wav"), "--overwrite", "--csv", *common]) == 0
    rows = (out / "first.notes.csv").read_text().splitlines()
    assert rows[0] == "onset,offset,pitch,velocity,program,is_drum,confidence" and len(rows) == len(notes) + 1
    assert json.loads((out / "first.notes.json").read_text()) == notes  # same model, same audio, same notes


def test_transcribe_without_checkpoint_or_inputs_fails_cleanly(tmp_path, capsys, monkeypatch):
    from mt3 import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.wav").write_bytes(b"")
    assert cli.main(["transcribe", "a.wav", "missing.flac", "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert "a.wav: file is empty" in err and "missing.flac: file not found" in err
    assert not (tmp_path / "out").exists()
    from mt3.audio import write_wav

    write_wav(tmp_path / "b.wav", np.sin(np.arange(16000) / 10).astype(np.float32))
    from mt3 import pretrained

    monkeypatch.setattr(pretrained, "DEFAULT_MODEL_NAME", "no_such_model")  # as if no model were bundled
    assert cli.main(["transcribe", "b.wav", "-o", "out"]) == 2
    assert "runs/local_tiny" in capsys.readouterr().err  # the quickstart fallback does not exist here either


def test_decode_length_defaults_to_the_models_training_target_length(tiny):
    """No MAX_DECODE_LENGTH binding: decoding stops at the target length the model trained with (256 here), not at a
    global default; a binding still wins."""
    own = model_loading.load_inference_model(tiny.model_dir, gin_bindings=[f"DATA_DIR = '{tiny.data_dir}'"])
    assert own.config.max_decode_len == 256
    bound = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
    assert bound.config.max_decode_len == 192


def test_transcribe_programs_flag_is_checked_before_anything_loads(tmp_path, capsys):
    from mt3 import cli
    from mt3.commands import transcribe

    assert cli.main(["transcribe", str(tmp_path / "a.wav"), "-o", str(tmp_path / "out"), "--programs", "0,piano"]) == 2
    assert "--programs: '0,piano' is not a comma-separated list" in capsys.readouterr().err
    args = argparse.Namespace(programs="33,0", two_pass_programs=True, reassign_programs="family")
    assert transcribe.consistency_bindings(args) == [
        "inference.InferenceConfig.programs = [0, 33]", "inference.InferenceConfig.two_pass_programs = True",
        "inference.InferenceConfig.reassign_programs = 'family'"]


def test_input_is_presented_at_the_level_the_model_trained_at(tiny):
    """The local recipes set INPUT_PEAK_DB = -1 (their mixes' peak): a file 30 dB quieter decodes to exactly the
    tokens of the file itself. Bound to None (MT3's behaviour, and any model without the macro), audio is as given."""
    from mt3 import audio

    samples = audio.load_audio(tiny.wav(0))
    im = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
    assert im.config.input_peak_db == -1.0
    quiet = (samples * np.float32(10 ** (-30 / 20))).astype(np.float32)
    peak = float(np.abs(im.segment_audio(quiet).frames).max())
    assert abs(20 * np.log10(peak) - (-1.0)) < 1e-3
    loud, soft = im.transcribe_many([samples, quiet], progress=False)
    assert len(loud.ns.notes) > 0
    assert [(n.pitch, n.start_time, n.end_time, n.program) for n in soft.ns.notes] == \
        [(n.pitch, n.start_time, n.end_time, n.program) for n in loud.ns.notes]
    as_given = model_loading.load_inference_model(
        tiny.model_dir, gin_bindings=[*tiny.bindings, "inference.InferenceConfig.input_peak_db = None"])
    assert as_given.config.input_peak_db is None
    np.testing.assert_array_equal(as_given.segment_audio(quiet).frames.reshape(-1)[: len(quiet)], quiet)
    # near-silence (below -80 dBFS) is never blown up to full scale
    hiss = np.full(16000, 1e-5, np.float32)
    np.testing.assert_array_equal(audio.normalize_peak(hiss, -1.0), hiss)
    with pytest.raises(ValueError, match="input_peak_db"):
        inference.InferenceConfig(input_peak_db=3.0)
