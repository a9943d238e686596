"""Held-out sets that do not share our arrangement style (issue 27, section 1), built from music21 scores directly.

Our `multi` set is made by `mt3.corpus.arrangement`, the same module that makes the training data, so it flatters the
model. These sets keep each score as its composer wrote it; only music21's parsing helpers of the arrangement module
are reused (repeat expansion, tied-note merging, keyboard staff grouping, note cleaning), never `arrange()` (no GM
theme draw, no transposition, no drums/bass/comping, no tempo jitter):

- `plain`: test-split pieces (string quartets, chorales, madrigals, Palestrina, Trecento) in their own instrumentation:
  each part on the GM program of its own music21 instrument (`midiProgram`), else `NAME_PROGRAMS` by part/instrument
  name (voices -> 53 voice oohs, horn -> 60, ...), else a keyboard staff -> 0, else `CATEGORY_PROGRAMS`. Notes as
  written (95 % articulation, velocity 80), the written tempo (music21's marks, else the builder's category default).
- `piano_dense`: the test-split keyboard works (every part a keyboard staff or a piano program: found by parsing, not
  by a list) in two 30 s windows each, plus piano reductions (every part on program 0) of the densest `plain` excerpts
  (most notes per second).
- `performance`: humanised test-split pieces (`humanise`): a smooth tempo curve (rubato), per-note onset jitter,
  articulation variety, phrase-arched dynamics with per-note velocity noise, and sustain pedal (CC 64, bar-wise legato
  pedalling) on keyboard parts. The MIDI rendered holds the pedal; the labels have it applied to the offsets, as every
  converter's records do (`mt3.converters.base.apply_sustain_and_clear`). Seeded per track: deterministic.

Every piece satisfies `mt3.corpus.builder.piece_split(source) == "test"` (checked when a track is made, not only when
pieces are chosen), so no corpus of any seed or size trains on it. All sets render with MuseScore General (the test
timbre, never heard in training) and are peak-normalised to -1 dBFS like the corpus mixes (`heldout.render_sequence`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SETS = ("plain", "piano_dense", "performance")
BANK = "MuseScore_General_Lite.sf3"  # mt3.corpus.rendering.TEST_SOUNDFONTS[0]
SEED = 27
EXCERPT_SECONDS = 25.0  # plain / performance / reductions; cut at the next barline (at most 5 s later)
PIANO_WINDOWS = ((0.0, 30.0), (30.0, 30.0))  # (start, length) seconds of each keyboard work in `piano_dense`
MIN_EXCERPT_SECONDS = 10.0
LEAD_IN_SECONDS = 0.25
PLAIN_VELOCITY = 80
PLAIN_ARTICULATION = 0.95
MAX_PARTS = 15  # rendering gives each part its own MIDI channel
# (group, how many in `plain`, how many of those also in `performance`)
GROUP_QUOTAS = (("quartet", 6, 3), ("chorale", 5, 2), ("madrigal", 3, 2), ("palestrina", 3, 1), ("trecento", 3, 1))
REDUCTIONS = 8  # piano reductions of the densest plain excerpts in `piano_dense`
KEYBOARD_CATEGORIES = ("romantic", "popular", "quartet", "modern", "baroque")  # where keyboard works are looked for

# A sung part: GM 53 "voice oohs", the program music21's own Vocalist/Soprano/Alto/Tenor/Bass classes carry. Not 52
# "choir aahs": MuseScore General's choir pad reaches -6 dB of its peak ~200 ms after note-on (voice oohs ~90 ms) and
# legato repeats make no new attack, so a first build with 52 left both systems at onset F1 ~0.05-0.08 on every vocal
# piece (no signal); with 53 both score ~0.3-0.45 there (benchmarks/results/heldout_sets_local_cpu_82380.md).
VOICE = 53
# Fallback programs by part/instrument name (first keyword found wins; "double bass" before "bass", "bassoon" too).
NAME_PROGRAMS = (
    ("contrabass", 43), ("double bass", 43), ("violone", 43), ("violoncello", 42), ("cello", 42), ("viola", 41),
    ("violin", 40), ("fiddle", 40), ("harpsichord", 6), ("cembalo", 6), ("piano", 0), ("klavier", 0),
    ("organ", 19), ("continuo", 19), ("horn", 60), ("corno", 60), ("trumpet", 56), ("tromba", 56),
    ("trombone", 57), ("tuba", 58), ("flute", 73), ("flauto", 73), ("recorder", 74), ("oboe", 68),
    ("clarinet", 71), ("bassoon", 70), ("fagott", 70), ("guitar", 24), ("lute", 24), ("harp", 46),
    ("timpani", 47), ("choir", 52), ("soprano", VOICE), ("alto", VOICE), ("tenor", VOICE), ("bass", VOICE),
    ("canto", VOICE), ("cantus", VOICE), ("quint", VOICE), ("sext", VOICE), ("superius", VOICE), ("contra", VOICE),
    ("triplum", VOICE), ("motetus", VOICE), ("voice", VOICE), ("voce", VOICE),
)
# Last resort, by the builder's category: vocal repertoire -> voices, quartets -> string ensemble, else piano.
CATEGORY_PROGRAMS = {"chorale": VOICE, "renaissance": VOICE, "folk": VOICE, "quartet": 48, "baroque": 48,
                     "romantic": 0, "popular": 0, "modern": 0}

# Humanisation bounds (`humanise`; the tests check them).
RUBATO_DEPTH = (0.08, 0.05)  # max amplitude (natural log of speed) of the slow and the fast tempo sinusoid
MAX_SPEED_LOG = sum(RUBATO_DEPTH)  # local tempo stays within exp(+-0.13) = 0.88x..1.14x of the written one
JITTER_SD = (0.008, 0.020)  # per-track onset jitter sd range (s); each offset clipped to +-3 sd
MAX_JITTER = 3 * JITTER_SD[1]
VELOCITY_RANGE = (20, 127)
PEDAL_BAR_FRACTION = 0.85  # bars pedalled on keyboard parts


@dataclass(frozen=True)
class Part:
    name: str
    program: int
    keyboard: bool
    notes: np.ndarray  # float [n, 3]: start s, end s, MIDI pitch; excerpt time at the written tempo


@dataclass(frozen=True)
class Excerpt:
    key: str  # the piece's Source.key
    category: str
    start_seconds: float  # where in the piece (written tempo) the excerpt begins
    seconds: float
    parts: tuple[Part, ...]
    bars: np.ndarray = field(repr=False)  # barline times inside the excerpt (s)

    @property
    def notes_per_second(self) -> float:
        return sum(len(p.notes) for p in self.parts) / self.seconds

    @property
    def programs(self) -> list[int]:
        return sorted({p.program for p in self.parts})


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


def part_program(part, keyboard: bool, category: str) -> int:
    """The GM program of a music21 part's own instrument (see the module docstring for the fallback order)."""
    inst = part.getInstrument(returnDefault=False)
    if inst is not None and inst.midiProgram is not None:
        return int(inst.midiProgram)
    text = " ".join(str(x or "") for x in (part.partName, inst.instrumentName if inst else None,
                                            inst.partName if inst else None)).lower()
    for word, program in NAME_PROGRAMS:
        if word in text:
            return program
    return 0 if keyboard else CATEGORY_PROGRAMS.get(category, 0)


