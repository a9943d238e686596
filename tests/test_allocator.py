"""Tests for mt3.allocator: `mt3 transcribe`'s fixed glibc mmap threshold (peak memory, docs/decoding_speed.md)."""

from __future__ import annotations

import ctypes
import sys

import pytest

from mt3 import allocator


def test_a_users_malloc_setting_wins(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "65536")
    assert allocator.release_large_buffers() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_sets_the_threshold_on_glibc(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("not glibc")
    assert allocator.release_large_buffers() is True
