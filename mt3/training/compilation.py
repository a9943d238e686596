"""Compilation bookkeeping for inference: how many seconds JAX spent compiling, and XLA's on-disk compile cache.

Why a module of its own: `mt3 transcribe` and `benchmarks/inference.py` report compile time apart from decoding time
(each decoder shape compiles once per process), and every command that loads a model dir shares one cache setting.
"""

from __future__ import annotations

import os

# Seconds JAX spent tracing, lowering and compiling in this process (jax.monitoring events).
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_COMPILE = {"seconds": 0.0, "listening": False}


def compile_seconds() -> float:
    """Tracing + lowering + XLA compile seconds so far in this process (counted from the first InferenceModel)."""
    return _COMPILE["seconds"]


COMPILATION_CACHE_ENV = "MT3_COMPILATION_CACHE"


def enable_compilation_cache() -> str | None:
    """Keeps XLA's compiled decoders on disk (JAX's persistent compilation cache), so a second `mt3 transcribe` /
    `eval` / `serve` of the same model skips most compile time (~67 s for MT3's network on a busy 2-core CPU, where
    the compacting decoder compiles one program per (batch, cache length) shape). Directory: $MT3_COMPILATION_CACHE,
    default ~/.cache/mt3/xla; 'off' disables it. Returns the directory used (None: off)."""
    import jax

    directory = os.environ.get(COMPILATION_CACHE_ENV, os.path.join("~", ".cache", "mt3", "xla"))
    if directory.strip().lower() in ("", "off", "0", "none"):
        return None
    directory = os.path.expanduser(directory)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return directory


def listen_to_compiles() -> None:
    """Starts counting compile seconds (idempotent; InferenceModel calls it)."""
    if _COMPILE["listening"]:
        return
    import jax

    def listener(event: str, duration: float, **_) -> None:
        if event in _COMPILE_EVENTS:
            _COMPILE["seconds"] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    _COMPILE["listening"] = True
