"""Audio loading on real file formats (wav/flac/ogg/mp3/m4a) at several rates and channel counts, and its errors."""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from mt3 import audio
from mt3.errors import InputError


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.4) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def write(path, samples: np.ndarray, rate: int, **kwargs):
    soundfile.write(path, samples, rate, **kwargs)
    return path


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
@pytest.mark.parametrize("rate", [44100, 48000, 8000])
@pytest.mark.parametrize("channels", [1, 2])
def test_formats_rates_channels_to_16k_mono(tmp_path, ext, rate, channels):
    tone = sine(1000.0, rate, 1.25)
    data = tone if channels == 1 else np.stack([tone, tone], axis=1)
    path = write(tmp_path / f"tone.{ext}", data, rate)
    samples = audio.load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == math.ceil(len(tone) * 16000 / rate)
    assert abs(peak_hz(samples) - 1000.0) <= 16000 / len(samples)
    middle = samples[2000:-2000]
    expected = sine(1000.0, 16000, len(samples) / 16000)[2000:-2000]
    if ext != "ogg":  # lossless: the resampled sine is the sine at 16 kHz
        np.testing.assert_allclose(middle, expected, atol=2e-3)
    assert np.abs(middle).max() == pytest.approx(0.4, abs=0.02)


def test_stereo_is_averaged(tmp_path):
    left, right = sine(440.0, 16000, 1.0, 0.5), sine(1500.0, 16000, 1.0, 0.25)
    samples = audio.load_audio(write(tmp_path / "lr.wav", np.stack([left, right], 1), 16000, subtype="FLOAT"))
    np.testing.assert_allclose(samples, (left + right) / 2, atol=1e-7)


def test_multichannel_and_16k_passthrough_is_exact(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (16000, 6)).astype(np.float32)
    samples = audio.load_audio(write(tmp_path / "six.wav", x, 16000, subtype="FLOAT"))
    np.testing.assert_allclose(samples, x.mean(axis=1), atol=1e-7)


def test_other_output_rate(tmp_path):
    samples = audio.load_audio(write(tmp_path / "t.flac", sine(300.0, 44100, 1.0), 44100), sample_rate=22050)
    assert len(samples) == 22050 and abs(peak_hz(samples, 22050) - 300.0) <= 1.0


def test_matches_librosa_load_as_mt3_uses_it(tmp_path):
    """MT3 loads with librosa.load(sr=16000): same mono-then-soxr_hq path, so the samples agree."""
    import librosa

    rng = np.random.default_rng(3)
    x = np.stack([sine(523.0, 44100, 1.0), rng.uniform(-0.1, 0.1, 44100).astype(np.float32)], axis=1)
    path = write(tmp_path / "mix.wav", x, 44100, subtype="FLOAT")
    reference, _ = librosa.load(path, sr=16000)
    np.testing.assert_allclose(audio.load_audio(path), reference, atol=1e-6)


def test_mp3_and_m4a(tmp_path):
    assert shutil.which("ffmpeg"), "ffmpeg is required for this test"
    source = write(tmp_path / "src.wav", np.stack([sine(880.0, 44100, 1.5)] * 2, 1), 44100)
    for ext in ("mp3", "m4a"):  # mp3: libsndfile; m4a (AAC): audioread/ffmpeg fallback
        out = tmp_path / f"tone.{ext}"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(source), str(out)], check=True)
        samples = audio.load_audio(out)
        assert samples.dtype == np.float32 and samples.ndim == 1
        assert abs(len(samples) - 24000) <= 0.02 * 24000  # codecs add priming/padding samples
        assert abs(peak_hz(samples) - 880.0) <= 2.0
        from_bytes = audio.load_audio_bytes(out.read_bytes(), name=f"upload.{ext}")
        np.testing.assert_allclose(from_bytes, samples, atol=1e-6)


def test_load_audio_bytes_equals_load_audio(tmp_path):
    path = write(tmp_path / "t.flac", np.stack([sine(700.0, 48000, 0.5)] * 2, 1), 48000)
    np.testing.assert_array_equal(audio.load_audio_bytes(path.read_bytes(), name="t.flac"), audio.load_audio(path))


# --------------------------------------------------------------------------------------------------------------------
# errors: always InputError naming the file