@functools.lru_cache(maxsize=64)
def read_excerpt(source, start_seconds: float = 0.0, target_seconds: float = EXCERPT_SECONDS) -> Excerpt:
    """`source` from the first barline at or after `start_seconds`, cut at a barline about `target_seconds` later.

    Raises `arrangement.SkipPiece` when the score is unusable or has too little music after `start_seconds`.
    """
    from music21 import stream

    from mt3.corpus import arrangement as arr

    check_test_split(source)
    score = arr.load_score(source.path, source.number)
    tmap = arr._tempo_map(score, source.category, 1.0)
    score = arr._expand_opening(score, float(tmap.quarters(start_seconds + target_seconds + 6.0)))
    tmap = arr._tempo_map(score, source.category, 1.0)
    parts = list(score.parts)
    if not parts:
        raise arr.SkipPiece("score has no parts")
    highest = float(score.highestTime)
    bar_ql = [float(m.offset) for m in parts[0].getElementsByClass(stream.Measure)] or [0.0]
    bar_sec = np.asarray(tmap.seconds(np.array(bar_ql + [highest])), float)
    total = float(bar_sec[-1])
    begin = 0.0 if start_seconds <= 0 else next((float(b) for b in bar_sec if b >= start_seconds - 1e-6), total)
    if total - begin < MIN_EXCERPT_SECONDS:
        raise arr.SkipPiece(f"only {total - begin:.1f} s of music after {start_seconds:.0f} s")
    if total <= begin + target_seconds + 5.0:
        end = total
    else:
        later = [float(b) for b in bar_sec if begin + target_seconds <= b <= begin + target_seconds + 5.0]
        end = later[0] if later else begin + target_seconds
    begin_ql, end_ql = float(tmap.quarters(begin)) - 1e-9, float(tmap.quarters(end)) - 1e-9
    out = []
    for kind, staffs in arr._group_parts(parts):
        notes = [n for st in staffs for n in arr._part_notes(st, end_ql) if n[0] >= begin_ql]
        if not notes:
            continue
        a = np.asarray(notes, float)
        on = tmap.seconds(a[:, 0]) - begin
        off = np.minimum(tmap.seconds(a[:, 1]), end) - begin
        keyboard = kind == "keys"
        out.append(Part(name=(staffs[0].partName or "").strip(), program=part_program(staffs[0], keyboard,
                                                                                       source.category),
                        keyboard=keyboard, notes=np.stack([on, off, a[:, 2]], axis=1)))
    if not out:
        raise arr.SkipPiece("no pitched notes in the excerpt")
    if len(out) > MAX_PARTS:
        raise arr.SkipPiece(f"{len(out)} parts: more than {MAX_PARTS} MIDI channels")
    bars = bar_sec[(bar_sec >= begin - 1e-6) & (bar_sec < end - 1e-6)] - begin
    return Excerpt(source.key, source.category, round(begin, 3), round(end - begin, 3), tuple(out), bars)


