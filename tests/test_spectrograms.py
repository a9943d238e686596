"""The JAX log-mel against MT3's tf.signal recipe on real rendered music, plus MT3's framing rules.

The reference is written here from tf.signal primitives exactly as MT3 (via DDSP's spectral_ops) calls them, so a
change on either side shows up as a numeric difference. Run `python tests/test_spectrograms.py` to print a fresh
`_TF_ROUNDINGS` string for mt3/spectrograms.py should a TensorFlow upgrade change its float32 roundings.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mt3 import spectrograms
from mt3.spectrograms import SpectrogramConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SOUNDFONT = "/usr/share/sounds/sf2/TimGM6mb.sf2"
FLOOR = np.log(np.float32(1e-5))


def tf_log_mel(samples: np.ndarray, config: SpectrogramConfig = SpectrogramConfig()) -> np.ndarray:
    """MT3's spectrogram: tf.signal.stft(pad_end, periodic Hann) -> abs -> TF mel matrix -> <=0 to 1e-5 -> log."""
    import tensorflow as tf

    stft = tf.signal.stft(tf.constant(samples, tf.float32), frame_length=config.fft_size,
                          frame_step=config.hop_width, fft_length=config.fft_size, pad_end=True,
                          window_fn=tf.signal.hann_window)
    matrix = tf.signal.linear_to_mel_weight_matrix(config.num_mel_bins, config.fft_size // 2 + 1,
                                                   config.sample_rate, config.mel_lo_hz, config.mel_hi_hz)
    mel = tf.tensordot(tf.abs(stft), matrix, 1)
    return tf.math.log(tf.where(mel <= 0.0, 1e-5, mel)).numpy()


def exact_mel_matrix(num_mel: int, num_fft: int, sample_rate: float, lo: float, hi: float) -> np.ndarray:
    """The HTK triangle formula in float64, written independently of the module (for sanity bounds)."""
    mel = lambda f: 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)
    bins = mel(np.linspace(0.0, sample_rate / 2, num_fft))[:, None]
    edges = np.linspace(mel(lo), mel(hi), num_mel + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    weights = np.maximum(0.0, np.minimum((bins - lower) / (center - lower), (upper - bins) / (upper - center)))
    weights[0] = 0.0
    return weights


@pytest.fixture(scope="module")
def music(music21_midi_files, tmp_path_factory) -> np.ndarray:
    """12 s of a Bach chorale (flute, clarinet, bassoon, bass) rendered by fluidsynth at 16 kHz, mono float32."""
    import soundfile

    assert shutil.which("fluidsynth"), "fluidsynth is required (apt-get install fluidsynth)"
    wav = tmp_path_factory.mktemp("render") / "bach.wav"
    subprocess.run(["fluidsynth", "-ni", "-q", "-F", str(wav), "-r", "16000", "-g", "0.3", SOUNDFONT,
                    str(music21_midi_files["bach_chorale"])], check=True, capture_output=True)
    stereo, rate = soundfile.read(wav, dtype="float32")
    assert rate == 16000
    samples = stereo.mean(axis=1)[16000:16000 * 13].astype(np.float32)
    assert np.abs(samples).max() > 0.05, "render is (nearly) silent"
    return samples


# --------------------------------------------------------------------------------------------------------------------
# numerical equivalence with tf.signal


def test_window_and_mel_matrix_equal_tensorflow_bit_for_bit():
    import tensorflow as tf

    np.testing.assert_array_equal(spectrograms.hann_window(2048), tf.signal.hann_window(2048).numpy())
    reference = tf.signal.linear_to_mel_weight_matrix(512, 1025, 16000, 20.0, 7600.0).numpy()
    ours = spectrograms.mel_weight_matrix(SpectrogramConfig())
    assert ours.shape == (1025, 512) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, reference)
    # Two mel filters are narrower than the 7.8 Hz bin spacing and catch no bin (channels 1 and 10; REFERENCE says
    # "the 2 lowest", but it is these two); the DC row is zero.
    assert not ours[0].any()
    assert np.flatnonzero(~ours.any(axis=0)).tolist() == [1, 10]
    # The TF float32 rounding table only nudges entries: the true (float64) formula is within 1e-4 everywhere.
    assert np.abs(ours - exact_mel_matrix(512, 1025, 16000, 20.0, 7600.0)).max() < 1e-4


def test_non_default_config_uses_the_formula_and_stays_close_to_tensorflow():
    import tensorflow as tf

    config = SpectrogramConfig(num_mel_bins=229, fft_size=1024, mel_lo_hz=30.0, mel_hi_hz=8000.0)
    reference = tf.signal.linear_to_mel_weight_matrix(229, 513, 16000, 30.0, 8000.0).numpy()
    assert np.abs(spectrograms.mel_weight_matrix(config) - reference).max() < 2e-4
    assert np.abs(spectrograms.hann_window(1024) - tf.signal.hann_window(1024).numpy()).max() < 1e-6


