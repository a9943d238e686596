"""The model that ships inside the package, so `mt3 transcribe` and `mt3 serve` work with no checkpoint flag.

`default_model_dir()` is the one place commands and the Python API ask for "the default model".
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_NAME = "local_small"
FALLBACK_RUN_DIR = "runs/local_tiny"  # the quickstart's model dir, used only when no bundled model is installed


def default_model_dir() -> Path:
    """The bundled model's directory when it ships with the package, else the quickstart's run directory."""
    bundled = BUNDLED_DIR / DEFAULT_MODEL_NAME
    if (bundled / "config.gin").is_file():
        return bundled
    return Path(FALLBACK_RUN_DIR)