def expect_input_error(path, match: str, **kwargs) -> InputError:
    with pytest.raises(InputError, match=match) as info:
        audio.load_audio(path, **kwargs)
    assert info.value.path == os.fspath(path) and str(info.value).startswith(os.fspath(path) + ": ")
    return info.value


def test_missing_file(tmp_path):
    expect_input_error(tmp_path / "nope.wav", "not found")


def test_directory(tmp_path):
    expect_input_error(tmp_path, "directory")


def test_corrupt_file(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    expect_input_error(path, "unreadable, corrupt or unsupported")
    truncated = tmp_path / "trunc.wav"
    write(tmp_path / "ok.wav", sine(440.0, 16000, 1.0), 16000)
    truncated.write_bytes((tmp_path / "ok.wav").read_bytes()[:30])  # header cut in half
    expect_input_error(truncated, "unreadable, corrupt or unsupported")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    expect_input_error(path, "empty")


def test_zero_length_wav(tmp_path):
    expect_input_error(write(tmp_path / "zero.wav", np.zeros((0, 2), np.float32), 44100), "zero samples")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    x = sine(440.0, 16000, 0.5)
    x[100] = bad
    expect_input_error(write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT"), "non-finite")


def test_all_zero_is_rejected_unless_allowed(tmp_path):
    path = write(tmp_path / "silent.flac", np.zeros((8000, 2), np.float32), 8000)
    expect_input_error(path, "exactly zero")
    samples = audio.load_audio(path, allow_silence=True)
    assert len(samples) == 16000 and not samples.any()


def test_absurd_sample_rates(tmp_path):
    expect_input_error(write(tmp_path / "slow.wav", sine(10.0, 100, 1.0), 100), "absurd file sample rate 100")
    expect_input_error(write(tmp_path / "ok.wav", sine(440.0, 16000, 0.1), 16000), "absurd requested",
                       sample_rate=0)


def test_load_audio_bytes_errors():
    for data, match in [(b"", "empty"), (b"RIFF\x00\x00junkjunkjunk" * 10, "unreadable")]:
        with pytest.raises(InputError, match=match) as info:
            audio.load_audio_bytes(data, name="upload.wav")
        assert str(info.value).startswith("upload.wav: ")


# --------------------------------------------------------------------------------------------------------------------
# resample, write_wav


@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 30000), rates=st.sampled_from([(44100, 16000), (48000, 16000), (8000, 16000),
                                                            (22050, 16000), (16000, 44100), (11025, 16000)]))
def test_resample_length_rule(length, rates):
    x = np.random.default_rng(length).uniform(-1, 1, length).astype(np.float32)
    y = audio.resample(x, *rates)
    assert y.dtype == np.float32 and len(y) == math.ceil(length * rates[1] / rates[0])


def test_resample_same_rate_is_identity():
    x = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
    np.testing.assert_array_equal(audio.resample(x, 16000, 16000), x)


def test_write_wav_round_trip_and_atomic(tmp_path):
    x = sine(440.0, 16000, 0.5) * 2.0  # beyond +-1 survives FLOAT
    audio.write_wav(tmp_path / "f.wav", x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(soundfile.read(tmp_path / "f.wav", dtype="float32")[0], x)
    audio.write_wav(tmp_path / "sub" / "p.wav", x / 2, 16000)
    back, rate = soundfile.read(tmp_path / "sub" / "p.wav", dtype="float32")
    assert rate == 16000 and soundfile.info(tmp_path / "sub" / "p.wav").subtype == "PCM_16"
    np.testing.assert_allclose(back, x / 2, atol=1 / 32768)
    with pytest.raises(ValueError, match="NaN"):
        audio.write_wav(tmp_path / "bad.wav", np.array([0.0, np.nan], np.float32), 16000)
    with pytest.raises(ValueError):
        audio.write_wav(tmp_path / "bad.wav", x, 16000, subtype="NOT_A_SUBTYPE")  # fails mid-write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.wav", "sub"]  # no partial or temporary files


# ---------------------------------------------------------------------------------------------------------------------
# issue #12: a decode that stops short of the declared length; silence is valid input for transcription


def music_like(rate: int, seconds: float) -> np.ndarray:
    """A tone under a slow tremolo plus a little noise: compresses like music, so a byte cut lands mid-stream."""
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(0).standard_normal(len(t)) * 0.01
    return (0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.5 * t) + noise).astype(np.float32)


