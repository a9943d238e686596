"""glibc's malloc tuned for a long inference run: large buffers go back to the OS when freed.

Why: XLA:CPU allocates every device buffer (KV caches of 6-13 MB per layer at batch 32, encoder activations, the
compacting decoder's gathered and grown caches) with plain malloc. glibc serves a request above its mmap threshold
with its own mapping, unmapped on free, but raises that threshold to the size of each such block freed (up to
32 MB), so after the first freed cache every later one comes from a thread's malloc arena instead, and freed arena
memory mostly stays with the process. Transcribing a 10-minute file with MT3's weights peaked at 2.23 GB RSS (one
process, 0.18 GB of live arrays); a fixed 1 MB threshold (which also stops the raising) brought it to 1.86 GB, for
~5 s more system time (page faults) per 180 CPU-s (docs/decoding_speed.md, "Peak memory"). Set by `mt3 transcribe`
for its own process, not on import: a library should not change its host's allocator.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20
ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc's own variable: a user's value wins


def release_large_buffers(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Makes glibc map (and unmap on free) every allocation of at least `threshold` bytes. Returns whether it was
    set (False off Linux/glibc, or when the user set MALLOC_MMAP_THRESHOLD_ themselves)."""
    if not sys.platform.startswith("linux") or ENV in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