def is_keyboard_work(excerpt: Excerpt) -> bool:
    """Every part is a keyboard staff group or on a piano program (GM 0-7)."""
    return all(p.keyboard or p.program < 8 for p in excerpt.parts)


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
# notes -> NoteSequences


def _sequence(parts: list[tuple[int, np.ndarray, np.ndarray]], pedals: dict[int, list] | None = None):
    """A NoteSequence from (program, [n, 3] start/end/pitch, velocities) per part, instrument = part index (so two
    parts on one program stay two MIDI channels), plus sustain CCs per part index. Same-pitch overlaps trimmed and
    notes under 20 ms dropped (`arrangement._clean_notes`)."""
    import note_seq

    from mt3.corpus import arrangement as arr

    ns = note_seq.NoteSequence(ticks_per_quarter=note_seq.STANDARD_PPQ)
    ns.tempos.add(time=0.0, qpm=120.0)
    for index, (program, notes, velocity) in enumerate(parts):
        for n in arr._clean_notes(notes[:, 0], notes[:, 1], notes[:, 2].astype(int), velocity):
            ns.notes.add(pitch=n.pitch, velocity=n.velocity, start_time=n.start, end_time=n.end, program=program,
                         instrument=index, is_drum=False)
        for time, value in (pedals or {}).get(index, []):
            ns.control_changes.add(time=time, control_number=64, control_value=value, program=program,
                                   instrument=index)
    ns.total_time = max(n.end_time for n in ns.notes)
    return ns


def plain_sequence(excerpt: Excerpt, *, program: int | None = None):
    """The excerpt as written (velocity 80, 95 % articulation); `program` set: every part on it (a reduction)."""
    parts = []
    for p in excerpt.parts:
        a = p.notes.copy()
        a[:, 0] += LEAD_IN_SECONDS
        a[:, 1] = a[:, 0] + (p.notes[:, 1] - p.notes[:, 0]) * PLAIN_ARTICULATION
        parts.append((p.program if program is None else program, a, np.full(len(a), PLAIN_VELOCITY)))
    return _sequence(parts)


@dataclass(frozen=True)
class Warp:
    """Rubato: performed time = integral of exp(speed_log(t)) over written time t (a smooth, monotone tempo curve)."""

    amplitudes: tuple[float, float]
    periods: tuple[float, float]
    phases: tuple[float, float]
    step: float = 0.005

    def speed_log(self, t: np.ndarray) -> np.ndarray:
        return sum(a * np.sin(2 * np.pi * t / p + ph) for a, p, ph in zip(self.amplitudes, self.periods, self.phases))

    def __call__(self, t) -> np.ndarray:
        t = np.asarray(t, float)
        grid = np.arange(0.0, float(t.max(initial=0.0)) + 2 * self.step, self.step)
        performed = np.concatenate([[0.0], np.cumsum(np.exp(self.speed_log(grid[:-1] + self.step / 2)) * self.step)])
        return np.interp(t, grid, performed)


