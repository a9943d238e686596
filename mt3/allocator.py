"""glibc's malloc for a long inference run: freed decoder buffers go back to the OS.

Why: XLA:CPU allocates every device buffer (KV caches of 6-13 MB per layer at batch 32, encoder activations, the
compacting decoder's gathered and grown caches) with plain malloc. glibc serves a request above its mmap threshold
with its own mapping, unmapped on free, but raises that threshold to the size of each such block freed (up to
32 MB), so after the first freed cache every later one comes from a thread's malloc arena, and freed arena memory
mostly stays with the process: a 10-minute file with MT3's weights peaked at 2.45 GB RSS with 0.18 GB of live
arrays. Two remedies (docs/decoding_speed.md, "Peak memory"):
- `release_free_memory` (`malloc_trim(0)`) after each decoded batch, when none of that batch's buffers is live:
  no setting changes, so the library calls it (`InferenceModel.decode_segments`); alone it gave 1.84-1.87 GB on the
  10-minute file but 2.03 GB on twelve 30-s files (every new batch shape adds compiled programs);
- `release_large_buffers`, a fixed 1 MB mmap threshold, which maps and unmaps every large buffer: 1.63-1.68 GB, for
  6-8 s more system time per 10-minute file (page faults). A process-wide setting, so only `mt3 transcribe` sets
  it, for its own process, not on import: a library should not change its host's allocator.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20
ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc's own variable: a user's value wins


def glibc_function(name: str):
    """`name` from the C library this process runs on, or None off Linux or where it is not glibc's (musl has
    neither mallopt nor malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def release_large_buffers(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Makes glibc map (and unmap on free) every allocation of at least `threshold` bytes. Returns whether it was
    set (False off glibc, or when the user set MALLOC_MMAP_THRESHOLD_ themselves)."""
    mallopt = glibc_function("mallopt")
    if mallopt is None or ENV in os.environ:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1


def release_free_memory() -> bool:
    """Returns the free memory of glibc's heaps to the OS (`malloc_trim(0)`); True if any was released, False when
    none was or off glibc. One heap walk (~ms) per call."""
    malloc_trim = glibc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return malloc_trim(0) == 1
