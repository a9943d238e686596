"""mt3.plotting writes real, readable PNGs whose legends name the instruments actually played."""

from __future__ import annotations

import copy

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


def test_piano_roll_png_and_legend(music21_sequences, tmp_path):
    ns = _drums(music21_sequences["bach_chorale"])
    expected = {pretty_midi.program_to_instrument_name(p) for p in (73, 71, 70, 32)} | {"Drums"}
    fig = plotting.piano_roll_figure(ns, title="Bach")
    assert set(_legend_labels(fig.axes[0])) == expected
    assert fig.axes[0].get_title() == "Bach"
    assert set(plotting.instrument_labels(ns)) == expected

    path = plotting.plot_piano_roll(ns, tmp_path / "out" / "roll.png", title="Bach")
    assert path == tmp_path / "out" / "roll.png"
    _read_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["roll.png"]  # no temporary file left behind


def test_shared_program_is_one_legend_entry(music21_sequences, tmp_path):
    ns = music21_sequences["string_quartet"]  # violins I and II share program 40
    assert _legend_labels(plotting.piano_roll_figure(ns).axes[0]) == ["Violin", "Viola", "Cello"]


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
