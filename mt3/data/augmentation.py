"""On-the-fly audio augmentation of training crops: level, colour, room and noise.

Why: a model trained only on peak-normalised, dry, noiseless synthesizer renders learns those conditions as part of
what a note looks like. Measured on the bundled `local_cpu` model (issue 16): a real recording peaking at 0.05 gave no
notes at all, and scaling a test track to gain 0.1 dropped onset F1 from 0.30 to 0.13. Each crop is therefore drawn at
a random level (over at least -30..0 dB), through a random tone colour (a low-pass or a shelving tilt), a small
synthetic room, and low-level noise — only the audio changes, the targets stay exact.

Plain numpy/scipy on one crop's frames (`[n, hop]` samples, the model computes the log-mel itself). Seeded by the
example's own stateless seed (see `preprocessors.tokenize_transcription_example`), so crops are reproducible and
resumes stay exact. Off by default, as in MT3's presets (MT3 has no audio augmentation); `gin/levers/augment.gin`
turns it on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Each transform is applied with its own probability; a probability of 0 disables it.

    gain_db: (low, high) of the uniform random level change, dB (applied last, after any peak protection).
    eq_probability: chance of a random tone colour: a 2nd-order low-pass (cutoff log-uniform in `lowpass_hz`) or a
      first-order shelf tilting the spectrum by up to `tilt_db` either way.
    reverb_probability: chance of a synthetic room (exponentially decaying noise, RT60 uniform in `rt60_seconds`,
      wet/dry ratio uniform in `wet`).
    noise_probability: chance of white or pink noise at an SNR uniform in `snr_db` below the crop's RMS.
    """

    gain_probability: float = 0.0
    gain_db: tuple[float, float] = (-30.0, 0.0)
    eq_probability: float = 0.0
    lowpass_hz: tuple[float, float] = (2000.0, 7000.0)
    tilt_db: float = 9.0
    reverb_probability: float = 0.0
    rt60_seconds: tuple[float, float] = (0.2, 1.2)
    wet: tuple[float, float] = (0.05, 0.4)
    noise_probability: float = 0.0
    snr_db: tuple[float, float] = (20.0, 50.0)

    def __post_init__(self):
        for name in ("gain_probability", "eq_probability", "reverb_probability", "noise_probability"):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {p!r}")
        for name in ("gain_db", "lowpass_hz", "rt60_seconds", "wet", "snr_db"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"AugmentConfig.{name} must be (low, high) with low <= high, got {(lo, hi)!r}")
        if not (0 < self.lowpass_hz[0] and self.lowpass_hz[1] < SAMPLE_RATE / 2):
            raise ValueError(f"AugmentConfig.lowpass_hz must lie in (0, {SAMPLE_RATE // 2}) Hz, got {self.lowpass_hz}")

    @property
    def enabled(self) -> bool:
        return any(p > 0 for p in (self.gain_probability, self.eq_probability, self.reverb_probability,
                                   self.noise_probability))


def _colour(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        cutoff = float(np.exp(rng.uniform(np.log(cfg.lowpass_hz[0]), np.log(cfg.lowpass_hz[1]))))
        b, a = signal.butter(2, cutoff, btype="low", fs=SAMPLE_RATE)
        return signal.lfilter(b, a, x)
    # Shelving tilt: mix the signal with its one-pole low-passed self; g > 1 boosts lows, g < 1 boosts highs.
    g = 10.0 ** (rng.uniform(-cfg.tilt_db, cfg.tilt_db) / 20.0)
    corner = float(rng.uniform(300.0, 3000.0))
    b, a = signal.butter(1, corner, btype="low", fs=SAMPLE_RATE)
    low = signal.lfilter(b, a, x)
    return (g * low + (x - low)) / max(g, 1.0)


def _room(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    rt60 = float(rng.uniform(*cfg.rt60_seconds))
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # -60 dB at rt60
    ir /= np.sqrt(np.sum(ir ** 2)) + 1e-12
    wet = signal.fftconvolve(x, ir)[: len(x)]
    w = float(rng.uniform(*cfg.wet))
    return (1.0 - w) * x + w * wet


def _noise(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x ** 2)))
    if rms < 1e-6:
        return x
    noise = rng.standard_normal(len(x))
    if rng.random() < 0.5:  # pink (1/f power): white noise through a gentle one-pole low-pass cascade
        noise = signal.lfilter([1.0], [1.0, -0.95], noise)
    noise *= rms * 10.0 ** (-rng.uniform(*cfg.snr_db) / 20.0) / (np.sqrt(np.mean(noise ** 2)) + 1e-12)
    return x + noise


def augment_audio(audio: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of a mono float waveform (same length, float32, within [-1, 1]).

    The order is a recording chain's: colour (instrument/microphone), room, noise (preamp), then level. Clipping is
    avoided by peak-normalising to 1 before the level change, never by clipping the waveform.
    """
    x = np.asarray(audio, np.float64)
    if not cfg.enabled or x.size == 0:
        return np.asarray(audio, np.float32)
    if rng.random() < cfg.eq_probability:
        x = _colour(x, cfg, rng)
    if rng.random() < cfg.reverb_probability:
        x = _room(x, cfg, rng)
    if rng.random() < cfg.noise_probability:
        x = _noise(x, cfg, rng)
    peak = float(np.max(np.abs(x)))
    if peak > 1.0:
        x = x / peak
    if rng.random() < cfg.gain_probability:
        x = x * 10.0 ** (rng.uniform(*cfg.gain_db) / 20.0)
    return x.astype(np.float32)


def augment_frames(frames: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """`augment_audio` on a crop of frames `[n, hop]` (the training example's inputs), same shape."""
    frames = np.asarray(frames, np.float32)
    if not cfg.enabled or frames.size == 0:
        return frames
    return augment_audio(frames.reshape(-1), cfg, rng).reshape(frames.shape)


def augment_examples(examples: list[tuple], cfg: AugmentConfig | None, seed) -> list[tuple]:
    """Training examples `(inputs, targets, ...)` with augmented inputs, the rest unchanged.

    A generator of its own, derived from the example group's seed (any integer array), so the crops (drawn before,
    from the seed itself) are the same with augmentation on or off, and every crop is augmented reproducibly.
    """
    if cfg is None or not cfg.enabled:
        return examples
    rng = np.random.default_rng([*(int(s) & 0xFFFFFFFF for s in np.ravel(seed)), 0xA06])
    return [(augment_frames(ex[0], cfg, rng), *ex[1:]) for ex in examples]

