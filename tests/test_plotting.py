"""mt3.plotting writes real, readable PNGs whose legends name the instruments actually played."""

from __future__ import annotations

import copy
import re

import matplotlib.image
import pretty_midi
import pytest

from mt3 import plotting


def _legend_labels(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def _read_png(path):
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # not a blank canvas
    return image


def _drums(ns, seconds=6.0):
    out = copy.deepcopy(ns)
    for i in range(int(seconds * 4)):
        out.notes.add(pitch=36 if i % 2 == 0 else 42, start_time=i * 0.25, end_time=i * 0.25 + 0.01, velocity=100,
                      is_drum=True, instrument=9)
    return out


def _all_legend_labels(fig) -> list[str]:
    return [label for ax in fig.axes if ax.get_legend() for label in _legend_labels(ax)]


def _bar_colours(fig) -> dict[str, set]:
    """{instrument label: the face colours its bars are drawn in} over every axis of the figure."""
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_hex

    out: dict[str, set] = {}
    for ax in fig.axes:
        for coll in ax.collections:
            if isinstance(coll, PolyCollection):
                out.setdefault(coll.get_label(), set()).update(to_hex(c) for c in coll.get_facecolors())
    return out


NOTE_NAME = re.compile(r"^[A-G]#?-?\d$")


def test_piano_roll_png_rows_per_family(music21_sequences, tmp_path):
    """One row per GM family (drums last) with note names on its pitch axis and its own programs in its legend."""
    ns = _drums(music21_sequences["bach_chorale"])
    expected = {pretty_midi.program_to_instrument_name(p) for p in (73, 71, 70, 32)} | {"Drums"}
    fig = plotting.piano_roll_figure(ns, title="Bach")
    assert [ax.get_ylabel() for ax in fig.axes] == ["Bass", "Reed", "Pipe", "Drums"]  # 32 | 70, 71 | 73 | drums
    assert _legend_labels(fig.axes[1]) == ["Bassoon", "Clarinet"]
    assert set(_all_legend_labels(fig)) == expected and len(_all_legend_labels(fig)) == len(expected)
    assert fig._suptitle.get_text() == "Bach"
    assert set(plotting.instrument_labels(ns)) == expected
    for ax in fig.axes[:3]:
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels and all(NOTE_NAME.match(label) for label in labels), labels
    assert [t.get_text() for t in fig.axes[3].get_yticklabels()] == ["Bass Drum 1", "Closed Hi Hat"]

    path = plotting.plot_piano_roll(ns, tmp_path / "out" / "roll.png", title="Bach")
    assert path == tmp_path / "out" / "roll.png"
    _read_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["roll.png"]  # no temporary file left behind


def test_shared_program_is_one_legend_entry(music21_sequences):
    ns = music21_sequences["string_quartet"]  # violins I and II share program 40; one family: one row
    fig = plotting.piano_roll_figure(ns)
    assert _all_legend_labels(fig) == ["Violin", "Viola", "Cello"]
    assert [ax.get_ylabel() for ax in fig.axes[1:]] == ["Strings", "", ""]  # 60 s: overview + 3 detail windows


def _long_many_instruments(music21_sequences, copies: int = 6):
    """Real music, ~6 minutes: the three music21 pieces one after the other, each copy on other programs (33 pitched
    programs in 14 families) plus a drum part, as a long orchestral transcription looks."""
    out = copy.deepcopy(music21_sequences["bach_chorale"])
    del out.notes[:]
    offset = 0.0
    for i in range(copies):
        for key in ("bach_chorale", "string_quartet", "piano_piece"):
            ns = music21_sequences[key]
            for n in ns.notes:
                m = out.notes.add()
                m.CopyFrom(n)
                m.start_time += offset
                m.end_time += offset
                m.program = (n.program + 13 * i + 5 * n.instrument) % 128
            offset += ns.total_time
    return _drums(out, seconds=offset)


def test_long_many_instrument_file_is_readable(music21_sequences, tmp_path):
    """A 6-minute, 30+-program file: overview + 3 detail windows, no repeated colour, every legend within its row,
    note names on every pitch axis."""
    ns = _long_many_instruments(music21_sequences)
    seconds = max(n.end_time for n in ns.notes)
    labels = plotting.instrument_labels(ns)
    assert seconds > 300 and len(labels) > 30
    fig = plotting.piano_roll_figure(ns, title="long.wav", seconds=seconds)
    overview, *details = fig.axes
    families = {plotting.family_label(n.program, n.is_drum) for n in ns.notes}
    assert [t.get_text() for t in overview.get_yticklabels()][-1] == "Drums"
    assert {t.get_text() for t in overview.get_yticklabels()} == families
    assert overview.get_xlim() == (0.0, pytest.approx(seconds))
    assert len(details) == 3 * len(families)
    spans = sorted({ax.get_xlim() for ax in details})
    assert len(spans) == 3 and all(b - a == pytest.approx(plotting.DETAIL_SECONDS) for a, b in spans)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2))  # windows do not overlap

    colours = _bar_colours(fig)
    assert all(len(c) == 1 for c in colours.values()), colours  # one colour per instrument ...
    assert len({next(iter(c)) for c in colours.values()}) == len(colours) == len(labels)  # ... none shared
    assert sorted(_all_legend_labels(fig)) == sorted(labels)

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in details:
        if ax.get_legend():
            assert ax.get_legend().get_window_extent(renderer).height <= ax.get_window_extent(renderer).height + 1
        if ax.get_ylabel() not in ("", "Drums"):
            ticks = [t.get_text() for t in ax.get_yticklabels()]
            assert ticks and all(NOTE_NAME.match(t) for t in ticks), ticks
    _read_png(plotting.plot_piano_roll(ns, tmp_path / "long.png", title="long.wav", seconds=seconds))


