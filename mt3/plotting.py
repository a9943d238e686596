"""Piano-roll and metric-curve PNGs for `mt3 eval`, `mt3 transcribe --png` and `mt3 serve`.

A transcription's piano roll has one row per General MIDI family (drums last), note names on its pitch axis, a legend
per row (at most the family's 8 programs, so never taller than its row) and no colour used twice; a long file gets an
overview of the whole file above detail windows (`detail_windows`), so a 20-minute, 40-program file reads as well as
a 10 s piano clip.

Why: a transcription is judged by eye first (which instrument got which notes, where the estimate drifts from the
reference). matplotlib is imported lazily and only through the object API with an Agg canvas, so plotting works on
headless GPU hosts, never touches pyplot's global state, and `import mt3.plotting` stays cheap. Every PNG is rendered to
memory and then written with `mt3.data.records.atomic_write`, so a crash never leaves a truncated image.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DRUMS_LABEL = "Drums"
MIN_BAR_SECONDS = 0.05  # drum hits and very short notes stay visible
FULL_VIEW_SECONDS = 45.0  # files up to this long are drawn whole; longer ones get an overview + detail windows
DETAIL_SECONDS = 15.0  # each detail window: ~1 cm per second on the PNG, so 16th notes at 120 bpm stay apart
DETAIL_WINDOWS = 3
_DPI = 100
_LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": "small", "borderaxespad": 0.0}


def instrument_label(program: int, is_drum: bool) -> str:
    """Legend label of a note's instrument: the GM program name, or 'Drums'."""
    import pretty_midi

    return DRUMS_LABEL if is_drum else pretty_midi.program_to_instrument_name(int(program))


def instrument_labels(*sequences) -> list[str]:
    """Distinct instrument labels of the given NoteSequences in a stable order (GM program order, drums last)."""
    keys = sorted({(bool(n.is_drum), 0 if n.is_drum else int(n.program)) for ns in sequences for n in ns.notes})
    return [instrument_label(program, is_drum) for is_drum, program in keys]


def family_label(program: int, is_drum: bool) -> str:
    """The row a note is drawn in: its General MIDI family ('Piano', 'Guitar', 'Bass', 'Strings', ...) or 'Drums'."""
    import pretty_midi

    return DRUMS_LABEL if is_drum else pretty_midi.program_to_instrument_class(int(program))


def note_name(pitch: int) -> str:
    """MIDI pitch -> scientific note name (60 -> 'C4'), as the pitch axes and the upload page label it."""
    return f"{_PITCH_CLASSES[int(pitch) % 12]}{int(pitch) // 12 - 1}"


_PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def distinct_colours(n: int) -> list[str]:
    """`n` different colours (hex), the same first k for every n >= k, so a figure never repeats a colour and the
    upload page can colour programs exactly as the PNG does: tab10, then tab20's light shades, tab20b, tab20c (60),
    then golden-ratio hues at alternating saturation/value for the rest (MT3 has 128 programs + drums)."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb, to_hex

    tab20 = colormaps["tab20"]
    out = [to_hex(colormaps["tab10"](i)) for i in range(10)] + [to_hex(tab20(i)) for i in range(1, 20, 2)]
    out += [to_hex(colormaps[name](i)) for name in ("tab20b", "tab20c") for i in range(20)]
    i = 0
    while len(out) < n:
        colour = to_hex(hsv_to_rgb(((i * 0.618034) % 1.0, (0.9, 0.55)[i % 2], (0.85, 0.6, 0.45)[i % 3])))
        if colour not in out:
            out.append(colour)
        i += 1
    return out[:n]


def _colours(labels: Sequence[str]) -> dict[str, str]:
    return dict(zip(labels, distinct_colours(len(labels)), strict=True))


def _new_figure(rows: int = 1, *, height: float = 4.5, width: float = 12.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * rows), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _bar_end(n) -> float:
    return max(float(n.end_time), float(n.start_time) + MIN_BAR_SECONDS)


def _add_bars(ax, notes, colours: Mapping[str, str], y_of=lambda n: float(n.pitch), half_height: float = 0.4) -> None:
    """Every note as a horizontal bar, one PolyCollection per instrument (fast for 10^4 notes)."""
    from matplotlib.collections import PolyCollection

    boxes: dict[str, list] = {}
    for n in notes:
        start, end, y = float(n.start_time), _bar_end(n), y_of(n)
        boxes.setdefault(instrument_label(n.program, n.is_drum), []).append(
            [(start, y - half_height), (end, y - half_height), (end, y + half_height), (start, y + half_height)])
    for label, verts in boxes.items():
        ax.add_collection(PolyCollection(verts, facecolors=[colours[label]], edgecolors="none", label=label))


def _pitch_axis(ax, low: int, high: int) -> None:
    """Note names on the pitch axis at whole pitches: every pitch over an octave or less, C/E/G# up to 2.5 octaves,
    each C beyond; a faint line per C so octaves read at a glance."""
    if high - low < 6:  # a lone note or a narrow part: a few semitones of context, not one bar filling the row
        low, high = min(low, (low + high) // 2 - 3), max(high, (low + high) // 2 + 3)
    span = high - low
    classes = range(12) if span <= 6 else range(0, 12, 2) if span <= 14 else (0, 4, 8) if span <= 30 else (0,)
    ticks = [p for p in range(low, high + 1) if p % 12 in classes] or [low]
    ax.set_yticks(ticks, [note_name(p) for p in ticks])
    ax.set_ylim(low - 1, high + 1)
    ax.grid(True, axis="y", alpha=0.25)


def _drum_lanes(notes) -> list[int]:
    """The drum pitches played, in order: one evenly spaced lane each (a kick at 36 and a crash at 49 are not 13
    semitones apart in any useful sense, and adjacent GM drum names would overlap)."""
    return sorted({int(n.pitch) for n in notes})


def _drum_axis(ax, played: Sequence[int]) -> None:
    """GM drum names (e.g. 'Acoustic Snare') on the drum lanes."""
    import pretty_midi

    ax.set_yticks(range(len(played)), [pretty_midi.note_number_to_drum_name(p) or str(p) for p in played],
                  fontsize="x-small")
    ax.set_ylim(-1, len(played))
    ax.grid(True, axis="y", alpha=0.25)


def _time_axis(ax, start: float, end: float) -> None:
    """Seconds, shown as m:ss once a file is longer than a minute."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xlim(start, end)
    if end > 60.0:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{int(t // 60)}:{int(t % 60):02d}"))
    ax.grid(True, axis="x", alpha=0.25)


def _clock(t: float) -> str:
    return f"{int(t // 60)}:{t % 60:04.1f}" if t >= 60 else f"{t:.1f} s"


@dataclass(frozen=True)
class _Family:
    label: str
    notes: list
    instruments: list[str]  # legend labels, GM program order
    low: int
    high: int


def _families(ns) -> list[_Family]:
    """The instrument families present, in GM order with drums last; each with its notes and instruments."""
    groups: dict[tuple[bool, int], list] = {}
    for n in ns.notes:
        groups.setdefault((bool(n.is_drum), 0 if n.is_drum else int(n.program) // 8), []).append(n)
    out = []
    for (_, _), notes in sorted(groups.items()):
        keys = sorted({0 if n.is_drum else int(n.program) for n in notes})
        first = notes[0]
        out.append(_Family(label=family_label(first.program, first.is_drum), notes=notes,
                           instruments=[instrument_label(p, first.is_drum) for p in keys],
                           low=min(n.pitch for n in notes), high=max(n.pitch for n in notes)))
    return out


def detail_windows(seconds: float, families: Sequence[_Family] = ()) -> list[tuple[float, float]]:
    """The time spans the detail columns show: the whole file up to FULL_VIEW_SECONDS, else DETAIL_WINDOWS windows of
    DETAIL_SECONDS (an overview row above them shows the whole file). Windows are picked greedily so that every family
    appears in one where possible: each next window (on a 5 s grid, not overlapping the others) adds the most notes of
    families not shown yet (each family counted up to 8 notes, so a part outweighs a stray note), then holds the most
    notes; without `families` they sit at the beginning, middle and end."""
    if seconds <= FULL_VIEW_SECONDS:
        return [(0.0, max(seconds, 1e-3))]
    if not families:
        return [(float(s), float(s) + DETAIL_SECONDS)
                for s in np.linspace(0.0, seconds - DETAIL_SECONDS, DETAIL_WINDOWS)]
    last = seconds - DETAIL_SECONDS
    starts = np.unique(np.append(np.arange(0.0, last, DETAIL_SECONDS / 3), last))
    # notes per (family, candidate window): a note counts where it sounds inside the window
    counts = np.stack([((np.array([float(n.start_time) for n in f.notes])[:, None] < starts[None, :] + DETAIL_SECONDS)
                        & (np.array([_bar_end(n) for n in f.notes])[:, None] > starts[None, :])).sum(axis=0)
                       for f in families])  # [families, candidates]
    chosen: list[int] = []
    shown = np.zeros(len(families), bool)
    for _ in range(DETAIL_WINDOWS):
        free = [i for i in range(len(starts)) if all(abs(starts[i] - starts[j]) >= DETAIL_SECONDS for j in chosen)]
        if not free:
            break
        # families not shown yet, each counted up to 8 notes (a family's one stray note weighs less than a part)
        best = max(free, key=lambda i: (int(np.minimum(counts[:, i], 8)[~shown].sum()), int(counts[:, i].sum()), -i))
        chosen.append(best)
        shown |= counts[:, best] > 0
    return [(float(starts[i]), float(starts[i]) + DETAIL_SECONDS) for i in sorted(chosen)]


def _row_height(family: _Family) -> float:
    """Inches: enough for the family's legend (one entry per program, at most 8) and ~0.045 in per semitone, so a
    piano's 5 octaves get taller rows than a bass line."""
    if family.label == DRUMS_LABEL:
        return max(1.3, 0.16 * len(_drum_lanes(family.notes)) + 0.3)
    return max(1.3, min(3.2, 0.045 * (family.high - family.low + 3)), 0.2 * len(family.instruments) + 0.4)


def _legend(ax, labels: Sequence[str], colours: Mapping[str, str], max_rows: int) -> None:
    """A legend right of `ax`, in as many columns as keep it within `max_rows` entries (never taller than the plot)."""
    from matplotlib.patches import Patch

    ncol = max(1, -(-len(labels) // max(1, max_rows)))
    ax.legend(handles=[Patch(facecolor=colours[label], label=label) for label in labels], ncol=ncol, **_LEGEND_OUTSIDE)


def piano_roll_figure(ns, *, title: str | None = None, seconds: float | None = None):
    """A piano roll readable at any length and instrument count: one row per GM instrument family (drums last) with
    note names (drum names) on its pitch axis and a legend of that family's programs; no colour repeats in the figure.
    Files up to FULL_VIEW_SECONDS show whole; longer ones get an overview row (every family as a lane, the detail
    windows shaded) above DETAIL_WINDOWS detail columns of DETAIL_SECONDS each (beginning, middle, end). The time axis
    spans `seconds` (the audio's duration) when given, or at least the notes."""
    end = max([float(seconds or 0.0), *(_bar_end(n) for n in ns.notes)])
    if not ns.notes:
        fig = _new_figure()
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "(no notes)", ha="center", va="center", transform=ax.transAxes)
        if end > 0:
            ax.set_xlim(0.0, end)
        ax.set_xlabel("time (s)")
        if title:
            ax.set_title(displayable(title))
        return fig
    families = _families(ns)
    colours = _colours([label for f in families for label in f.instruments])
    windows = detail_windows(end, families)
    overview = len(windows) > 1
    heights = ([0.45 * len(families) + 0.9] if overview else []) + [_row_height(f) for f in families]
    gaps = 0.5 * len(heights)  # inches between rows (titles, tick labels)
    total = sum(heights) + gaps + 1.2
    fig = _new_figure(height=total, width=16.0 if overview else 12.0)
    grid = fig.add_gridspec(len(heights), len(windows), height_ratios=heights, hspace=gaps / sum(heights) * len(heights)
                            / max(len(heights) - 1, 1), wspace=0.12, top=1 - 0.8 / total, bottom=0.5 / total)
    if overview:
        _draw_overview(fig.add_subplot(grid[0, :]), families, colours, end, windows)
    column_axes: list = [None] * len(windows)
    for row, family in enumerate(families, start=int(overview)):
        row_axes = []
        for col, (start, stop) in enumerate(windows):
            ax = fig.add_subplot(grid[row, col], sharex=column_axes[col], sharey=row_axes[0] if row_axes else None)
            column_axes[col] = column_axes[col] or ax
            row_axes.append(ax)
            _time_axis(ax, start, stop)
            if family.label == DRUMS_LABEL:
                lanes = _drum_lanes(family.notes)
                _add_bars(ax, family.notes, colours, y_of=lambda n, lanes=lanes: float(lanes.index(int(n.pitch))))
                _drum_axis(ax, lanes)
            else:
                _add_bars(ax, family.notes, colours)
                _pitch_axis(ax, family.low, family.high)
            if col:
                ax.tick_params(labelleft=False)
            else:
                ax.set_ylabel(family.label)
            if row == len(heights) - 1:
                ax.set_xlabel("time (s)" if stop <= 60 else "time (m:ss)")
            else:
                ax.tick_params(labelbottom=False)
            if overview and row == 1:
                ax.set_title(f"{'ABCDEFGH'[col]}: {_clock(start)} - {_clock(stop)}", fontsize="small")
        _legend(row_axes[-1], family.instruments, colours, max_rows=8)
    if title:
        fig.suptitle(displayable(title), y=1 - 0.1 / total, va="top")
    return fig


def _draw_overview(ax, families: Sequence[_Family], colours: Mapping[str, str], end: float,
                   windows: Sequence[tuple[float, float]]) -> None:
    """The whole file, one lane per family (lane height spans its pitch range), detail windows shaded and lettered."""
    lanes = len(families)
    for lane, family in enumerate(families):
        base, span = lanes - 1 - lane, max(family.high - family.low, 1)

        def y_of(n, base=base, low=family.low, span=span):
            return base + 0.1 + 0.8 * (n.pitch - low) / span

        _add_bars(ax, family.notes, colours, y_of=y_of, half_height=0.04)
    ax.set_yticks([lanes - 1 - i + 0.5 for i in range(lanes)], [f.label for f in families], fontsize="small")
    ax.set_ylim(0, lanes)
    for i, (start, stop) in enumerate(windows):
        ax.axvspan(start, stop, color="0.5", alpha=0.15, linewidth=0)
        ax.text((start + stop) / 2, lanes, "ABCDEFGH"[i], ha="center", va="bottom", fontsize="small")
    _time_axis(ax, 0.0, end)
    ax.set_title(f"Overview: whole file ({_clock(end)}); shaded: the detail windows below", fontsize="small",
                 loc="left", pad=14)


def reference_vs_estimate_figure(ref_ns, est_ns, *, title: str | None = None):
    """Two stacked piano rolls (reference above, estimate below) sharing time and pitch axes (note names) and
    instrument colours (none repeated); the legend wraps into columns rather than grow taller than the plot."""
    labels = instrument_labels(ref_ns, est_ns)
    colours = _colours(labels)
    fig = _new_figure(2, height=3.5)
    ref_ax = fig.add_subplot(2, 1, 1)
    est_ax = fig.add_subplot(2, 1, 2, sharex=ref_ax, sharey=ref_ax)
    notes = list(ref_ns.notes) + list(est_ns.notes)
    for ax, ns in ((ref_ax, ref_ns), (est_ax, est_ns)):
        _add_bars(ax, ns.notes, colours)
        if not ns.notes:
            ax.text(0.5, 0.5, "(no notes)", ha="center", va="center", transform=ax.transAxes)
    if notes:
        _time_axis(ref_ax, 0.0, max(_bar_end(n) for n in notes))
        _pitch_axis(ref_ax, min(n.pitch for n in notes), max(n.pitch for n in notes))
    ref_ax.set_title("Reference" if not title else displayable(f"{title} - reference"))
    est_ax.set_title("Estimate")
    est_ax.set_xlabel("time (s)")
    for ax in (ref_ax, est_ax):
        ax.set_ylabel("pitch")
    if labels:
        _legend(ref_ax, labels, colours, max_rows=15)
    fig.tight_layout()
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    from mt3.data.records import atomic_write

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    with atomic_write(path, "wb") as f:
        f.write(buffer.getvalue())
    return Path(path)


def displayable(text: str) -> str:
    """`text` with the characters the plotting font has no glyph for replaced by '?': a Unicode file name (CJK,
    emoji) otherwise draws boxes and makes matplotlib print a 'Glyph ... missing from font' warning per character."""
    from matplotlib import font_manager

    charmap = _font_charmap(font_manager.findfont(font_manager.FontProperties()))
    return "".join(c if ord(c) in charmap or c.isspace() else "?" for c in text)


_CHARMAPS: dict[str, frozenset[int]] = {}


def _font_charmap(path: str) -> frozenset[int]:
    if path not in _CHARMAPS:
        from matplotlib import ft2font

        _CHARMAPS[path] = frozenset(ft2font.FT2Font(path).get_charmap())
    return _CHARMAPS[path]


def metric_curves_figure(steps: Sequence[int], curves: Mapping[str, Sequence[float | None]], *,
                         title: str | None = None, ylabel: str = "score"):
    """A Figure with one line per metric against training step (None values become gaps)."""
    steps_arr = np.asarray(steps, dtype=np.float64)
    fig = _new_figure(height=4.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, values in curves.items():
        if len(values) != len(steps_arr):
            raise ValueError(f"metric {name!r} has {len(values)} values for {len(steps_arr)} steps")
        ys = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        ax.plot(steps_arr, ys, marker="o", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.25)
    if curves:
        ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(displayable(title))
    return fig


def plot_piano_roll(ns, path: str | os.PathLike, *, title: str | None = None, seconds: float | None = None) -> Path:
    """Writes `ns` as a piano-roll PNG at `path` (atomically), the time axis spanning `seconds` (the audio's duration)
    when given; returns the path."""
    return _save(piano_roll_figure(ns, title=title, seconds=seconds), path)


def plot_reference_vs_estimate(ref_ns, est_ns, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Writes reference and estimate as two stacked piano rolls sharing axes to a PNG at `path`; returns the path."""
    return _save(reference_vs_estimate_figure(ref_ns, est_ns, title=title), path)


def plot_metric_curves(steps: Sequence[int], curves: Mapping[str, Sequence[float | None]], path: str | os.PathLike,
                       *, title: str | None = None, ylabel: str = "score") -> Path:
    """Writes metric-vs-step lines (e.g. {"onset_f1": [...], "multi_instrument_f1": [...]}) to a PNG; returns path."""
    return _save(metric_curves_figure(steps, curves, title=title, ylabel=ylabel), path)
