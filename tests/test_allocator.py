"""Tests for mt3.allocator: freed decoder buffers go back to the OS (peak memory, docs/decoding_speed.md).

The probe runs in a fresh interpreter, so that what this test process allocated before cannot blur its RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mt3 import allocator

# The allocator's calls are glibc's: elsewhere (macOS, musl) they do nothing, and there is nothing to measure.
glibc = pytest.mark.skipif(allocator.glibc_function("malloc_trim") is None, reason="glibc only")

# Allocates `count` blocks of `block` bytes with malloc, each followed by a small block that stays allocated, writes
# every page, frees the large blocks and prints the RSS growth left after the frees (and after a trim). In "heap"
# mode glibc is first told to serve such blocks from its heap and never to shrink the heap by itself (a large mmap and
# trim threshold): the state a long transcription reached once glibc had raised its dynamic threshold.
_PROBE = r"""
import ctypes, json, sys
from mt3 import allocator
mode, block, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
if mode.startswith("heap"):
    assert libc.mallopt(-3, 256 << 20) == 1  # M_MMAP_THRESHOLD
    assert libc.mallopt(-1, 1 << 30) == 1  # M_TRIM_THRESHOLD
if mode == "heap_threshold":
    assert allocator.release_large_buffers()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
before = rss()
blocks, pins = [], []
for _ in range(count):
    p = libc.malloc(block)
    ctypes.memset(p, 1, block)
    blocks.append(p)
    pins.append(libc.malloc(64))
grown = rss()
for p in blocks:
    libc.free(p)
after_free = rss()
released = allocator.release_free_memory() if mode == "heap_trim" else None
print(json.dumps({"grown_mb": (grown - before) / 2**20, "kept_mb": (after_free - before) / 2**20,
                  "after_mb": (rss() - before) / 2**20, "released": released}))
"""


def _probe(mode: str, block: int = 3 << 20, count: int = 16) -> dict:
    run = subprocess.run([sys.executable, "-c", _PROBE, mode, str(block), str(count)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@glibc
def test_trimming_returns_freed_heap_blocks_to_the_os():
    # 16 x 3 MB written and freed inside the heap stay resident (what a long transcription's caches did) ...
    kept = _probe("heap")
    assert kept["grown_mb"] > 40 and kept["kept_mb"] > 40
    # ... and release_free_memory (called after every decoded batch) hands them back without changing any setting.
    trimmed = _probe("heap_trim")
    assert trimmed["kept_mb"] > 40 and trimmed["released"] is True and trimmed["after_mb"] < 8


@glibc
def test_a_fixed_mmap_threshold_unmaps_large_blocks_on_free():
    # Where glibc would serve 3 MB blocks from its heap (as once its dynamic threshold has risen), the fixed 1 MB
    # threshold of `mt3 transcribe` maps them instead, and unmaps them on free.
    probe = _probe("heap_threshold")
    assert probe["grown_mb"] > 40 and probe["kept_mb"] < 8


def test_a_users_malloc_setting_wins(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "65536")
    assert allocator.release_large_buffers() is False