@pytest.mark.parametrize("ext, cut", [("flac", 20_000), ("wav", 200_000)])
def test_truncated_file_is_an_error_naming_both_lengths(tmp_path, ext, cut):
    """20 KB of a 20 s flac decodes to ~0.3 s (after libsndfile loses sync, ffmpeg reads what is there): an error
    naming both lengths, not a silently short transcription. A wav cut short: its header's data size says so."""
    full = write(tmp_path / f"full.{ext}", music_like(44100, 20.0), 44100)
    cut_path = tmp_path / f"cut.{ext}"
    cut_path.write_bytes(full.read_bytes()[:cut])
    assert len(audio.load_audio(full)) == 20 * 16000  # the whole file is fine
    with pytest.raises(InputError) as info:
        audio.load_audio(cut_path)
    message = str(info.value)
    assert message.startswith(f"{cut_path}: truncated or corrupt: decoding stopped at ")
    assert "of the 20.00 s the file declares" in message and "\n" not in message
    with pytest.raises(InputError, match="20.00 s the file declares"):
        audio.load_audio_bytes(cut_path.read_bytes(), name=f"cut.{ext}")


def test_silence_and_very_short_files_are_valid_for_transcription(tmp_path):
    silent = write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    empty = write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    blip = write(tmp_path / "blip.flac", sine(440.0, 44100, 0.01), 44100)
    samples = audio.load_audio(silent, allow_silence=True)
    assert len(samples) == 16000 and not np.any(samples)
    assert len(audio.load_audio(empty, allow_silence=True)) == 0
    assert len(audio.load_audio(blip)) == 160
    # uploads are transcribed: the bytes loader accepts silence by default; training preparation still refuses it
    assert len(audio.load_audio_bytes(silent.read_bytes(), name="silent.wav")) == 16000
    with pytest.raises(InputError, match="exactly zero"):
        audio.load_audio(silent)
    with pytest.raises(InputError, match="zero samples"):
        audio.load_audio(empty)


def test_damaged_mp3_is_one_clear_error_and_no_decoder_chatter(tmp_path, capfd):
    """Random bytes named .mp3: libmpg123 used to print "Note: Illegal Audio-MPEG-Header ..." to the terminal and
    libsndfile's message claimed the existing file "does not exist"."""
    path = tmp_path / "random.mp3"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as err:
        audio.load_audio(path)
    message = str(err.value)
    assert message.startswith(f"{path}: unreadable, corrupt or unsupported audio format")
    assert "does not exist" not in message and "\n" not in message
    captured = capfd.readouterr()
    assert "Illegal Audio-MPEG-Header" not in captured.err + captured.out


def test_quiet_warning_is_about_the_input_level():
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    assert audio.quiet_warning(0.5 * tone) is None and audio.quiet_warning(np.zeros(100, np.float32)) is None
    line = audio.quiet_warning(tone * 10 ** (-50 / 20))
    assert line is not None and "peak -50 dBFS" in line and "does not normalise" in line
    normalised = audio.quiet_warning(tone * 10 ** (-50 / 20), normalised_to=-1.0)
    assert "peak -50 dBFS" in normalised and "normalised to its training peak of -1 dBFS" in normalised
    assert audio.AUDIO_EXTENSIONS == tuple(dict.fromkeys(audio.AUDIO_EXTENSIONS))  # one list, no repeats


def test_quiet_warning_below_the_noise_floor_says_no_notes():
    """Below SILENCE_PEAK_DB a normalising model leaves the input as it is (`normalize_peak`), so the line must not
    promise normalisation (issue 28: at -84 dBFS the bundled model gives 0 notes)."""
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    quiet = tone * np.float32(10 ** (-84 / 20))
    assert np.array_equal(audio.normalize_peak(quiet, -1.0), quiet)
    line = audio.quiet_warning(quiet, normalised_to=-1.0)
    assert "nearly silent (peak -84 dBFS" in line and "expect no notes" in line and "hears it normalised" not in line
    assert "hears it normalised" in audio.quiet_warning(tone * np.float32(10 ** (-79 / 20)), normalised_to=-1.0)
