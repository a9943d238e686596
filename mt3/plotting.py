"""Piano-roll and metric-curve PNGs for `mt3 eval`, `mt3 transcribe --png` and `mt3 serve`.

Why: a transcription is judged by eye first (which instrument got which notes, where the estimate drifts from the
reference). matplotlib is imported lazily and only through the object API with an Agg canvas, so plotting works on
headless GPU hosts, never touches pyplot's global state, and `import mt3.plotting` stays cheap. Every PNG is rendered to
memory and then written with `mt3.data.records.atomic_write`, so a crash never leaves a truncated image.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

DRUMS_LABEL = "Drums"
MIN_BAR_SECONDS = 0.05  # drum hits and very short notes stay visible
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


def _colours(labels: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if len(labels) > 10 else "tab10"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _new_figure(rows: int = 1, *, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, height * rows), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _draw_notes(ax, ns, colours: Mapping[str, tuple], seconds: float | None = None) -> None:
    """Draws every note of `ns` as a horizontal bar (one PolyCollection per instrument, fast for 10^4 notes). The time
    axis spans `seconds` (the audio's duration, as the upload page draws it) or at least the notes."""
    from matplotlib.collections import PolyCollection

    boxes: dict[str, list] = {}
    for n in ns.notes:
        start = float(n.start_time)
        end = max(float(n.end_time), start + MIN_BAR_SECONDS)
        low, high = n.pitch - 0.4, n.pitch + 0.4
        boxes.setdefault(instrument_label(n.program, n.is_drum), []).append(
            [(start, low), (end, low), (end, high), (start, high)])
    for label, verts in boxes.items():
        ax.add_collection(PolyCollection(verts, facecolors=[colours[label]], edgecolors="none", label=label))
    if ns.notes or seconds:
        ax.set_xlim(0.0, max([float(seconds or 0.0),
                              *(max(float(n.end_time), float(n.start_time) + MIN_BAR_SECONDS) for n in ns.notes)]))
    if ns.notes:
        pitches = [n.pitch for n in ns.notes]
        ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    else:
        ax.text(0.5, 0.5, "(no notes)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.grid(True, alpha=0.25)


def _legend_handles(labels: Sequence[str], colours: Mapping[str, tuple]) -> list:
    from matplotlib.patches import Patch

    return [Patch(facecolor=colours[label], label=label) for label in labels]


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


def piano_roll_figure(ns, *, title: str | None = None, seconds: float | None = None):
    """A matplotlib Figure of `ns` as a piano roll, notes coloured by instrument with a legend; the time axis spans
    `seconds` (the audio's duration) when given."""
    labels = instrument_labels(ns)
    colours = _colours(labels)
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    _draw_notes(ax, ns, colours, seconds)
    if labels:
        ax.legend(handles=_legend_handles(labels, colours), **_LEGEND_OUTSIDE)
    if title:
        ax.set_title(displayable(title))
    return fig


def reference_vs_estimate_figure(ref_ns, est_ns, *, title: str | None = None):
    """Two stacked piano rolls (reference above, estimate below) sharing time and pitch axes and instrument colours."""
    labels = instrument_labels(ref_ns, est_ns)
    colours = _colours(labels)
    fig = _new_figure(2, height=3.5)
    ref_ax = fig.add_subplot(2, 1, 1)
    est_ax = fig.add_subplot(2, 1, 2, sharex=ref_ax, sharey=ref_ax)
    _draw_notes(ref_ax, ref_ns, colours)
    _draw_notes(est_ax, est_ns, colours)
    notes = list(ref_ns.notes) + list(est_ns.notes)
    if notes:  # each _draw_notes set its own limits; the shared axes must cover both
        ref_ax.set_xlim(0.0, max(max(float(n.end_time), float(n.start_time) + MIN_BAR_SECONDS) for n in notes))
        ref_ax.set_ylim(min(n.pitch for n in notes) - 2, max(n.pitch for n in notes) + 2)
    ref_ax.set_title("Reference" if not title else displayable(f"{title} - reference"))
    est_ax.set_title("Estimate")
    ref_ax.set_xlabel("")
    if labels:
        ref_ax.legend(handles=_legend_handles(labels, colours), **_LEGEND_OUTSIDE)
    fig.tight_layout()
    return fig


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