def test_log_mel_matches_tf_signal_on_rendered_music(music):
    reference = tf_log_mel(music)
    ours = np.asarray(spectrograms.compute_spectrogram(music))
    assert ours.shape == reference.shape == (len(music) // 128, 512)
    assert ours.dtype == np.float32
    above = (reference > -7.0) & (ours > -7.0)
    assert above.mean() > 0.2, "too few loud bins for a meaningful comparison"
    diff = np.abs(ours - reference)
    assert diff[above].max() <= 1e-4, f"max |delta| above -7: {diff[above].max():.2e}"
    # The same rounding of window, FFT and mel weights makes even near-floor bins agree on this CPU.
    assert diff.max() <= 1e-4, f"max |delta| overall: {diff.max():.2e} at {np.unravel_index(diff.argmax(), diff.shape)}"


def test_log_mel_matches_tf_signal_with_noise_and_odd_length(music):
    rng = np.random.default_rng(0)
    noisy = (music[:12805] + 1e-3 * rng.standard_normal(12805)).astype(np.float32)  # -60 dB noise, ragged end
    reference = tf_log_mel(noisy)
    ours = np.asarray(spectrograms.compute_spectrogram(noisy))
    assert ours.shape == reference.shape == (101, 512)
    assert np.abs(ours - reference).max() <= 1e-4


@pytest.mark.parametrize("num_samples, expected", [(32768, (256, 512)), (65536, (512, 512)), (12805, (101, 512)),
                                                   (1, (1, 512)), (2048, (16, 512))])
def test_output_shapes(num_samples, expected):
    samples = np.random.default_rng(num_samples).uniform(-0.5, 0.5, num_samples).astype(np.float32)
    ours = spectrograms.compute_spectrogram(samples)
    assert ours.shape == expected == tf_log_mel(samples).shape
    assert spectrograms.num_frames(num_samples) == expected[0]


def test_silence_gives_mt3_floor_and_two_empty_channels_are_constant(music):
    silence = np.asarray(spectrograms.compute_spectrogram(np.zeros(4096, np.float32)))
    np.testing.assert_array_equal(silence, np.full((32, 512), FLOOR, np.float32))
    loud = np.asarray(spectrograms.compute_spectrogram(music[:32768]))
    empty = [1, 10]
    np.testing.assert_array_equal(loud[:, empty], FLOOR)  # empty filters -> always the floor
    assert (np.delete(loud, empty, axis=1) > FLOOR).mean() > 0.99


def test_magnitude_not_power_and_natural_log():
    """Doubling the signal adds ln 2 to every (non-floor) bin: magnitude spectrum, natural log."""
    x = np.random.default_rng(1).uniform(-0.25, 0.25, 8192).astype(np.float32)
    one = np.delete(np.asarray(spectrograms.compute_spectrogram(x)), [1, 10], axis=1)
    two = np.delete(np.asarray(spectrograms.compute_spectrogram(2 * x)), [1, 10], axis=1)
    np.testing.assert_allclose(two - one, np.log(2.0), atol=2e-5)


# --------------------------------------------------------------------------------------------------------------------
# batching, jit, frames


def test_batched_equals_unbatched_and_jit_equals_eager(music):
    import jax

    batch = np.stack([music[i * 32768:(i + 1) * 32768] for i in range(3)])
    batched = np.asarray(spectrograms.compute_spectrogram(batch))
    assert batched.shape == (3, 256, 512)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], np.asarray(spectrograms.compute_spectrogram(batch[i])))
    nested = np.asarray(spectrograms.compute_spectrogram(batch[:2].reshape(2, 1, 32768)))
    np.testing.assert_array_equal(nested[:, 0], batched[:2])
    jitted = np.asarray(jax.jit(spectrograms.compute_spectrogram)(batch))
    np.testing.assert_allclose(jitted, batched, rtol=0, atol=1e-6)
    vmapped = np.asarray(jax.jit(jax.vmap(spectrograms.compute_spectrogram))(batch))
    np.testing.assert_allclose(vmapped, batched, rtol=0, atol=1e-6)


