"""benchmarks/heldout_sets.py on two short real test-split scores: a Bach chorale with a horn part (bwv1.6) and a
Mozart piano sonata exposition (k545), parsed by music21 and rendered with MuseScore General."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from benchmarks import heldout_sets as hs
from mt3.corpus import builder, textures

CHORALE = "bach/bwv1.6.mxl"
SONATA = "mozart/k545/movement1_exposition.mxl"


@pytest.fixture(scope="module")
def sources():
    return {s.key: s for s in builder.build_catalog()}


@pytest.fixture(scope="module")
def chorale(sources):
    return hs.read_excerpt(sources[CHORALE], 0.0, 8.0)


@pytest.fixture(scope="module")
def sonata(sources):
    return hs.read_excerpt(sources[SONATA], 0.0, 12.0)


def test_only_test_split_pieces(sources):
    pieces = hs.test_sources()
    assert pieces and all(builder.piece_split(s) == "test" for s in pieces)
    assert {CHORALE, SONATA} <= {s.key for s in pieces}
    for group, quota, performed in hs.GROUP_QUOTAS:  # every group has enough test-split pieces to fill its quota
        assert performed <= quota <= sum(hs.group_of(s) == group for s in pieces), group
    train = next(s for s in sources.values() if builder.piece_split(s) == "train")
    with pytest.raises(ValueError, match="train split"):
        hs.read_excerpt(train, 0.0, 8.0)  # refused before parsing


def test_excerpts_are_the_textures_excerpts_at_least_min_seconds_long(sources, chorale, sonata):
    from mt3.corpus import arrangement

    same = textures.read_excerpt(sources[CHORALE], 0.0, 8.0)
    assert [(p.program, p.notes.tolist()) for p in chorale.parts] == [(p.program, p.notes.tolist()) for p in same.parts]
    assert [(p.program, p.keyboard) for p in sonata.parts] == [(0, True)] and hs.is_keyboard_work(sonata)
    with pytest.raises(arrangement.SkipPiece, match="of music after"):  # k545's exposition is under 40 s
        hs.read_excerpt(sources[SONATA], 30.0, 30.0)


# Digests of the tracks below as benchmarks/heldout_sets.py made them before its score-to-texture functions moved to
# mt3/corpus/textures.py (issue 27); the whole plans of all three sets were compared too (identical NoteSequences and
# facts). A change here changes the held-out sets: rebuild them and re-measure both systems before updating these.
PINNED = {
    "plain/bach/bwv1.6.mxl": "677688afa58e823b",
    "piano_dense/bach/bwv1.6.mxl#reduction": "a0dcdf034a6d19a6",
    "piano_dense/mozart/k545/movement1_exposition.mxl@0s": "7e4b10932061b632",
    "performance/mozart/k545/movement1_exposition.mxl": "218ba2c3f23fdf9d",
    "performance/bach/bwv1.6.mxl": "464acf3741bcb032",
}


def _digest(track) -> str:
    def notes(ns):
        return [(n.instrument, n.program, n.pitch, n.velocity, round(n.start_time, 6), round(n.end_time, 6), n.is_drum)
                for n in ns.notes]

    def ccs(ns):
        return [(c.instrument, c.program, c.control_number, c.control_value, round(c.time, 6))
                for c in ns.control_changes]

    blob = json.dumps([track.id, notes(track.rendered), ccs(track.rendered), notes(track.labels), ccs(track.labels),
                       track.facts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_tracks_are_made_as_before(sources):
    """Each set's per-track function (what `plan` calls) on a chorale and a keyboard work, at the sets' own lengths
    and windows: the same NoteSequences (notes, pedal CCs, labels) and facts as before the move."""
    chorale = hs.read_excerpt(sources[CHORALE])
    sonata = hs.read_excerpt(sources[SONATA], *hs.PIANO_WINDOWS[0])
    tracks = [hs.plain_track("chorale", chorale), hs.reduction_track(chorale), hs.keyboard_track(sonata),
              hs.performance_track(0, sonata), hs.performance_track(5, chorale)]
    assert {t.id: _digest(t) for t in tracks} == PINNED
    assert tracks[3].rendered.control_changes and not tracks[4].rendered.control_changes  # pedal on the piano only


def test_plain_render_is_peak_normalised(chorale):
    from benchmarks.heldout import PEAK_DB, render_sequence
    from mt3.corpus.rendering import SAMPLE_RATE

    ns = textures.plain_sequence(chorale)
    audio = render_sequence(ns, hs.BANK, int((ns.total_time + 1.0) * SAMPLE_RATE))
    assert audio.dtype == np.float32 and len(audio) == int((ns.total_time + 1.0) * SAMPLE_RATE)
    assert np.abs(audio).max() == pytest.approx(10 ** (PEAK_DB / 20), rel=1e-4)
    first = int(textures.LEAD_IN_SECONDS * SAMPLE_RATE)
    assert np.abs(audio[: first // 2]).max() < 1e-3 < np.abs(audio[first: first + SAMPLE_RATE]).max()


def test_plan_rejects_unknown_set():
    with pytest.raises(ValueError, match="unknown set"):
        hs.plan("multi")


def test_table_reports_programs_per_file_and_texture_groups():
    from benchmarks import heldout

    def row(name, ours, peer, programs, ref_programs, ids):
        return {"set": name, "folder": name, "gain_db": 0.0, "tracks": len(ids), "audio_seconds": 60.0 * len(ids),
                "ours": {"onset_f1": ours}, "peer": {"onset_f1": peer}, "invalid_events": 1, "decoded_tokens": 100,
                "programs": programs, "ref_programs": ref_programs,
                "per_track": [{"id": i, "ref_program_set": g, "ours": {"onset_f1": o}, "peer": {"onset_f1": p}}
                              for i, g, o, p in ids],
                "model": {"name": "local_cpu", "step": 1}, "basic_pitch": {"basic_pitch": "0.4.0"}}

    report = {"date": "today", "machine": {"cpu": "cpu", "nproc": 2}, "rows": [
        row("plain", 0.3, 0.4, [12, 30, 3], [3, 1, 1],
            [("plain/beethoven/a", [40, 41, 42], 0.5, 0.4), ("plain/bach/b", [53], 0.1, 0.2),
             ("plain/palestrina/c", [53], 0.3, 0.0), ("plain/bach/b#reduction", [0], 0.9, 1.0)]),
    ]}
    table = heldout.markdown(report)
    assert "| plain | 4 | 4.0 | 0.300 | — | — | — | — | 1.0 | 15.0, 30 | 1.7, 3 | 0.400 | — |" in table
    assert ("piano reductions (1): 0.900 / 1.000; strings (1): 0.500 / 0.400; voices (2): 0.200 / 0.100"
            in table)
