"""Score textures besides `arrangement.arrange`'s GM band: a music21 score as written, reduced to piano, or performed.

Why: a model trained only on arranged tracks (random GM band, drums, transposition, tempo jitter) lags badly on plain
score instrumentations, dense solo piano and humanised performances (issue 27). The held-out sets of
`benchmarks/heldout_sets.py` (test-split pieces) and the corpus builder's `--textures` option (any split, each piece
in its own split) both make those textures with the functions here, so the training textures are the measured ones.

- `read_excerpt`: a score from a barline, cut at a barline about `target_seconds` later, at the written tempo (music21's
  marks, else the builder's category default); each part (a keyboard's staves joined) on the GM program of its own
  instrument (`part_program`). Only music21 parsing helpers of `arrangement` are used: no theme draw, no transposition,
  no drums, no tempo jitter.
- `plain_sequence`: the excerpt as written (velocity 80, 95 % articulation); with `program`, every part on it (a piano
  reduction when 0).
- `humanise`: a performance: a smooth tempo curve (rubato, `Warp`), per-note onset jitter, articulation variety,
  phrase-arched dynamics with per-note velocity noise, and legato sustain pedal (CC 64, `pedal_events`) on keyboard
  parts. The rendered sequence holds the pedal; the labels have it applied as every converter's records do.
- `texture_arrangement`: one of these as an `arrangement.Arrangement` (one stem per part), what the builder renders.

Everything random is drawn from the seed it is given, so a texture is deterministic per track.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from mt3.corpus import arrangement as arr

TEXTURES = ("arranged", "plain", "piano", "performance")  # what `mt3 build-corpus --textures` may mix
LEAD_IN_SECONDS = 0.25
PLAIN_VELOCITY = 80
PLAIN_ARTICULATION = 0.95
PERFORMED_REDUCTION_FRACTION = 0.5  # `performance` tracks of the corpus that perform a piano reduction, not the parts

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
    qpm: float = 120.0  # written tempo where the excerpt begins (only the MIDI files' tempo; times are in seconds)

    @property
    def notes_per_second(self) -> float:
        return sum(len(p.notes) for p in self.parts) / self.seconds

    @property
    def programs(self) -> list[int]:
        return sorted({p.program for p in self.parts})


# ---------------------------------------------------------------------------------------------------------------------
# score -> excerpt


def part_program(part, keyboard: bool, category: str) -> int:
    """The GM program of a music21 part's own instrument (`midiProgram`), else `NAME_PROGRAMS` by part/instrument
    name (voices -> 53 voice oohs, horn -> 60, ...), else a keyboard staff -> 0, else `CATEGORY_PROGRAMS`."""
    inst = part.getInstrument(returnDefault=False)
    if inst is not None and inst.midiProgram is not None:
        return int(inst.midiProgram)
    text = " ".join(str(x or "") for x in (part.partName, inst.instrumentName if inst else None,
                                            inst.partName if inst else None)).lower()
    for word, program in NAME_PROGRAMS:
        if word in text:
            return program
    return 0 if keyboard else CATEGORY_PROGRAMS.get(category, 0)


def read_excerpt(source, start_seconds: float = 0.0, target_seconds: float = 25.0, *,
                 min_seconds: float = 0.0) -> Excerpt:
    """`source` (a builder.Source) from the first barline at or after `start_seconds`, cut at the first barline
    `target_seconds` to `target_seconds + 5` later (the whole rest when that is all that is left), at the written tempo.

    Raises `arrangement.SkipPiece` when the score is unusable or has less than `min_seconds` of music after
    `start_seconds`.
    """
    from music21 import stream

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
    if total - begin < min_seconds:
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
    bars = bar_sec[(bar_sec >= begin - 1e-6) & (bar_sec < end - 1e-6)] - begin
    segment = int(np.clip(np.searchsorted(tmap.start_sec, begin, side="right") - 1, 0, len(tmap.spq) - 1))
    qpm = 60e6 / round(60e6 / (60.0 / float(tmap.spq[segment])))  # an integer microseconds-per-beat tempo
    return Excerpt(source.key, source.category, round(begin, 3), round(end - begin, 3), tuple(out), bars, qpm)


def is_keyboard_work(excerpt: Excerpt) -> bool:
    """Every part is a keyboard staff group or on a piano program (GM 0-7)."""
    return all(p.keyboard or p.program < 8 for p in excerpt.parts)


def fit_parts(excerpt: Excerpt, max_parts: int, *, program: int | None = None) -> Excerpt:
    """The excerpt with at most `max_parts` parts (rendering gives each its own MIDI channel): parts that will sound on
    one program (`program`, else their own) are merged in score order; if still too many, the first `max_parts - 1`
    and the lowest (last) part are kept, as `arrangement.arrange` keeps the outer voices."""
    parts = list(excerpt.parts)
    if len(parts) <= max_parts:
        return excerpt
    groups: dict[int, list[Part]] = {}
    for p in parts:
        groups.setdefault(p.program if program is None else program, []).append(p)
    merged = [Part(name="/".join(p.name for p in ps), program=ps[0].program, keyboard=any(p.keyboard for p in ps),
                   notes=np.concatenate([p.notes for p in ps])) for ps in groups.values()]
    if len(merged) > max_parts:
        merged = merged[: max_parts - 1] + merged[-1:]
    return dataclasses.replace(excerpt, parts=tuple(merged))


# ---------------------------------------------------------------------------------------------------------------------
# excerpt -> NoteSequences


def _sequence(parts: list[tuple[int, np.ndarray, np.ndarray]], pedals: dict[int, list] | None = None):
    """A NoteSequence from (program, [n, 3] start/end/pitch, velocities) per part, instrument = part index (so two
    parts on one program stay two MIDI channels), plus sustain CCs per part index. Same-pitch overlaps trimmed and
    notes under 20 ms dropped (`arrangement._clean_notes`)."""
    import note_seq

    ns = note_seq.NoteSequence(ticks_per_quarter=note_seq.STANDARD_PPQ)
    ns.tempos.add(time=0.0, qpm=120.0)
    for index, (program, notes, velocity) in enumerate(parts):
        for n in arr._clean_notes(notes[:, 0], notes[:, 1], notes[:, 2].astype(int), velocity):
            ns.notes.add(pitch=n.pitch, velocity=n.velocity, start_time=n.start, end_time=n.end, program=program,
                         instrument=index, is_drum=False)
        for time, value in (pedals or {}).get(index, []):
            ns.control_changes.add(time=time, control_number=64, control_value=value, program=program,
                                   instrument=index)
    ns.total_time = max((n.end_time for n in ns.notes), default=0.0)
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


def humanise(excerpt: Excerpt, seed, *, program: int | None = None):
    """(rendered NoteSequence with pedal CCs, label NoteSequence with the pedal applied, facts) for `excerpt`.

    `seed`: anything `numpy.random.default_rng` takes. `program` set: a reduction performed by one pianist, every part
    on `program` and all of them under one pedal; otherwise each part on its own program, keyboard parts pedalled.
    Bounds (module constants): local tempo within exp(+-MAX_SPEED_LOG) of the written one; onsets within MAX_JITTER of
    the warped written onset; velocities in VELOCITY_RANGE; offsets never before onsets + 20 ms.
    """
    from mt3.converters.base import apply_sustain_and_clear

    rng = np.random.default_rng(seed)
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
        parts.append((p.program if program is None else program, np.stack([start, end, p.notes[:, 2]], axis=1),
                      velocity))
        if p.keyboard and program is None:
            pedals[index] = pedal_events(rng, bars + LEAD_IN_SECONDS, float(end.max()))
    if program is not None:  # one player, one pedal foot: the same pedalling on every part
        shared = pedal_events(rng, bars + LEAD_IN_SECONDS, max(float(a[:, 1].max()) for _, a, _ in parts))
        pedals = dict.fromkeys(range(len(parts)), shared)
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
# texture -> stems (what the corpus builder renders)


def instruments_of(ns) -> list:
    """One `pretty_midi.Instrument` per NoteSequence instrument (a part: one stem), its notes and sustain CCs."""
    import pretty_midi

    out = []
    for index in sorted({n.instrument for n in ns.notes}):
        notes = [n for n in ns.notes if n.instrument == index]
        inst = pretty_midi.Instrument(program=notes[0].program, is_drum=False, name=arr.program_name(notes[0].program))
        inst.notes = [pretty_midi.Note(n.velocity, n.pitch, n.start_time, n.end_time) for n in notes]
        inst.control_changes = [pretty_midi.ControlChange(c.control_number, c.control_value, c.time)
                                for c in ns.control_changes if c.instrument == index]
        out.append(inst)
    return out


def texture_arrangement(source, texture: str, *, seed: int, target_seconds: float) -> arr.Arrangement:
    """`source` cut to about `target_seconds` (as `arrange` cuts it) in `texture` ("plain", "piano" or "performance"),
    one stem per part, at most `arrangement.MAX_MELODIC_STEMS`, no drums, no transposition, the written tempo.

    "performance" performs the parts on their own programs, or (PERFORMED_REDUCTION_FRACTION of tracks) a piano
    reduction under one pedal; its stems' MIDI hold the sustain CCs, which every converter applies to the labels.
    """
    if texture not in TEXTURES[1:]:
        raise ValueError(f"unknown texture {texture!r}; choose from {', '.join(TEXTURES[1:])}")
    rng = np.random.default_rng([seed, 27])
    program = 0 if texture == "piano" else None
    if texture == "performance" and rng.random() < PERFORMED_REDUCTION_FRACTION:
        program = 0
    excerpt = fit_parts(read_excerpt(source, 0.0, target_seconds), arr.MAX_MELODIC_STEMS, program=program)
    if texture == "performance":
        ns, _, _ = humanise(excerpt, [seed, 28], program=program)
    else:
        ns = plain_sequence(excerpt, program=program)
    if not ns.notes:
        raise arr.SkipPiece("no notes longer than 20 ms")
    instruments = instruments_of(ns)
    end = max([n.end for i in instruments for n in i.notes] + [c.time for i in instruments for c in i.control_changes])
    return arr.Arrangement(instruments=instruments, qpm=excerpt.qpm, end_seconds=end, transpose=0)
