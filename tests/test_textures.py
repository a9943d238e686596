"""mt3/corpus/textures.py on real music21 scores: a Bach chorale with a horn part (bwv1.6), a Mozart piano sonata
exposition (k545), a Haydn string quartet movement and a Schumann song (voice + piano)."""

from __future__ import annotations

import numpy as np
import pytest

from mt3.corpus import arrangement, builder, textures

CHORALE = "bach/bwv1.6.mxl"
SONATA = "mozart/k545/movement1_exposition.mxl"
QUARTET = "haydn/opus74no1/movement3.mxl"
SONG = "schumann_robert/dichterliebe_no2.xml"


@pytest.fixture(scope="module")
def sources():
    return {s.key: s for s in builder.build_catalog()}


@pytest.fixture(scope="module")
def chorale(sources):
    return textures.read_excerpt(sources[CHORALE], 0.0, 8.0)


@pytest.fixture(scope="module")
def sonata(sources):
    return textures.read_excerpt(sources[SONATA], 0.0, 12.0)


def test_programs_follow_the_score(chorale, sonata):
    assert [(p.name, p.program) for p in chorale.parts] == [
        ("Horn 2", 60), ("Soprano", 53), ("Alto", 53), ("Tenor", 53), ("Bass", 53)]
    assert not textures.is_keyboard_work(chorale)
    # k545's two staves carry no program: one keyboard instrument -> piano
    assert [(p.program, p.keyboard) for p in sonata.parts] == [(0, True)] and textures.is_keyboard_work(sonata)
    assert 8.0 <= chorale.seconds <= 13.0 and chorale.bars[0] == 0.0
    for excerpt in (chorale, sonata):  # the MIDI files' tempo: the written mark (k545's "Allegro" reads as 132)
        score = arrangement.load_score(excerpt.key, None)
        assert excerpt.qpm == pytest.approx(score.metronomeMarkBoundaries()[0][2].getQuarterBPM(), rel=1e-5)

    ns = textures.plain_sequence(chorale)
    by_part = {}
    for n in ns.notes:
        by_part.setdefault(n.instrument, set()).add(n.program)
        assert not n.is_drum and n.velocity == textures.PLAIN_VELOCITY
    assert by_part == {0: {60}, 1: {53}, 2: {53}, 3: {53}, 4: {53}}  # five parts, five MIDI channels
    assert min(n.start_time for n in ns.notes) == pytest.approx(textures.LEAD_IN_SECONDS)
    reduction = textures.plain_sequence(chorale, program=0)
    assert {n.program for n in reduction.notes} == {0} and len(reduction.notes) == len(ns.notes)


def test_excerpts_start_and_end_at_barlines_and_can_refuse_short_music(sources, sonata):
    later = textures.read_excerpt(sources[SONATA], 5.0, 6.0)
    bars = np.concatenate([sonata.bars, [sonata.seconds]])
    assert np.min(np.abs(bars - later.start_seconds)) < 1e-3 and later.start_seconds >= 5.0 - 1e-6
    assert np.min(np.abs(bars - (later.start_seconds + later.seconds))) < 1e-3 and 6.0 <= later.seconds <= 11.0
    assert min(p.notes[:, 0].min() for p in later.parts) >= -1e-9  # excerpt time starts at its first barline
    with pytest.raises(arrangement.SkipPiece, match="of music after"):
        textures.read_excerpt(sources[SONATA], 0.0, 12.0, min_seconds=1000.0)


def test_fit_parts_merges_parts_on_one_program_first(sources, chorale):
    assert textures.fit_parts(chorale, 5) is chorale
    merged = textures.fit_parts(chorale, 3)  # horn 60 + four voices on 53 -> two parts
    assert [(p.program, len(p.notes)) for p in merged.parts] == [
        (60, len(chorale.parts[0].notes)), (53, sum(len(p.notes) for p in chorale.parts[1:]))]
    assert len(textures.fit_parts(chorale, 3, program=0).parts) == 1  # a reduction: one program, one part
    quartet = textures.read_excerpt(sources[QUARTET], 0.0, 10.0)
    assert [p.program for p in quartet.parts] == [40, 40, 41, 42]
    kept = textures.fit_parts(quartet, 2)  # violins merged, then the top part and the cello (the outer voices)
    assert [p.program for p in kept.parts] == [40, 42] and np.array_equal(kept.parts[1].notes, quartet.parts[3].notes)


def _by_pitch(notes):
    out = {}
    for n in sorted(notes, key=lambda n: n.start_time):
        out.setdefault((n.instrument, n.pitch), []).append(n)
    return out


