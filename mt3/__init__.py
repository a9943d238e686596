"""mt3: multi-task multitrack music transcription in JAX/Flax, seqio and gin.

Heavy libraries (JAX, TensorFlow, note_seq) are imported by the modules that need them, never here, so
`import mt3` and `mt3 --help` stay instant. The Python API (`mt3.load_model`, `Transcriber`, `Transcription`, `Note`,
from `mt3/api.py`) is resolved on first attribute access (PEP 562), so even numpy waits until it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Note", "Transcriber", "Transcription", "__version__", "load_model"]

_API_NAMES = frozenset({"load_model", "Transcriber", "Transcription", "Note"})

if TYPE_CHECKING:
    from mt3.api import Note, Transcriber, Transcription, load_model


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        from mt3 import api

        return getattr(api, name)
    raise AttributeError(f"module 'mt3' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API_NAMES})
