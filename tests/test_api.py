"""Tests for the Python API (`mt3.load_model`, `Transcriber.transcribe[_many]`, `Transcription`) on the trained tiny
model of test_inference: a path and the same audio as an int16 / stereo / 44.1 kHz array give the same notes as
`mt3 transcribe` would, inputs share batches, silence gives zero notes, and every bad array is one clear ValueError
before any decoding. Also: `import mt3` stays free of numpy/JAX."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from helpers import build_tiny_model

from mt3 import api, audio, midi_io
from mt3.errors import InputError


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory)


@pytest.fixture(scope="session")
def transcriber(tiny):
    import mt3

    return mt3.load_model(tiny.model_dir, gin_bindings=tiny.bindings)


@pytest.fixture(scope="session")
def stereo_44k(tiny, tmp_path_factory):
    """Track 3 as a 44.1 kHz stereo int16 WAV (right channel quieter): path and the int16 samples soundfile reads."""
    mono = audio.load_audio(tiny.wav(3))
    up = audio.resample(mono, 16000, 44100)
    stereo = np.stack([up, 0.5 * up], axis=1)
    path = tmp_path_factory.mktemp("api_audio") / "stereo_44k.wav"
    soundfile.write(path, stereo, 44100, subtype="PCM_16")
    samples, rate = soundfile.read(path, dtype="int16")
    assert rate == 44100 and samples.shape == (len(up), 2) and samples.dtype == np.int16
    return path, samples


def test_import_mt3_is_cheap_and_exports_the_api():
    code = ("import sys, mt3; assert 'jax' not in sys.modules and 'numpy' not in sys.modules, 'import mt3'; "
            "from mt3 import load_model, Transcriber, Transcription, Note; "
            "assert 'jax' not in sys.modules and 'tensorflow' not in sys.modules, 'from mt3 import load_model'; "
            "assert {'load_model', 'Transcriber', 'Transcription', 'Note'} <= set(mt3.__all__) & set(dir(mt3))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    import mt3

    assert mt3.load_model is api.load_model and mt3.Transcription is api.Transcription
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mt3.nope  # noqa: B018


def test_path_matches_the_cli_pipeline(tiny, transcriber, tmp_path):
    result = transcriber.transcribe(tiny.wav(3))
    im = transcriber.inference_model
    reference = im.transcribe(audio.load_audio(tiny.wav(3)))  # what `mt3 transcribe` decodes for this file
    assert result.notes, "the trained tiny model transcribes notes"
    assert result.to_dicts() == midi_io.notes_to_dicts(midi_io.prepare_notes(reference.ns)[0])  # what the MIDI holds
    assert isinstance(result.notes[0], api.Note) and result.notes == tuple(sorted(result.notes, key=lambda n: (
        n.onset, n.pitch, n.program, n.is_drum)))
    assert result.source == str(tiny.wav(3)) and result.audio_seconds == pytest.approx(reference.audio_seconds)
    assert (result.invalid_events, result.dropped_events) == (reference.invalid_events, reference.dropped_events)
    assert result.ns is not None and len(result.ns.notes) == len(result.notes)
    programs = len({"drums" if n.is_drum else n.program for n in result.notes})
    assert repr(result) == (f"Transcription(source={str(tiny.wav(3))!r}, {len(result.notes)} notes, {programs} "
                            f"instruments, {result.audio_seconds:.2f} s of audio, {result.invalid_events} invalid "
                            "events)")
    assert repr(transcriber) == f"Transcriber(model_dir={str(tiny.model_dir.resolve())!r}, step={im.info['step']})"
    # write_midi writes the MIDI `mt3 transcribe` writes, and it reads back as the same notes
    written = result.write_midi(tmp_path / "out.mid")
    assert written.read_bytes() == midi_io.midi_bytes(reference.ns) == result.midi_bytes()
    back = midi_io.load_midi(written)
    assert sorted((n.pitch, n.program, n.is_drum) for n in back.notes) == sorted(
        (n.pitch, n.program, n.is_drum) for n in result.notes)


def test_int16_stereo_44k_arrays_equal_the_file(transcriber, stereo_44k):
    path, int16 = stereo_44k
    from_file = transcriber.transcribe(path)
    assert from_file.notes and from_file.audio_seconds == pytest.approx(len(int16) / 44100, abs=1e-3)
    as_float = int16.astype(np.float32) / 32768.0
    for samples, label in ((int16, "int16 (n, 2)"), (int16.T.copy(), "int16 (2, n)"), (as_float, "float32 (n, 2)"),
                           (as_float.T.astype(np.float64), "float64 (2, n)")):
        result = transcriber.transcribe(samples, sample_rate=44100)
        assert result.to_dicts() == from_file.to_dicts(), label
        assert result.source is None
    # control: the stereo mixdown matters (the left channel alone is a different input)
    left_only = transcriber.inference_model.segment_audio(audio.resample(as_float[:, 0], 44100, 16000)).frames
    mixed = transcriber.inference_model.segment_audio(audio.load_audio(path)).frames
    assert not np.allclose(left_only, mixed)


def test_int_dtypes_are_scaled_by_full_scale():
    wave = np.sin(np.arange(4000) / 7.0) * 0.5
    expected = api.prepare_array(wave.astype(np.float32), 16000, target_rate=16000)
    for dtype, scale in ((np.int16, 2 ** 15), (np.int32, 2 ** 31), (np.int8, 2 ** 7)):
        got = api.prepare_array(np.round(wave * scale).astype(dtype), 16000, target_rate=16000)
        np.testing.assert_allclose(got, expected, atol=max(1.0 / scale, 1e-7))  # float32 resolution for int32
    unsigned = api.prepare_array(np.round(wave * 128 + 128).astype(np.uint8), 16000, target_rate=16000)
    np.testing.assert_allclose(unsigned, expected, atol=1.0 / 128)
    resampled = api.prepare_array(wave.astype(np.float32), 8000, target_rate=16000)
    assert len(resampled) == 8000  # the same soxr resampler and length rule as files: ceil(n * 16000 / 8000)
    np.testing.assert_array_equal(resampled, audio.resample(wave.astype(np.float32), 8000, 16000))


@pytest.mark.parametrize("samples, rate, message", [
    (np.array([0.0, np.nan, 0.1, np.inf], np.float32), 16000, r"audio: contains 2 non-finite \(NaN/Inf\) samples"),
    (np.zeros(100, np.float32), None, "sample_rate is required"),
    (np.zeros(100, np.float32), 0, "sample_rate must be an integer"),
    (np.zeros(100, np.float32), 44100.5, "sample_rate must be an integer"),
    (np.zeros(100, np.int64), 16000, "unsupported sample dtype int64"),
    (np.zeros(100, bool), 16000, "unsupported sample dtype bool"),
    (np.full(100, 12000.0), 16000, "looks like integer PCM stored as float"),
    (np.zeros((100, 100), np.float32), 16000, r"cannot tell samples from channels in shape \(100, 100\)"),
    (np.zeros((20, 1000), np.float32), 16000, "cannot tell samples from channels"),
    (np.zeros((2, 3, 100), np.float32), 16000, "expected a 1-D .* got shape"),
    (np.zeros((0, 20), np.float32), 16000, "cannot tell samples from channels"),
    (np.zeros((2, 0), np.float32), 16000, "cannot tell samples from channels"),
])
def test_bad_arrays_are_refused_with_a_clear_message(samples, rate, message):
    with pytest.raises(ValueError, match=message):
        api.prepare_array(samples, rate, target_rate=16000)


class _NoDecoding:
    """Stands in for an InferenceModel: validation must fail before anything is decoded."""

    sample_rate = 16000

    def transcribe_many(self, *args, **kwargs):
        raise AssertionError("decoded despite bad input")


def test_transcriber_validates_every_input_before_decoding(tiny, tmp_path):
    t = api.Transcriber(_NoDecoding())
    good = np.zeros(1600, np.float32)
    with pytest.raises(ValueError, match=r"audio\[1\]: contains 10 non-finite"):
        t.transcribe_many([good, np.array([np.nan] * 10, np.float32)], 16000)
    with pytest.raises(ValueError, match="sample_rate is for arrays"):
        t.transcribe(tiny.wav(3), sample_rate=44100)
    with pytest.raises(ValueError, match="2 sample rates for 3 inputs"):
        t.transcribe_many([good, good, good], [16000, 16000])
    with pytest.raises(TypeError, match="takes a list"):
        t.transcribe_many(good, 16000)
    with pytest.raises(ValueError, match="audio: sample_rate is for arrays; an encoded file's header gives its rate"):
        t.transcribe(tiny.wav(3).read_bytes(), 16000)
    with open(tiny.wav(3)) as text_mode, pytest.raises(TypeError, match="gave str, not bytes; open it in binary"):
        t.transcribe(text_mode)
    with pytest.raises(InputError, match="^audio: unreadable"):
        t.transcribe(io.BytesIO(b"RIFF\x00\x00\x00\x00WAVEfmt not audio"))
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt not audio")
    with pytest.raises(InputError, match="broken.wav: unreadable"):
        t.transcribe_many([good, tmp_path / "broken.wav"], 16000)
    with pytest.raises(InputError, match="missing.wav: file not found"):
        t.transcribe(tmp_path / "missing.wav")
    assert t.transcribe_many([]) == []


def test_silence_is_valid_input_with_zero_notes(transcriber, tmp_path):
    silent = transcriber.transcribe(np.zeros(32000, np.float32), sample_rate=16000)
    assert silent.notes == () and len(silent.ns.notes) == 0 and silent.audio_seconds == pytest.approx(2.0)
    soundfile.write(tmp_path / "silence.wav", np.zeros((22050, 2), np.int16), 22050)
    from_file = transcriber.transcribe(tmp_path / "silence.wav")
    assert from_file.notes == () and from_file.audio_seconds == pytest.approx(1.0)
    empty = transcriber.transcribe_many([np.zeros(0, np.float32), np.zeros((0, 2), np.int16)], 44100)
    assert [(r.notes, r.audio_seconds) for r in empty] == [((), 0.0), ((), 0.0)]


def test_transcribe_many_shares_batches_and_matches_single_calls(tiny, transcriber, stereo_44k, monkeypatch):
    path, int16 = stereo_44k
    inputs = [tiny.wav(4), int16, audio.load_audio(tiny.wav(1))[:8000]]  # a file, 44.1 kHz stereo, 0.5 s at 16 kHz
    alone = [transcriber.transcribe(tiny.wav(4)), transcriber.transcribe(int16, 44100),
             transcriber.transcribe(inputs[2], 16000)]
    im = transcriber.inference_model
    calls = []
    original = im.predict_batch_scored  # the decoder call every batch goes through (with token probabilities)
    monkeypatch.setattr(im, "predict_batch_scored",
                        lambda frames, allowed=None: calls.append(len(frames)) or original(frames, allowed))
    together = transcriber.transcribe_many(inputs, [None, 44100, 16000])
    assert [r.to_dicts() for r in together] == [r.to_dicts() for r in alone]
    assert [r.source for r in together] == [str(tiny.wav(4)), None, None]
    prepared = [audio.load_audio(tiny.wav(4)), api.prepare_array(int16, 44100, target_rate=16000), inputs[2]]
    segments = [len(im.segment_audio(x).frames) for x in prepared]
    assert sum(calls) == sum(segments) and len(calls) == -(-sum(segments) // im.batch_size)
    assert len(calls) < sum(-(-s // im.batch_size) for s in segments)  # fewer batches than one call per input
    shared_rate = transcriber.transcribe_many([int16, tiny.wav(4)], 44100)  # one rate for the arrays; files ignore it
    assert [r.to_dicts() for r in shared_rate] == [alone[1].to_dicts(), alone[0].to_dicts()]


def test_load_model_uses_the_default_model_dir(tiny, monkeypatch, tmp_path):
    from mt3 import pretrained

    monkeypatch.setattr(pretrained, "default_model_dir", lambda: tmp_path / "not_installed")
    with pytest.raises(InputError, match="no default model is installed.*load_model\\('MODEL_DIR'\\)"):
        api.load_model()
    monkeypatch.setattr(pretrained, "default_model_dir", lambda: tiny.model_dir)
    model = api.load_model(gin_bindings=tiny.bindings, batch_size=2)
    assert model.info["model_dir"] == str(tiny.model_dir.resolve()) and model.info["batch_size"] == 2
    assert model.sample_rate == 16000
    with pytest.raises(InputError, match="checkpoint directory not found"):
        api.load_model(tmp_path / "nowhere")


def test_quiet_input_warns_about_its_level(transcriber, stereo_44k):
    _, samples = stereo_44k
    samples, rate = samples.astype(np.float32) / 32768.0, 44100
    quiet = samples / np.abs(samples).max() * 10 ** (-60 / 20)
    with pytest.warns(UserWarning, match=r"^audio: the audio is very quiet \(peak -6[0-3] dBFS"):
        transcriber.transcribe(quiet, sample_rate=rate)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a normal level gives no warning
        transcriber.transcribe(samples, sample_rate=rate)


def test_bytes_and_file_objects_are_decoded_as_the_file_is(tiny, transcriber):
    from_path = transcriber.transcribe(tiny.wav(3))
    with open(tiny.wav(3), "rb") as f:
        from_object = transcriber.transcribe(f)
    from_bytes = transcriber.transcribe(tiny.wav(3).read_bytes())
    assert from_object.to_dicts() == from_bytes.to_dicts() == from_path.to_dicts() and from_path.notes
    assert from_object.source == str(tiny.wav(3)) and from_bytes.source is None


def test_consistency_options_are_keyword_arguments(tiny, transcriber, tmp_path):
    """programs= restricts the decoder as `--programs` does, per call or as load_model's default; bad values are a
    ValueError naming the argument before any model loads; loader errors name no command-line flag."""
    free = transcriber.transcribe(tiny.wav(3))
    used = {n.program for n in free.notes if not n.is_drum}
    other = next(p for p in (0, 40, 73) if p not in used)
    restricted = transcriber.transcribe(tiny.wav(3), programs=[other])
    assert restricted.notes and {n.program for n in restricted.notes if not n.is_drum} == {other}
    assert transcriber.inference_model.config.programs is None, "a per-call option leaves the Transcriber as it was"
    assert transcriber.transcribe(tiny.wav(3)).to_dicts() == free.to_dicts()
    family = transcriber.transcribe(tiny.wav(3), reassign_programs="dominant")
    assert len({n.program for n in family.notes if not n.is_drum}) == 1
    loaded = api.load_model(tiny.model_dir, gin_bindings=tiny.bindings, programs=[other], batch_size=2)
    assert loaded.inference_model.config.programs == (other,)
    assert loaded.transcribe(tiny.wav(3)).to_dicts() == restricted.to_dicts()
    nowhere = tmp_path / "nowhere"
    for kwargs, message in (({"programs": [200]}, "programs: 200 is not a General MIDI program"),
                            ({"programs": "0,33"}, "programs takes a list of GM program numbers"),
                            ({"reassign_programs": "bogus"}, "reassign_programs must be one of"),
                            ({"min_program_share": 1.5}, "min_program_share must be in")):
        with pytest.raises((ValueError, TypeError), match=message) as raised:
            api.load_model(nowhere, **kwargs)
        assert "--" not in str(raised.value) and "InferenceConfig" not in str(raised.value)
    with pytest.raises(ValueError, match="programs: 200"):
        transcriber.transcribe(tiny.wav(3), programs=[200])
    with pytest.raises(InputError, match="checkpoint directory not found") as raised:
        api.load_model(nowhere)
    assert "--" not in str(raised.value)
    with pytest.raises(InputError, match="gin_bindings entry 'NO_SUCH_MACRO = 1'") as raised:
        api.load_model(tiny.model_dir, gin_bindings=[*tiny.bindings, "NO_SUCH_MACRO = 1"])
    assert "--gin" not in str(raised.value)


def test_note_filters_and_midi_of_the_api_match_the_file(tiny, transcriber, tmp_path):
    import mido

    free = transcriber.transcribe(tiny.wav(3))
    pitches = sorted(n.pitch for n in free.notes)
    low = pitches[len(pitches) // 2]
    kept = transcriber.transcribe(tiny.wav(3), min_pitch=low)
    assert kept.notes == tuple(n for n in free.notes if n.is_drum or n.pitch >= low)
    path = kept.write_midi(tmp_path / "k.mid", tempo=90)
    midi = mido.MidiFile(path)
    assert [m.tempo for t in midi.tracks for m in t if m.type == "set_tempo"] == [666666]
    back = midi_io.load_midi(path)
    assert sorted((round(n.start_time, 3), n.pitch) for n in back.notes) == sorted(
        (round(n.onset, 3), n.pitch) for n in kept.notes)
    with pytest.raises(ValueError, match="min_note_ms must be in"):
        transcriber.transcribe(tiny.wav(3), min_note_ms=-1)