def test_humanise_bounds_determinism_and_pedal(sonata):
    rendered, labels, facts = textures.humanise(sonata, seed=[27, 3])
    again, _, _ = textures.humanise(sonata, seed=[27, 3])
    other, _, _ = textures.humanise(sonata, seed=[27, 4])
    assert rendered == again and rendered != other

    # timing: each onset is the rubato-warped written onset plus jitter of at most 3 sd (<= MAX_JITTER)
    r = facts["rubato"]
    warp = textures.Warp(tuple(r["amplitudes"]), tuple(r["periods"]), tuple(r["phases"]))
    grid = np.linspace(0.0, sonata.seconds, 400)
    speed = np.diff(warp(grid)) / np.diff(grid)
    assert np.all(np.abs(np.log(speed)) <= textures.MAX_SPEED_LOG + 1e-3) and np.ptp(np.log(speed)) > 0.02
    plain = textures.plain_sequence(sonata)
    written, performed = _by_pitch(plain.notes), _by_pitch(rendered.notes)
    assert written.keys() == performed.keys()
    shifts, deviations = [], []
    for key, notes in written.items():
        assert len(notes) == len(performed[key])
        for w, p in zip(notes, performed[key]):
            expected = float(warp(w.start_time - textures.LEAD_IN_SECONDS)) + textures.LEAD_IN_SECONDS
            deviations.append(abs(p.start_time - expected))
            shifts.append(abs(p.start_time - w.start_time))
    assert max(deviations) <= 3 * facts["jitter_sd"] + 1e-3 <= textures.MAX_JITTER + 1e-3
    assert np.mean(deviations) > 0.002 and np.mean(shifts) > 0.01  # timings did change

    velocities = np.array([n.velocity for n in rendered.notes])
    assert textures.VELOCITY_RANGE[0] <= velocities.min() and velocities.max() <= textures.VELOCITY_RANGE[1]
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


def test_a_performed_reduction_is_one_pianist_under_one_pedal(chorale):
    own, _, own_facts = textures.humanise(chorale, seed=5)
    assert own_facts["pedal_parts"] == [] and not own.control_changes  # voices and horn: no pedal
    rendered, labels, facts = textures.humanise(chorale, seed=5, program=0)
    assert {n.program for n in rendered.notes} == {0} and facts["pedal_parts"] == [0, 1, 2, 3, 4]
    pedal = {i: [(c.time, c.control_value) for c in rendered.control_changes if c.instrument == i] for i in range(5)}
    assert pedal[0] and all(pedal[i] == pedal[0] for i in range(5))
    # the same performance otherwise: the pedal draw comes after every note's
    assert [(n.pitch, n.start_time, n.velocity) for n in rendered.notes] == [
        (n.pitch, n.start_time, n.velocity) for n in own.notes]
    assert sum(b.end_time > a.end_time + 0.05 for a, b in zip(rendered.notes, labels.notes)) > 0


@pytest.mark.parametrize("texture", ["plain", "piano", "performance"])
def test_texture_arrangement_gives_one_stem_per_part_without_drums(sources, texture):
    song = sources[SONG]
    excerpt = textures.read_excerpt(song, 0.0, 15.0)
    assert [(p.program, p.keyboard) for p in excerpt.parts] == [(52, False), (0, True)]
    arr = textures.texture_arrangement(song, texture, seed=11, target_seconds=15.0)
    again = textures.texture_arrangement(song, texture, seed=11, target_seconds=15.0)
    assert [[(n.pitch, n.start, n.end) for n in i.notes] for i in arr.instruments] == [
        [(n.pitch, n.start, n.end) for n in i.notes] for i in again.instruments]  # seeded
    assert len(arr.instruments) == 2 and not any(i.is_drum for i in arr.instruments) and arr.transpose == 0
    programs = [i.program for i in arr.instruments]
    assert programs == {"plain": [52, 0], "piano": [0, 0]}.get(texture, programs)
    assert programs in ([52, 0], [0, 0])
    last = max([n.end for i in arr.instruments for n in i.notes] + [c.time for i in arr.instruments
                                                                     for c in i.control_changes])
    assert arr.end_seconds == last and 15.0 <= arr.end_seconds <= 15.0 + 5.0 + 1.5
    pedalled = [bool(i.control_changes) for i in arr.instruments]
    if texture == "performance":
        assert pedalled == ([True, True] if programs == [0, 0] else [False, True])  # the piano part is pedalled
    else:
        assert pedalled == [False, False]
    with pytest.raises(ValueError, match="unknown texture"):
        textures.texture_arrangement(song, "arranged", seed=11, target_seconds=15.0)
