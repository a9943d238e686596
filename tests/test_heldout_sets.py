"""benchmarks/heldout_sets.py on two short real test-split scores: a Bach chorale with a horn part (bwv1.6) and a
Mozart piano sonata exposition (k545), parsed by music21 and rendered with MuseScore General."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import heldout_sets as hs
from mt3.corpus import builder

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


def test_programs_follow_the_score(chorale, sonata):
    assert [(p.name, p.program) for p in chorale.parts] == [
        ("Horn 2", 60), ("Soprano", 53), ("Alto", 53), ("Tenor", 53), ("Bass", 53)]
    assert not hs.is_keyboard_work(chorale)
    # k545's two staves carry no program: one keyboard instrument -> piano
    assert [(p.program, p.keyboard) for p in sonata.parts] == [(0, True)] and hs.is_keyboard_work(sonata)
    assert 8.0 <= chorale.seconds <= 13.0 and chorale.bars[0] == 0.0

    ns = hs.plain_sequence(chorale)
    by_part = {}
    for n in ns.notes:
        by_part.setdefault(n.instrument, set()).add(n.program)
        assert not n.is_drum and n.velocity == hs.PLAIN_VELOCITY
    assert by_part == {0: {60}, 1: {53}, 2: {53}, 3: {53}, 4: {53}}  # five parts, five MIDI channels
    assert min(n.start_time for n in ns.notes) == pytest.approx(hs.LEAD_IN_SECONDS)
    reduction = hs.plain_sequence(chorale, program=0)
    assert {n.program for n in reduction.notes} == {0} and len(reduction.notes) == len(ns.notes)


def test_plain_render_is_peak_normalised(chorale):
    from benchmarks.heldout import PEAK_DB, render_sequence
    from mt3.corpus.rendering import SAMPLE_RATE

    ns = hs.plain_sequence(chorale)
    audio = render_sequence(ns, hs.BANK, int((ns.total_time + 1.0) * SAMPLE_RATE))
    assert audio.dtype == np.float32 and len(audio) == int((ns.total_time + 1.0) * SAMPLE_RATE)
    assert np.abs(audio).max() == pytest.approx(10 ** (PEAK_DB / 20), rel=1e-4)
    first = int(hs.LEAD_IN_SECONDS * SAMPLE_RATE)
    assert np.abs(audio[: first // 2]).max() < 1e-3 < np.abs(audio[first: first + SAMPLE_RATE]).max()


def _by_pitch(notes):
    out = {}
    for n in sorted(notes, key=lambda n: n.start_time):
        out.setdefault((n.instrument, n.pitch), []).append(n)
    return out


def test_humanise_bounds_determinism_and_pedal(sonata):
    rendered, labels, facts = hs.humanise(sonata, seed=3)
    again, _, _ = hs.humanise(sonata, seed=3)
    other, _, _ = hs.humanise(sonata, seed=4)
    assert rendered == again and rendered != other

    # timing: each onset is the rubato-warped written onset plus jitter of at most 3 sd (<= MAX_JITTER)
    r = facts["rubato"]
    warp = hs.Warp(tuple(r["amplitudes"]), tuple(r["periods"]), tuple(r["phases"]))
    grid = np.linspace(0.0, sonata.seconds, 400)
    speed = np.diff(warp(grid)) / np.diff(grid)
    assert np.all(np.abs(np.log(speed)) <= hs.MAX_SPEED_LOG + 1e-3) and np.ptp(np.log(speed)) > 0.02
    plain = hs.plain_sequence(sonata)
    written, performed = _by_pitch(plain.notes), _by_pitch(rendered.notes)
    assert written.keys() == performed.keys()
    shifts, deviations = [], []
    for key, notes in written.items():
        assert len(notes) == len(performed[key])
        for w, p in zip(notes, performed[key]):
            expected = float(warp(w.start_time - hs.LEAD_IN_SECONDS)) + hs.LEAD_IN_SECONDS
            deviations.append(abs(p.start_time - expected))
            shifts.append(abs(p.start_time - w.start_time))
    assert max(deviations) <= 3 * facts["jitter_sd"] + 1e-3 <= hs.MAX_JITTER + 1e-3
    assert np.mean(deviations) > 0.002 and np.mean(shifts) > 0.01  # timings did change

    velocities = np.array([n.velocity for n in rendered.notes])
    assert hs.VELOCITY_RANGE[0] <= velocities.min() and velocities.max() <= hs.VELOCITY_RANGE[1]
    assert velocities.std() > 4.0 and len(set(velocities)) > 10  # plain is a constant 80

    # pedal: CC 64 in the rendered MIDI, applied to the labels' offsets (never shortening a note), then removed
    assert facts["pedal_parts"] == [0] and {c.control_number for c in rendered.control_changes} == {64}
    assert not labels.control_changes and len(labels.notes) == len(rendered.notes)
    before, after = _by_pitch(rendered.notes), _by_pitch(labels.notes)
    longer = 0
    for key, notes in before.items():
        for a, b in zip(notes, after[key]):
            assert b.start_time == a.start_time and b.end_time >= a.end_time - 1e-9
            longer += b.end_time > a.end_time + 0.05
    assert longer > 0.5 * len(rendered.notes)


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
