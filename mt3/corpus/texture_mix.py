"""`mt3 build-corpus --textures arranged=0.5,plain=0.2,piano=0.2,performance=0.1`: which texture each track gets.

Why a separate seeded stream: the default mix (`arranged` only) must leave a corpus byte for byte what it was before
textures existed, so the planner's own random draws (pieces, seeds, lengths, soundfonts, drums) never change; the
texture of each track is drawn from `numpy.random.default_rng([seed, STREAM])`, and not at all for the default.
"""

from __future__ import annotations

import math

import numpy as np

from mt3.corpus.textures import TEXTURES
from mt3.errors import InputError

STREAM = 27  # the texture draw's own stream: default_rng([corpus seed, STREAM]) (issue 27)
DEFAULT = "arranged=1"


def parse(text: str) -> dict[str, float]:
    """'arranged=0.5,plain=0.2' -> {name: weight} as written; InputError (one line) on anything malformed."""
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = (x.strip() for x in item.partition("="))
        if not sep or not name:
            raise InputError(None, f"--textures: expected NAME=WEIGHT[,NAME=WEIGHT...], got {text!r}")
        if name in weights:
            raise InputError(None, f"--textures: {name!r} given twice")
        try:
            weights[name] = float(value)
        except ValueError:
            raise InputError(None, f"--textures: weight of {name!r} is not a number: {value!r}") from None
    return normalise(weights)


def normalise(weights: dict[str, float]) -> dict[str, float]:
    """Weights scaled to sum to 1, zero weights dropped, in TEXTURES order; InputError for unknown names, negative or
    non-finite weights, or no positive weight."""
    unknown = [n for n in weights if n not in TEXTURES]
    if unknown:
        raise InputError(None, f"--textures: unknown texture {unknown[0]!r}; choose from {', '.join(TEXTURES)}")
    bad = [n for n, w in weights.items() if not math.isfinite(w) or w < 0]
    if bad:
        raise InputError(None, f"--textures: weight of {bad[0]!r} must be a finite number >= 0, got {weights[bad[0]]}")
    total = sum(weights.values())
    if total <= 0:
        raise InputError(None, "--textures: at least one weight must be positive")
    return {n: weights[n] / total for n in TEXTURES if weights.get(n, 0) > 0}


def is_default(weights: dict[str, float] | None) -> bool:
    """Only `arranged`: the corpus of today (no texture draw, nothing recorded)."""
    return weights is None or set(weights) == {"arranged"}


def describe(weights: dict[str, float]) -> str:
    """The flag value that gives `weights` (for messages)."""
    return ",".join(f"{n}={w:g}" for n, w in weights.items())


def draw(rng: np.random.Generator, weights: dict[str, float]) -> str:
    """One texture, with probability its weight (one uniform draw from `rng`)."""
    names = list(weights)
    index = int(np.searchsorted(np.cumsum([weights[n] for n in names]), rng.random(), side="right"))
    return names[min(index, len(names) - 1)]
