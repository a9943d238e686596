"""Held-out sets that do not share our arrangement style (issue 27, section 1), built from music21 scores directly.

Our `multi` set is made by `mt3.corpus.arrangement`, the same module that makes the training data, so it flatters the
model. These sets keep each score as its composer wrote it, with the score-to-texture functions of
`mt3.corpus.textures` (excerpts at the written tempo, each part on its own instrument's program, plain sequences,
piano reductions, `humanise`), never `arrange()` (no GM theme draw, no transposition, no drums/bass/comping, no tempo
jitter). What is specific to the held-out sets lives here: which pieces, how many, which windows, the seeds.

- `plain`: test-split pieces (string quartets, chorales, madrigals, Palestrina, Trecento) in their own instrumentation
  (`textures.part_program`: music21's `midiProgram`, else by part/instrument name, voices -> 53 voice oohs), notes as
  written (95 % articulation, velocity 80), the written tempo.
- `piano_dense`: the test-split keyboard works (every part a keyboard staff or a piano program: found by parsing, not
  by a list) in two 30 s windows each, plus piano reductions (every part on program 0) of the densest `plain` excerpts
  (most notes per second).
- `performance`: humanised test-split pieces (`textures.humanise`, seeded [SEED, track index]): rubato, onset jitter,
  articulation variety, phrase-arched dynamics, and sustain pedal (CC 64) on keyboard parts. The MIDI rendered holds
  the pedal; the labels have it applied to the offsets, as every converter's records do. Deterministic.

Every piece satisfies `mt3.corpus.builder.piece_split(source) == "test"` (checked when a track is made, not only when
pieces are chosen), so no corpus of any seed or size trains on it. All sets render with MuseScore General (the test
timbre, never heard in training) and are peak-normalised to -1 dBFS like the corpus mixes (`heldout.render_sequence`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mt3.corpus import textures
from mt3.corpus.textures import Excerpt, is_keyboard_work

SETS = ("plain", "piano_dense", "performance")
BANK = "MuseScore_General_Lite.sf3"  # mt3.corpus.rendering.TEST_SOUNDFONTS[0]
SEED = 27
EXCERPT_SECONDS = 25.0  # plain / performance / reductions; cut at the next barline (at most 5 s later)
PIANO_WINDOWS = ((0.0, 30.0), (30.0, 30.0))  # (start, length) seconds of each keyboard work in `piano_dense`
MIN_EXCERPT_SECONDS = 10.0
MAX_PARTS = 15  # rendering gives each part its own MIDI channel
# (group, how many in `plain`, how many of those also in `performance`)
GROUP_QUOTAS = (("quartet", 6, 3), ("chorale", 5, 2), ("madrigal", 3, 2), ("palestrina", 3, 1), ("trecento", 3, 1))
REDUCTIONS = 8  # piano reductions of the densest plain excerpts in `piano_dense`
KEYBOARD_CATEGORIES = ("romantic", "popular", "quartet", "modern", "baroque")  # where keyboard works are looked for

# ---------------------------------------------------------------------------------------------------------------------
# pieces


def test_sources() -> list:
    """The builder's catalog restricted to the test split (the only pieces these sets may use)."""
    from mt3.corpus import builder

    return [s for s in builder.build_catalog() if builder.piece_split(s) == "test"]


def check_test_split(source) -> None:
    from mt3.corpus import builder

    if builder.piece_split(source) != "test":
        raise ValueError(f"{source.key} belongs to the {builder.piece_split(source)} split, not test")


def group_of(source) -> str | None:
    """The `plain` group of a test-split piece (None: not used by `plain`; keyboard works are filtered later)."""
    folder = source.path.split("/", 1)[0]
    if source.category in ("quartet", "romantic"):
        return "quartet"
    return {"bach": "chorale", "monteverdi": "madrigal", "palestrina": "palestrina", "trecento": "trecento"}.get(folder)


@functools.lru_cache(maxsize=64)
def read_excerpt(source, start_seconds: float = 0.0, target_seconds: float = EXCERPT_SECONDS) -> Excerpt:
    """`textures.read_excerpt` of a test-split piece (refused before parsing otherwise), at least
    MIN_EXCERPT_SECONDS long and at most MAX_PARTS parts (else `arrangement.SkipPiece`)."""
    from mt3.corpus import arrangement as arr

    check_test_split(source)
    excerpt = textures.read_excerpt(source, start_seconds, target_seconds, min_seconds=MIN_EXCERPT_SECONDS)
    if len(excerpt.parts) > MAX_PARTS:
        raise arr.SkipPiece(f"{len(excerpt.parts)} parts: more than {MAX_PARTS} MIDI channels")
    return excerpt


def _try_excerpt(source, start: float = 0.0, seconds: float = EXCERPT_SECONDS) -> Excerpt | None:
    import logging

    from mt3.corpus import arrangement as arr

    try:
        return read_excerpt(source, start, seconds)
    except arr.SkipPiece as err:
        logging.getLogger(__name__).warning("skipping %s at %.0f s: %s", source.key, start, err)
        return None