def humanise(excerpt: Excerpt, seed: int):
    """(rendered NoteSequence with pedal CCs, label NoteSequence with the pedal applied, facts) for `excerpt`.

    Bounds (module constants): local tempo within exp(+-MAX_SPEED_LOG) of the written one; onsets within MAX_JITTER of
    the warped written onset; velocities in VELOCITY_RANGE; offsets never before onsets + 20 ms.
    """
    from mt3.converters.base import apply_sustain_and_clear

    rng = np.random.default_rng([SEED, seed])
    warp = Warp(amplitudes=tuple(float(rng.uniform(0.5, 1.0) * d) for d in RUBATO_DEPTH),
                periods=(float(rng.uniform(8.0, 16.0)), float(rng.uniform(3.0, 6.0))),
                phases=tuple(float(x) for x in rng.uniform(0, 2 * np.pi, 2)))
    jitter_sd = float(rng.uniform(*JITTER_SD))
    phrase = float(rng.uniform(4.0, 8.0))  # seconds per dynamic arch
    slow = (float(rng.uniform(15.0, 30.0)), float(rng.uniform(0, 2 * np.pi)))
    bars = warp(excerpt.bars)
    parts, pedals = [], {}
    for index, p in enumerate(excerpt.parts):
        on_w, off_w = warp(p.notes[:, 0]), warp(p.notes[:, 1])
        jitter = np.clip(rng.normal(0.0, jitter_sd, len(on_w)), -3 * jitter_sd, 3 * jitter_sd)
        start = on_w + jitter + LEAD_IN_SECONDS
        articulation = np.clip(rng.uniform(0.80, 0.97) + rng.normal(0.0, 0.05, len(on_w)), 0.6, 1.0)
        end = start + np.maximum((off_w - on_w) * articulation, 0.02)
        arch = rng.uniform(8.0, 22.0) * np.sin(np.pi * ((on_w / phrase) % 1.0))
        on_bar = np.isin(np.round(p.notes[:, 0], 4), np.round(excerpt.bars, 4))
        velocity = (rng.uniform(55.0, 80.0) + arch + 8.0 * np.sin(2 * np.pi * on_w / slow[0] + slow[1]) + 5.0 * on_bar
                    + np.clip(rng.normal(0.0, 5.0, len(on_w)), -12.0, 12.0))
        velocity = np.clip(np.round(velocity), *VELOCITY_RANGE).astype(int)
        parts.append((p.program, np.stack([start, end, p.notes[:, 2]], axis=1), velocity))
        if p.keyboard:
            pedals[index] = pedal_events(rng, bars + LEAD_IN_SECONDS, float(end.max()))
    rendered = _sequence(parts, pedals)
    labels = apply_sustain_and_clear(rendered)
    facts = {"rubato": {"amplitudes": list(warp.amplitudes), "periods": list(warp.periods),
                        "phases": list(warp.phases)},
             "jitter_sd": jitter_sd, "phrase_seconds": phrase, "pedal_parts": sorted(pedals)}
    return rendered, labels, facts


def pedal_events(rng, bar_times: np.ndarray, last: float) -> list[tuple[float, int]]:
    """Legato pedalling: down 30-120 ms after a barline, up 0-30 ms before the next; ~15 % of bars left dry."""
    edges = np.append(bar_times, max(last, float(bar_times[-1]) if len(bar_times) else last) + 0.5)
    events = []
    for a, b in zip(edges[:-1], edges[1:]):
        down, up = a + rng.uniform(0.03, 0.12), b - rng.uniform(0.0, 0.03)
        if rng.random() < PEDAL_BAR_FRACTION and up - down > 0.1:
            events += [(float(down), 127), (float(up), 0)]
    return events


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
        return [_plain_track(f"plain/{ex.key}", ex, _facts(ex, group=g)) for g, ex in plain_plan()]
    if name == "piano_dense":
        tracks = []
        for s in keyboard_works():
            for start, seconds in PIANO_WINDOWS:
                ex = _try_excerpt(s, start, seconds)
                if ex is not None:
                    tracks.append(_plain_track(f"piano_dense/{ex.key}@{ex.start_seconds:.0f}s", ex,
                                               _facts(ex, kind="keyboard work"), program=0))
        densest = sorted((ex for _, ex in plain_plan()), key=lambda ex: -ex.notes_per_second)[:REDUCTIONS]
        for ex in densest:
            tracks.append(_plain_track(f"piano_dense/{ex.key}#reduction", ex, _facts(ex, kind="piano reduction"),
                                       program=0))
        return tracks
    if name == "performance":
        quotas = {g: k for g, _, k in GROUP_QUOTAS}
        chosen: list[Excerpt] = [ex for s in keyboard_works() if (ex := _try_excerpt(s, *PIANO_WINDOWS[0]))]
        for group, ex in plain_plan():
            if quotas[group] > 0:
                chosen.append(ex)
                quotas[group] -= 1
        tracks = []
        for i, ex in enumerate(chosen):
            rendered, labels, facts = humanise(ex, seed=i)
            tracks.append(Track(f"performance/{ex.key}", rendered, labels, {**_facts(ex), **facts}))
        return tracks
    raise ValueError(f"unknown set {name!r}; choose from {', '.join(SETS)}")


def _plain_track(track_id: str, ex: Excerpt, facts: dict, program: int | None = None) -> Track:
    ns = plain_sequence(ex, program=program)
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
