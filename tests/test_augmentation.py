"""Audio augmentation of training crops: each transform does what it says on real music, seeded, and the training
task applies it to the audio only (targets and crops unchanged)."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import chorale_train_task, gin_bound_train_examples, sub_sequence, synth

from mt3.data import augmentation

SR = augmentation.SAMPLE_RATE


@pytest.fixture(scope="module")
def music(music21_sequences):
    """4 s of a real chorale (additive synth of its notes), peak-normalised as the corpus mixes are."""
    audio = synth(sub_sequence(music21_sequences["bach_chorale"], 0.0, 4.0), seconds=4.0).astype(np.float64)
    return (0.9 * audio / np.abs(audio).max()).astype(np.float32)


def _db(x) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)


def _band_energy(x, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spec[(freqs >= lo) & (freqs < hi)].sum())


def test_off_returns_the_audio_unchanged(music):
    cfg = augmentation.AugmentConfig()
    assert not cfg.enabled
    out = augmentation.augment_audio(music, cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(out, music)


def test_gain_spans_the_range_and_only_scales(music):
    cfg = augmentation.AugmentConfig(gain_probability=1.0, gain_db=(-30.0, 0.0))
    changes = []
    for seed in range(200):
        out = augmentation.augment_audio(music, cfg, np.random.default_rng(seed))
        ratio = float(np.dot(out, music) / np.dot(music, music))
        np.testing.assert_allclose(out, ratio * music, atol=1e-6)  # a pure level change
        changes.append(20 * np.log10(ratio))
    assert -30.0 <= min(changes) < -27.0 and -3.0 < max(changes) <= 0.0


def test_lowpass_and_tilt_change_the_tone_colour(music):
    cfg = augmentation.AugmentConfig(eq_probability=1.0, lowpass_hz=(2000.0, 2000.0), tilt_db=9.0)
    high_before = _band_energy(music, 4000, 8000) / _band_energy(music, 0, 8000)
    ratios = []
    for seed in range(20):
        out = augmentation.augment_audio(music, cfg, np.random.default_rng(seed))
        assert out.shape == music.shape and out.dtype == np.float32 and np.abs(out).max() <= 1.0
        ratios.append(_band_energy(out, 4000, 8000) / _band_energy(out, 0, 8000))
    # every draw changes the balance of highs; the low-pass draws remove most of them
    assert all(abs(np.log(r / high_before)) > 0.05 for r in ratios)
    assert min(ratios) < 0.2 * high_before


def test_room_spreads_energy_after_the_notes_end(music):
    cfg = augmentation.AugmentConfig(reverb_probability=1.0, rt60_seconds=(1.0, 1.0), wet=(0.4, 0.4))
    burst = music.copy()
    burst[SR:] = 0.0  # one second of music, then silence
    out = augmentation.augment_audio(burst, cfg, np.random.default_rng(0))
    tail = out[SR + SR // 10: SR + SR // 2]
    assert np.all(burst[SR:] == 0) and _db(tail) > _db(burst[: SR]) - 40


def test_noise_sits_at_the_requested_snr(music):
    cfg = augmentation.AugmentConfig(noise_probability=1.0, snr_db=(30.0, 30.0))
    for seed in range(5):
        out = augmentation.augment_audio(music, cfg, np.random.default_rng(seed))
        snr = _db(music) - _db(out.astype(np.float64) - music)
        assert abs(snr - 30.0) < 0.5


def test_same_seed_same_audio_and_frames_keep_their_shape(music):
    cfg = augmentation.AugmentConfig(gain_probability=1.0, eq_probability=0.5, reverb_probability=0.5,
                                     noise_probability=0.5)
    frames = music[: 256 * 128].reshape(256, 128)
    a = augmentation.augment_frames(frames, cfg, np.random.default_rng(7))
    b = augmentation.augment_frames(frames, cfg, np.random.default_rng(7))
    c = augmentation.augment_frames(frames, cfg, np.random.default_rng(8))
    assert a.shape == frames.shape and np.array_equal(a, b) and not np.array_equal(a, c)


def test_config_validates():
    with pytest.raises(ValueError, match="gain_probability"):
        augmentation.AugmentConfig(gain_probability=1.5)
    with pytest.raises(ValueError, match="gain_db"):
        augmentation.AugmentConfig(gain_db=(0.0, -30.0))
    with pytest.raises(ValueError, match="lowpass_hz"):
        augmentation.AugmentConfig(lowpass_hz=(1000.0, 9000.0))


def test_gin_bound_augmentation_reaches_the_training_task(tmp_path, music21_sequences, monkeypatch):
    """Through the real seqio task: same crops and targets, quieter/changed audio, reproducible for a seed."""
    import gin

    task = chorale_train_task(tmp_path, music21_sequences["bach_chorale"], 3, monkeypatch)

    def examples(**bindings):
        return gin_bound_train_examples(task, "augmentation.AugmentConfig", 6, **bindings)

    try:
        plain = examples()
        quiet = examples(gain_probability=1.0, gain_db=(-30.0, -20.0))
        again = examples(gain_probability=1.0, gain_db=(-30.0, -20.0))
    finally:
        with gin.unlock_config():
            gin.clear_config()
    for p, q, r in zip(plain, quiet, again, strict=True):
        np.testing.assert_array_equal(p["targets"], q["targets"])
        np.testing.assert_array_equal(q["inputs"], r["inputs"])
        if np.abs(p["inputs"]).max() > 0:
            level = _db(q["inputs"]) - _db(p["inputs"])
            assert -30.5 < level < -19.5
