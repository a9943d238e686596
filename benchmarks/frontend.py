"""Times the JAX log-mel frontend under jit: 60 s of audio, and a training-sized batch [32, 256*128].

    .venv/bin/python benchmarks/frontend.py [--repeats 10] [--compare-framing]   (or python -m benchmarks.frontend)

Prints the median wall time per call (after compilation) and the speed as a multiple of real time. With
`--compare-framing` it also times a gather-based framing (the obvious alternative to our reshape + shifted slices).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder is sys.path[0] and benchmarks/tokenize.py would shadow the stdlib module numpy imports.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def _time(fn, x, repeats: int) -> tuple[float, float]:
    """(compile + first run seconds, median seconds of later runs)."""
    start = time.perf_counter()
    fn(x).block_until_ready()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _gather_spectrogram(samples, config):
    """Same maths as compute_spectrogram, framing by an index gather (for comparison only)."""
    import jax
    import jax.numpy as jnp

    from mt3 import spectrograms as s

    n = samples.shape[-1]
    num_frames = -(-n // config.hop_width)
    pad = (num_frames - 1) * config.hop_width + config.fft_size - n
    padded = jnp.pad(samples, [(0, 0)] * (samples.ndim - 1) + [(0, pad)])
    index = np.arange(num_frames)[:, None] * config.hop_width + np.arange(config.fft_size)[None, :]
    frames = padded[..., index] * jnp.asarray(s.hann_window(config.fft_size))
    active = s._active_fft_bins(config)
    magnitude = jnp.abs(jnp.fft.rfft(frames, n=config.fft_size, axis=-1)[..., :active])
    mel = jnp.matmul(magnitude, s.mel_weight_matrix(config)[:active], precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.where(mel <= 0.0, s.LOG_FLOOR, mel))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compare-framing", action="store_true")
    args = parser.parse_args()

    import functools

    import jax
    import jax.numpy as jnp

    from mt3.spectrograms import SpectrogramConfig, compute_spectrogram

    config = SpectrogramConfig()
    rng = np.random.default_rng(0)
    cases = {
        "60 s mono [960000]": jnp.asarray(rng.uniform(-0.5, 0.5, 60 * config.sample_rate).astype(np.float32)),
        "batch [32, 256*128]": jnp.asarray(rng.uniform(-0.5, 0.5, (32, 256 * config.hop_width)).astype(np.float32)),
    }
    variants = {"reshape+slices (mt3)": jax.jit(functools.partial(compute_spectrogram, config=config))}
    if args.compare_framing:
        variants["gather"] = jax.jit(functools.partial(_gather_spectrogram, config=config))

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), repeats={args.repeats}")
    for name, x in cases.items():
        audio_seconds = x.size / config.sample_rate
        for variant, fn in variants.items():
            first, median = _time(fn, x, args.repeats)
            print(f"{name:22s} {variant:22s} {median * 1e3:9.1f} ms/call  {audio_seconds / median:8.0f}x real time"
                  f"  (first call incl. compile {first:.2f} s)")


if __name__ == "__main__":
    main()
