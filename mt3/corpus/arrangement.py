"""A music21 score -> a multi-track GM arrangement (one `pretty_midi.Instrument` per part, plus optional drums).

Why build the MIDI ourselves instead of music21's MIDI writer: we choose every program (music21 assigns its own, and
e.g. a Clarinet part transposes), we control note lengths (20 ms minimum, no stuck voices), the file's time base
(seconds, 960 ticks per quarter: far from pretty_midi's MAX_TICK guard) and the drum channel.

Everything random comes from `numpy.random.default_rng(seed)` of the piece, in a fixed order, so a piece arranges the
same way in any worker. The performance model is deliberately simple and documented in datasets/local_corpus.md:
tempo x U(0.88, 1.12), transposition in [-5, 5] semitones kept inside each instrument's range, a slow dynamic curve
with beat accents and per-note velocity noise, onset noise of 2-10 ms (sd), articulation 80-98 % of the written
length, and on drum pieces a kick/snare/hat pattern that follows the score's meter, bars and tempo map.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

MIN_NOTE_SECONDS = 0.02  # RENDERING.md: shorter notes can leave stuck voices; also below MT3's 8 ms frame x 2
MAX_MELODIC_STEMS = 12  # rendering puts each stem on its own MIDI channel (15 melodic at most)
QPM_RANGE = (40.0, 200.0)  # written tempo marks are clipped to this before jitter (some scores mark eighths)
DEFAULT_QPM = {"chorale": 84.0, "renaissance": 132.0, "folk": 112.0}  # for scores without a tempo mark

GM_FAMILIES = ("Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Strings (continued)", "Brass",
               "Reed", "Pipe", "Synth Lead", "Synth Pad", "Sound Effects", "Ethnic", "Percussive", "Sound Effects")

# Playable (sounding) MIDI pitch range per GM program we may assign; programs not listed are never assigned.
_RANGES: dict[int, tuple[int, int]] = {
    **{p: (21, 108) for p in range(0, 8)},
    8: (60, 108), 11: (53, 89), 12: (45, 96), 13: (65, 108),
    16: (24, 96), 17: (24, 96), 19: (24, 96), 20: (36, 96), 21: (53, 89),
    **{p: (40, 88) for p in (24, 25, 26, 27, 28, 29, 30)},
    **{p: (28, 67) for p in range(32, 40)},
    40: (55, 103), 41: (48, 91), 42: (36, 76), 43: (28, 67), 44: (28, 103), 45: (28, 103), 46: (24, 103),
    48: (28, 103), 49: (28, 103), 50: (28, 103), 52: (40, 84), 53: (40, 84),
    56: (54, 86), 57: (40, 77), 58: (28, 65), 59: (54, 86), 60: (34, 77), 61: (34, 86), 62: (36, 96),
    64: (56, 88), 65: (49, 81), 66: (44, 76), 67: (36, 69), 68: (58, 93), 69: (52, 81), 70: (34, 75), 71: (50, 94),
    72: (74, 108), 73: (60, 98), 74: (60, 96), 75: (60, 96), 79: (60, 96),
    80: (36, 96), 81: (36, 96), 82: (48, 96), 85: (36, 96), 87: (28, 84), 88: (36, 96), 89: (36, 96), 90: (36, 96),
}

# Ensemble "themes": program pools per role. A piece draws one theme (category-dependent odds) so its stems sound like
# a plausible band; "mixed" allows anything.
_THEMES: dict[str, dict[str, list[int]]] = {
    "strings": {"melody": [40, 48, 49, 41, 73], "inner": [41, 40, 42, 48, 49, 44], "bass": [42, 43, 48, 45],
                "keys": [46, 0, 48]},
    "winds": {"melody": [73, 68, 71, 74, 72, 65, 64], "inner": [71, 69, 70, 65, 66, 60], "bass": [70, 67, 58, 32],
              "keys": [0, 46]},
    "brass": {"melody": [56, 59, 61, 65], "inner": [60, 57, 61, 62, 66], "bass": [57, 58, 32, 70], "keys": [0, 16]},
    "band": {"melody": [0, 4, 25, 26, 27, 80, 81, 65, 56, 73, 11], "inner": [0, 2, 4, 5, 24, 25, 26, 27, 16, 19, 88,
             89, 48, 50, 61, 28, 29, 30], "bass": [32, 33, 34, 35, 36, 38], "keys": [0, 1, 2, 4, 5, 16, 17]},
    "keys": {"melody": [0, 1, 4, 5, 6, 16, 19, 11, 12], "inner": [0, 1, 2, 4, 5, 16, 17, 19, 20, 21],
             "bass": [0, 1, 16, 19, 32, 33], "keys": [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 19]},
}
_THEMES["mixed"] = {role: sorted({p for t in _THEMES.values() for p in t[role]}) for role in _THEMES["band"]}
_THEME_ODDS = {
    "quartet": {"strings": 0.45, "winds": 0.1, "brass": 0.05, "band": 0.15, "keys": 0.1, "mixed": 0.15},
    "romantic": {"strings": 0.2, "winds": 0.1, "brass": 0.05, "band": 0.25, "keys": 0.25, "mixed": 0.15},
    "popular": {"strings": 0.1, "winds": 0.1, "brass": 0.1, "band": 0.4, "keys": 0.2, "mixed": 0.1},
}
_DEFAULT_THEME_ODDS = {"strings": 0.22, "winds": 0.18, "brass": 0.12, "band": 0.22, "keys": 0.11, "mixed": 0.15}
_FALLBACK_PROGRAMS = (0, 48, 88, 19)  # widest ranges: piano, string ensemble, pad, organ


class SkipPiece(Exception):
    """The score cannot give a usable track (malformed repeats, no pitched notes...). The piece is logged, not fatal."""


def gm_family(program: int) -> str:
    return GM_FAMILIES[program // 8]


def program_name(program: int) -> str:
    import pretty_midi

    return pretty_midi.program_to_instrument_name(program)


def copy_instrument(inst):
    """A fresh Instrument with copied notes and control changes (a performance's sustain pedal): each MIDI file we
    write owns its objects (no shared mutation)."""
    import pretty_midi

    new = pretty_midi.Instrument(program=inst.program, is_drum=inst.is_drum, name=inst.name)
    new.notes = [pretty_midi.Note(n.velocity, n.pitch, n.start, n.end) for n in inst.notes]
    new.control_changes = [pretty_midi.ControlChange(c.number, c.value, c.time) for c in inst.control_changes]
    return new


@dataclass
class Arrangement:
    instruments: list  # pretty_midi.Instrument, melodic parts top to bottom, then drums
    qpm: float  # initial tempo written into the MIDI files (times are exact in seconds either way)
    end_seconds: float  # last note-off
    transpose: int


@functools.lru_cache(maxsize=4)
def load_score(path: str, number: int | None):
    """Parses a corpus work (music21 also keeps a pickle cache of parsed files in its scratch folder)."""
    import warnings

    from music21 import corpus

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            score = corpus.parse(path, number=number) if number is not None else corpus.parse(path)
        except Exception as err:  # noqa: BLE001 - music21 raises many types for one meaning: unreadable score
            raise SkipPiece(f"music21 cannot parse it ({type(err).__name__}: {err})") from err
    if number is None and hasattr(score, "mergeScores"):  # an ABC file holding one voice per X: entry (Josquin)
        score = score.mergeScores()
    if not hasattr(score, "parts"):
        raise SkipPiece(f"not a single score ({type(score).__name__})")
    return score


class TempoMap:
    """Piecewise-constant tempo: quarter-length offsets <-> seconds."""

    def __init__(self, starts_ql: list[float], qpms: list[float]):
        self.starts = np.asarray(starts_ql, float)
        self.spq = 60.0 / np.asarray(qpms, float)
        self.start_sec = np.concatenate([[0.0], np.cumsum(np.diff(self.starts) * self.spq[:-1])])

    def seconds(self, ql):
        ql = np.asarray(ql, float)
        i = np.clip(np.searchsorted(self.starts, ql, side="right") - 1, 0, len(self.starts) - 1)
        return self.start_sec[i] + (ql - self.starts[i]) * self.spq[i]

    def quarters(self, sec):
        sec = np.asarray(sec, float)
        i = np.clip(np.searchsorted(self.start_sec, sec, side="right") - 1, 0, len(self.starts) - 1)
        return self.starts[i] + (sec - self.start_sec[i]) / self.spq[i]


def _tempo_map(score, category: str, factor: float) -> TempoMap:
    from music21 import tempo

    qpm0 = DEFAULT_QPM.get(category, 110.0)
    segments = []
    if score.recurse().getElementsByClass(tempo.MetronomeMark).first() is not None:
        for a, b, mark in score.metronomeMarkBoundaries():
            q = mark.getQuarterBPM()
            if b > a:
                segments.append((float(a), float(np.clip(q if q else qpm0, *QPM_RANGE))))
    if not segments:
        segments = [(0.0, qpm0)]
    segments[0] = (0.0, segments[0][1])
    return TempoMap([a for a, _ in segments], [q * factor for _, q in segments])


def _part_notes(part, max_ql: float) -> list[list[float]]:
    """[onset_ql, end_ql, midi] for each sounding note, tied notes merged, grace notes and unpitched skipped."""
    from music21 import chord, note

    out: list[list[float]] = []
    open_ties: dict[int, int] = {}
    for el in part.flatten().notes:
        onset = float(el.offset)
        if onset >= max_ql:
            break
        length = float(el.duration.quarterLength)
        if length <= 0 or el.duration.isGrace:
            continue
        if isinstance(el, chord.Chord):
            subs = [(n.pitch.midi, n.tie or el.tie) for n in el.notes]
        elif isinstance(el, note.Note):
            subs = [(el.pitch.midi, el.tie)]
        else:
            continue
        for midi, tie in subs:
            kind = tie.type if tie is not None else None
            if kind in ("stop", "continue") and midi in open_ties:
                out[open_ties[midi]][1] = onset + length
                if kind == "stop":
                    del open_ties[midi]
                continue
            out.append([onset, onset + length, midi])
            if kind in ("start", "continue"):
                open_ties[midi] = len(out) - 1
            else:
                open_ties.pop(midi, None)
    return out


def _group_parts(parts) -> list[tuple[str, list]]:
    """Joins the staves of one keyboard instrument (PartStaff, or consecutive 'Piano' parts as in Humdrum files)."""
    from music21 import stream

    groups: list[tuple[str, list]] = []
    prev_key = None
    for p in parts:
        name = (p.partName or "").strip()
        keyboard = isinstance(p, stream.PartStaff) or "piano" in name.lower()
        key = ("kbd", name) if keyboard else None
        if key is not None and key == prev_key:
            groups[-1][1].append(p)
        else:
            groups.append(("keys" if keyboard else "voice", [p]))
        prev_key = key
    return groups


def _choose_theme(rng: np.random.Generator, category: str) -> str:
    odds = _THEME_ODDS.get(category, _DEFAULT_THEME_ODDS)
    names = sorted(odds)
    p = np.array([odds[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _fits(program: int, lo: int, hi: int) -> bool:
    r = _RANGES.get(program)
    return r is not None and r[0] <= lo and hi <= r[1]


def _assign_programs(rng, roles, ranges, theme) -> tuple[int, list[int], list[int]]:
    """(transposition, program per part, octave shift per part); every part stays inside its program's range."""
    shifts = [0, 0, 0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5]
    k = int(rng.choice(shifts))
    for attempt in (k, 0):
        programs, octaves, ok = [], [], True
        for role, (lo, hi) in zip(roles, ranges):
            pool = list(_THEMES[theme][role])
            rng.shuffle(pool)
            choice, octave = None, 0
            for prog in pool + list(_FALLBACK_PROGRAMS):
                # Bass instruments play a written bass line an octave down, as a bass player would.
                down = -12 if prog in range(32, 40) or prog == 43 else 0
                if down and _fits(prog, lo + attempt + down, hi + attempt + down) and rng.random() < 0.8:
                    choice, octave = prog, down
                    break
                if _fits(prog, lo + attempt, hi + attempt):
                    choice = prog
                    break
            if choice is None:
                ok = False
                break
            programs.append(choice)
            octaves.append(octave)
        if ok:
            return attempt, programs, octaves
    raise SkipPiece(f"parts span {min(r[0] for r in ranges)}-{max(r[1] for r in ranges)}: no GM range fits")


def _drum_notes(rng, bars: list[tuple[float, float]], ts, tmap: TempoMap, cut_sec: float) -> list[tuple]:
    """(start_sec, pitch, velocity): kick/snare/hats following the meter (compound meters swing in threes)."""
    beats, beat_ql = int(ts.beatCount), float(ts.beatDuration.quarterLength)
    bar_ql = float(ts.barDuration.quarterLength)
    hat_ql = 0.5 if float(tmap.spq[0]) > 60.0 / 150.0 else 1.0  # eighths unless the tempo is fast
    hat = int(rng.choice([42, 42, 51, 44]))
    light = rng.random() < 0.3  # light kit: cross-stick instead of snare
    snare = 37 if light else 38
    out = []
    full = [(s, d) for s, d in bars if abs(d - bar_ql) < 1e-6]
    for b_index, (start, _) in enumerate(full):
        if tmap.seconds(start + bar_ql) > cut_sec + 1e-6:
            break
        if b_index % 8 == 0 and rng.random() < 0.7:
            out.append((start, 49, rng.integers(85, 110)))
        for b in range(beats):
            t = start + b * beat_ql
            if b == 0 or (beats == 4 and b == 2) or (beats >= 5 and b == beats // 2):
                out.append((t, 36, rng.integers(90, 115)))
            if (beats in (2, 4) and b % 2 == 1) or (beats == 3 and b == 2) or (beats >= 5 and b == beats - 1):
                out.append((t, snare, rng.integers(80, 110)))
        steps = int(round(bar_ql / hat_ql))
        for s in range(steps):
            t = start + s * hat_ql
            on_beat = abs(((t - start) / beat_ql) - round((t - start) / beat_ql)) < 1e-6
            out.append((t, hat, rng.integers(60, 85) if on_beat else rng.integers(40, 65)))
    times = tmap.seconds(np.array([t for t, _, _ in out], float)) if out else np.zeros(0)
    return [(float(sec), int(p), int(v)) for sec, (_, p, v) in zip(times, out)]


def _expand_opening(score, needed_ql: float):
    """The score with repeats expanded, for at least its first `needed_ql` written quarters.

    Expanding a whole quartet movement deep-copies it (2-6 s); we need half a minute, so first try the opening
    measures only (extended to the next end-repeat barline when the cut falls inside a repeat), and expand the whole
    score only when that fails. Expansion never drops written music, so the excerpt is at least `needed_ql` long.
    Malformed repeats in the whole score raise SkipPiece.
    """
    from music21 import bar, stream

    measures = list(score.parts[0].getElementsByClass(stream.Measure)) if score.parts else []
    if not measures:  # no measures, no repeat barlines (music21 refuses to expand such a stream)
        return score
    cut = next((i for i, m in enumerate(measures) if float(m.offset) >= needed_ql), None)
    if cut is not None:
        candidates = [cut]
        end_repeat = next((i for i, m in enumerate(measures[cut:], cut) if isinstance(m.rightBarline, bar.Repeat)
                           and m.rightBarline.direction == "end"), None)
        if end_repeat is not None:
            candidates += [end_repeat + 1, end_repeat + 4]
        for k in candidates:
            if k >= len(measures):
                break
            try:
                return score.measures(0, k, indicesNotNumbers=True).expandRepeats()
            except Exception:  # noqa: BLE001 - an excerpt can end inside a repeat structure: try a longer one
                continue
    try:
        return score.expandRepeats()
    except Exception as err:  # noqa: BLE001 - repeat.ExpanderException and friends: malformed repeats
        raise SkipPiece(f"cannot expand repeats ({type(err).__name__}: {err})") from err


def arrange(source, *, seed: int, target_seconds: float, drums: bool) -> Arrangement:
    """Parses `source` (a corpus.Source), cuts it to about `target_seconds` at a barline, and arranges it."""
    import pretty_midi
    from music21 import meter, stream

    rng = np.random.default_rng(seed)
    score = load_score(source.path, source.number)
    tempo_factor = float(rng.uniform(0.88, 1.12))
    needed_ql = float(_tempo_map(score, source.category, tempo_factor).quarters(target_seconds + 6.0))
    score = _expand_opening(score, needed_ql)
    tmap = _tempo_map(score, source.category, tempo_factor)
    parts = list(score.parts)
    if not parts:
        raise SkipPiece("score has no parts")
    bars = [(float(m.offset), float(m.duration.quarterLength)) for m in parts[0].getElementsByClass(stream.Measure)]
    total_sec = float(tmap.seconds(float(score.highestTime)))
    if total_sec <= target_seconds + 5.0:
        cut_sec = total_sec
    else:
        barlines = tmap.seconds(np.array([s for s, _ in bars] + [float(score.highestTime)]))
        later = [float(b) for b in barlines if target_seconds <= b <= target_seconds + 5.0]
        cut_sec = later[0] if later else target_seconds
    cut_ql = float(tmap.quarters(cut_sec)) - 1e-9

    groups = []
    for kind, staffs in _group_parts(parts):
        notes = [n for st in staffs for n in _part_notes(st, cut_ql)]
        if notes:
            groups.append((kind, notes))
    if not groups:
        raise SkipPiece("no pitched notes")
    mean_pitch = [np.mean([n[2] for n in notes]) for _, notes in groups]
    order = list(np.argsort(mean_pitch, kind="stable")[::-1])  # top to bottom
    if len(order) > MAX_MELODIC_STEMS:
        order = order[: MAX_MELODIC_STEMS - 1] + order[-1:]
    groups = [groups[i] for i in order]
    roles = []
    for i, (kind, _) in enumerate(groups):
        if kind == "keys":
            roles.append("keys")
        elif i == 0:
            roles.append("melody")
        elif i == len(groups) - 1:
            roles.append("bass")
        else:
            roles.append("inner")
    ranges = [(int(min(n[2] for n in ns)), int(max(n[2] for n in ns))) for _, ns in groups]
    theme = _choose_theme(rng, source.category)
    transpose, programs, octaves = _assign_programs(rng, roles, ranges, theme)

    onset_sd = float(rng.uniform(0.002, 0.010))
    lead_in = float(rng.uniform(0.05, 0.3)) + 3 * onset_sd
    periods, phases = rng.uniform([8.0, 3.0], [20.0, 7.0]), rng.uniform(0, 2 * np.pi, 2)
    ts = score.recurse().getElementsByClass(meter.TimeSignature).first() or meter.TimeSignature("4/4")
    beat_ql = float(ts.beatDuration.quarterLength)
    bar_starts = np.array([s for s, _ in bars]) if bars else np.zeros(1)

    def dynamics(t: np.ndarray) -> np.ndarray:
        return 10 * np.sin(2 * np.pi * t / periods[0] + phases[0]) + 5 * np.sin(2 * np.pi * t / periods[1] + phases[1])

    instruments = []
    base_vel = {"melody": (80, 100), "inner": (60, 85), "bass": (70, 95), "keys": (65, 95)}
    for (_kind, notes), role, prog, octave in zip(groups, roles, programs, octaves):
        a = np.array(notes, float)
        on_s, end_s = tmap.seconds(a[:, 0]), tmap.seconds(a[:, 1])
        articulation = float(rng.uniform(0.80, 0.98))
        start = on_s + rng.normal(0.0, onset_sd, len(a)) + lead_in
        end = start + (end_s - on_s) * articulation + rng.normal(0.0, 0.01, len(a))
        end = np.minimum(end, cut_sec + lead_in)
        on_bar = np.isin(np.round(a[:, 0], 6), np.round(bar_starts, 6))
        on_beat = np.abs(a[:, 0] / beat_ql - np.round(a[:, 0] / beat_ql)) < 1e-6
        vel = (rng.uniform(*base_vel[role]) + dynamics(on_s) + 8 * on_bar + 3 * on_beat
               + rng.normal(0.0, 5.0, len(a)))
        vel = np.clip(np.round(vel), 25, 127).astype(int)
        pitch = a[:, 2].astype(int) + transpose + octave
        inst = pretty_midi.Instrument(program=prog, is_drum=False, name=program_name(prog))
        inst.notes = _clean_notes(start, end, pitch, vel)
        if inst.notes:
            instruments.append(inst)
    if not instruments:
        raise SkipPiece("no notes longer than 20 ms")
    if drums:
        hits = _drum_notes(rng, bars, ts, tmap, cut_sec)
        if hits:
            t = np.array([h[0] for h in hits]) + rng.normal(0.0, 0.003, len(hits)) + lead_in
            kit = pretty_midi.Instrument(program=0, is_drum=True, name="Drums")
            kit.notes = _clean_notes(t, t + 0.1, np.array([h[1] for h in hits]), np.array([h[2] for h in hits]))
            instruments.append(kit)
    end_seconds = max(n.end for inst in instruments for n in inst.notes)
    qpm = 60e6 / round(60e6 / (60.0 / float(tmap.spq[0])))  # an integer microseconds-per-beat tempo
    return Arrangement(instruments=instruments, qpm=qpm, end_seconds=end_seconds, transpose=transpose)


def _clean_notes(start, end, pitch, velocity) -> list:
    """Sorted pretty_midi Notes; same-pitch overlaps trimmed (a re-struck note ends the last one), < 20 ms dropped."""
    import pretty_midi

    start = np.maximum(np.asarray(start, float), 0.0)
    order = np.lexsort((np.asarray(pitch), start))
    notes: list = []
    last: dict[int, object] = {}
    for i in order:
        p = int(pitch[i])
        n = pretty_midi.Note(int(velocity[i]), p, float(start[i]), float(end[i]))
        prev = last.get(p)
        if prev is not None and prev.end > n.start:
            prev.end = n.start
        notes.append(n)
        last[p] = n
    return [n for n in notes if n.end - n.start >= MIN_NOTE_SECONDS and 0 <= n.pitch <= 127]