def test_detail_windows_show_every_family_when_they_can(music21_sequences):
    ns = _long_many_instruments(music21_sequences, copies=2)
    families = plotting._families(ns)
    end = max(n.end_time for n in ns.notes)
    windows = plotting.detail_windows(end, families)
    shown = {f.label for f in families for a, b in windows for n in f.notes if n.start_time < b and n.end_time > a}
    assert shown == {f.label for f in families}
    assert plotting.detail_windows(30.0) == [(0.0, 30.0)]
    assert plotting.detail_windows(100.0) == [(0.0, 15.0), (42.5, 57.5), (85.0, 100.0)]


def test_distinct_colours_never_repeat():
    colours = plotting.distinct_colours(129)  # every GM program and drums
    assert len(set(colours)) == 129
    assert plotting.distinct_colours(12) == colours[:12]  # the upload page colours programs from the same list


def test_reference_vs_estimate(music21_sequences, tmp_path):
    ref = music21_sequences["piano_piece"]
    est = copy.deepcopy(ref)
    for n in est.notes:
        if n.instrument == 1:
            n.program = 33  # left hand transcribed as electric bass
    fig = plotting.reference_vs_estimate_figure(ref, est, title="Maple Leaf Rag")
    top, bottom = fig.axes
    assert top.get_shared_x_axes().joined(top, bottom) and top.get_shared_y_axes().joined(top, bottom)
    assert set(_legend_labels(top)) == {"Acoustic Grand Piano", "Electric Bass (finger)"}
    assert bottom.get_title() == "Estimate"
    _read_png(plotting.plot_reference_vs_estimate(ref, est, tmp_path / "cmp.png"))


def test_empty_sequences_still_plot(tmp_path):
    import note_seq

    empty = note_seq.NoteSequence()
    _read_png(plotting.plot_piano_roll(empty, tmp_path / "empty.png", title="nothing"))
    _read_png(plotting.plot_reference_vs_estimate(empty, empty, tmp_path / "empty2.png"))


def test_metric_curves(tmp_path):
    steps = [0, 1000, 2000, 3000]
    curves = {"onset_f1": [0.1, 0.4, 0.6, 0.7], "multi_instrument_f1": [0.0, 0.2, None, 0.5]}
    fig = plotting.metric_curves_figure(steps, curves, title="eval")
    assert _legend_labels(fig.axes[0]) == list(curves)
    path = tmp_path / "curves.png"
    path.write_bytes(b"stale")  # an existing file is replaced atomically
    _read_png(plotting.plot_metric_curves(steps, curves, path))
    with pytest.raises(ValueError, match="onset_f1"):
        plotting.plot_metric_curves(steps, {"onset_f1": [0.1]}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_time_axis_spans_the_audio_and_unicode_titles_draw_without_warnings(music21_sequences, tmp_path, recwarn):
    """A 2 s clip with notes in its first second is plotted over 0-2 s (as the upload page does), not 0-1 s; notes
    past `seconds` still show. A CJK/emoji file name draws no boxes and no 'Glyph missing' warnings."""
    import logging

    ns = copy.deepcopy(music21_sequences["bach_chorale"])
    del ns.notes[:]
    ns.notes.add(pitch=60, start_time=0.1, end_time=0.9, velocity=80, program=0)
    assert plotting.piano_roll_figure(ns, seconds=2.0).axes[0].get_xlim() == (0.0, 2.0)
    assert plotting.piano_roll_figure(ns).axes[0].get_xlim() == (0.0, pytest.approx(0.9))
    assert plotting.piano_roll_figure(ns, seconds=0.5).axes[0].get_xlim() == (0.0, pytest.approx(0.9))
    empty = copy.deepcopy(ns)
    del empty.notes[:]
    assert plotting.piano_roll_figure(empty, seconds=3.0).axes[0].get_xlim() == (0.0, 3.0)

    title = "曲 ♪ 🎹 Café.wav"
    assert plotting.displayable(title) == "? ♪ ? Café.wav"  # DejaVu Sans has ♪ and é, not CJK or emoji
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("matplotlib").addHandler(handler)
    try:
        _read_png(plotting.plot_piano_roll(ns, tmp_path / "u.png", title=title, seconds=2.0))
    finally:
        logging.getLogger("matplotlib").removeHandler(handler)
    assert not [w for w in recwarn if "Glyph" in str(w.message)] and not records