def test_spectrogram_from_frames_is_flatten_then_compute(music):
    import jax
    import jax.numpy as jnp

    frames = music[:2 * 256 * 128].reshape(2, 256, 128)  # [B, L, hop] as the model receives them
    from_frames = jax.jit(spectrograms.spectrogram_from_frames)(jnp.asarray(frames))
    assert from_frames.shape == (2, 256, 512)
    direct = spectrograms.compute_spectrogram(frames.reshape(2, -1))
    np.testing.assert_allclose(np.asarray(from_frames), np.asarray(direct), rtol=0, atol=1e-6)
    # Per segment: the last frames see zero padding, not the next segment's audio (as MT3).
    whole = np.asarray(spectrograms.compute_spectrogram(music[:2 * 256 * 128]))
    np.testing.assert_allclose(np.asarray(direct[0, :240]), whole[:240], atol=1e-5)
    assert np.abs(np.asarray(direct[0, -1]) - whole[255]).max() > 0.1
    with pytest.raises(ValueError, match="frames must be"):
        spectrograms.spectrogram_from_frames(np.zeros((2, 10, 64), np.float32))


def test_flatten_frames_inverts_split_for_numpy_and_jax():
    import jax.numpy as jnp

    x = np.arange(3 * 4 * 128, dtype=np.float32).reshape(3, 4, 128)
    np.testing.assert_array_equal(spectrograms.flatten_frames(x), x.reshape(3, -1))
    np.testing.assert_array_equal(np.asarray(spectrograms.flatten_frames(jnp.asarray(x[0]))), x[0].ravel())


# --------------------------------------------------------------------------------------------------------------------
# split_audio (numpy, MT3's _audio_to_frames rule)


@pytest.mark.parametrize("length, expected_frames", [(0, 1), (1, 1), (127, 1), (128, 2), (129, 2), (256, 3),
                                                     (32768, 257), (12805, 101)])
def test_split_audio_padding_rule(length, expected_frames):
    samples = np.random.default_rng(length).uniform(-1, 1, length).astype(np.float32)
    frames, times = spectrograms.split_audio(samples, SpectrogramConfig())
    assert frames.shape == (expected_frames, 128) and frames.dtype == np.float32
    assert times.dtype == np.float64
    np.testing.assert_array_equal(times, np.arange(expected_frames) / 125.0)
    flat = frames.ravel()
    np.testing.assert_array_equal(flat[:length], samples)
    assert not flat[length:].any() and len(flat) - length == 128 - length % 128


@settings(max_examples=60, deadline=None)
@given(length=st.integers(0, 5000), hop=st.sampled_from([64, 128, 160, 256]))
def test_split_audio_properties(length, hop):
    config = SpectrogramConfig(hop_width=hop)
    samples = np.linspace(-1, 1, length, dtype=np.float32)
    frames, times = spectrograms.split_audio(samples, config)
    assert frames.shape == (length // hop + 1, hop)
    np.testing.assert_array_equal(frames.ravel()[:length], samples)
    assert not frames.ravel()[length:].any()
    np.testing.assert_allclose(times * config.frames_per_second, np.arange(len(frames)))


def test_split_audio_rejects_multichannel():
    with pytest.raises(ValueError, match="mono"):
        spectrograms.split_audio(np.zeros((100, 2), np.float32), SpectrogramConfig())


# --------------------------------------------------------------------------------------------------------------------
# config


def test_config_defaults_and_abbrev():
    config = SpectrogramConfig()
    assert (config.sample_rate, config.hop_width, config.num_mel_bins, config.fft_size) == (16000, 128, 512, 2048)
    assert (config.mel_lo_hz, config.mel_hi_hz) == (20.0, 7600.0)
    assert config.frames_per_second == 125
    assert config.abbrev == config.abbrev_str == ""
    assert SpectrogramConfig(hop_width=256).abbrev == "hw256"
    assert SpectrogramConfig(sample_rate=22050, num_mel_bins=229).abbrev == "sr22050mb229"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hop_width = 64


@pytest.mark.parametrize("kwargs, message", [({"hop_width": 0}, "hop_width"), ({"num_mel_bins": 2.5}, "num_mel_bins"),
                                             ({"fft_size": 64}, "fft_size"), ({"mel_hi_hz": 9000.0}, "mel_hi_hz"),
                                             ({"mel_lo_hz": 8000.0, "mel_hi_hz": 7000.0}, "mel_lo_hz")])
def test_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpectrogramConfig(**kwargs)


def test_module_never_imports_tensorflow():
    code = ("import sys, numpy as np; import mt3.spectrograms as s; assert 'jax' not in sys.modules; "
            "s.compute_spectrogram(np.zeros(1000, np.float32)); s.split_audio(np.zeros(10), s.SpectrogramConfig()); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


if __name__ == "__main__":
    import tensorflow as tf

    print(spectrograms.encode_tf_roundings(tf.signal.hann_window(2048).numpy(),
                                           tf.signal.linear_to_mel_weight_matrix(512, 1025, 16000, 20.0,
                                                                                 7600.0).numpy()))