@functools.lru_cache(maxsize=1)
def keyboard_works() -> tuple:
    """Test-split keyboard works, found by parsing the candidate categories' pieces."""
    out = []
    for s in test_sources():
        if s.category in KEYBOARD_CATEGORIES and s.number is None:
            ex = _try_excerpt(s, *PIANO_WINDOWS[0])
            if ex is not None and is_keyboard_work(ex):
                out.append(s)
    return tuple(out)


@functools.lru_cache(maxsize=1)
def plain_plan() -> tuple[tuple[str, Excerpt], ...]:
    """(group, excerpt) of `plain`: per group, a seeded order of its test-split pieces, first `quota` usable ones."""
    keyboard = {s.key for s in keyboard_works()}
    rng = np.random.default_rng(SEED)
    out = []
    for group, quota, _ in GROUP_QUOTAS:
        pool = [s for s in test_sources() if group_of(s) == group and s.key not in keyboard]
        taken = 0
        for i in rng.permutation(len(pool)):
            if taken == quota:
                break
            ex = _try_excerpt(pool[int(i)])
            if ex is not None and not is_keyboard_work(ex):
                out.append((group, ex))
                taken += 1
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------------
# the sets


@dataclass
class Track:
    id: str
    rendered: object  # NoteSequence written to MIDI and rendered (pedal CCs kept)
    labels: object  # NoteSequence stored in the record
    facts: dict


def plan(name: str) -> list[Track]:
    """The tracks of set `name` (parses music21 scores: tens of seconds to minutes)."""
    if name == "plain":
        return [plain_track(group, ex) for group, ex in plain_plan()]
    if name == "piano_dense":
        windows = [ex for s in keyboard_works() for start, seconds in PIANO_WINDOWS
                   if (ex := _try_excerpt(s, start, seconds)) is not None]
        densest = sorted((ex for _, ex in plain_plan()), key=lambda ex: -ex.notes_per_second)[:REDUCTIONS]
        return [keyboard_track(ex) for ex in windows] + [reduction_track(ex) for ex in densest]
    if name == "performance":
        quotas = {g: k for g, _, k in GROUP_QUOTAS}
        chosen: list[Excerpt] = [ex for s in keyboard_works() if (ex := _try_excerpt(s, *PIANO_WINDOWS[0]))]
        for group, ex in plain_plan():
            if quotas[group] > 0:
                chosen.append(ex)
                quotas[group] -= 1
        return [performance_track(i, ex) for i, ex in enumerate(chosen)]
    raise ValueError(f"unknown set {name!r}; choose from {', '.join(SETS)}")


def plain_track(group: str, ex: Excerpt) -> Track:
    """A `plain` track: the excerpt as written, in its own instrumentation."""
    return _plain_track(f"plain/{ex.key}", ex, _facts(ex, group=group))


def keyboard_track(ex: Excerpt) -> Track:
    """A `piano_dense` window of a keyboard work, on piano."""
    return _plain_track(f"piano_dense/{ex.key}@{ex.start_seconds:.0f}s", ex, _facts(ex, kind="keyboard work"),
                        program=0)


def reduction_track(ex: Excerpt) -> Track:
    """A `piano_dense` piano reduction of a `plain` excerpt."""
    return _plain_track(f"piano_dense/{ex.key}#reduction", ex, _facts(ex, kind="piano reduction"), program=0)


def performance_track(index: int, ex: Excerpt) -> Track:
    """The `index`-th `performance` track: `ex` humanised with the seed [SEED, index]."""
    rendered, labels, facts = textures.humanise(ex, seed=[SEED, index])
    return Track(f"performance/{ex.key}", rendered, labels, {**_facts(ex), **facts})


def _plain_track(track_id: str, ex: Excerpt, facts: dict, program: int | None = None) -> Track:
    ns = textures.plain_sequence(ex, program=program)
    return Track(track_id, ns, ns, facts)


def _facts(ex: Excerpt, **extra) -> dict:
    return {"source": ex.key, "start_seconds": ex.start_seconds, "seconds": ex.seconds,
            "programs": [p.program for p in ex.parts], "part_names": [p.name for p in ex.parts],
            "notes_per_second": round(ex.notes_per_second, 2), **extra}


def build_set(name: str, root: Path) -> int:
    """Renders set `name` into `root/name` (split "test", dataset "heldout"); returns its track count."""
    from tqdm import tqdm

    from benchmarks.heldout import render_sequence
    from mt3.corpus.rendering import SAMPLE_RATE, TAIL_SECONDS
    from mt3.data import records

    tracks = plan(name)
    facts = []
    with records.ShardWriter(root / name, "test", "heldout", manifest_fields={"pieces": facts, "bank": BANK}) as w:
        for t in tqdm(tracks, desc=name, unit="track"):
            end = max(n.end_time for n in t.labels.notes)
            audio = render_sequence(t.rendered, BANK, int(math.ceil((end + TAIL_SECONDS) * SAMPLE_RATE)))
            w.write(records.TrackRecord(id=t.id, audio=audio, sequence=t.labels, dataset="heldout"))
            facts.append({"id": t.id, **t.facts})
    return len(tracks)
