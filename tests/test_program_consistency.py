"""Tests for mt3.program_consistency: program sets, the decoder logit mask, post-hoc reassignment and MR-MT3's
leakage figures, on the music21 Bach chorale (flute, clarinet, bassoon, bass: four GM programs in three families)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import music21_note_sequence

from mt3 import metrics, program_consistency, vocabularies

CODEC = vocabularies.build_codec(vocabularies.MT3_VOCAB_CONFIG)
VOCAB = vocabularies.vocabulary_size(CODEC)


@pytest.fixture(scope="module")
def chorale():
    return music21_note_sequence("bach_chorale")


def leaked(ns, moves: dict[int, int], every: int = 3):
    """A copy of `ns` where every `every`-th note of each program in `moves` hops to another program, as MT3's
    segment-by-segment decoding does."""
    out = ns.__class__()
    out.CopyFrom(ns)
    seen: dict[int, int] = {}
    for note in out.notes:
        if note.program in moves:
            seen[note.program] = seen.get(note.program, 0) + 1
            if seen[note.program] % every == 0:
                note.program = moves[note.program]
    return out


def _only(ns, keep):
    out = ns.__class__()
    out.CopyFrom(ns)
    del out.notes[:]
    out.notes.extend(n for n in ns.notes if keep(n))
    return out


def test_leakage_figures_are_one_program_per_instrument_for_the_reference(chorale):
    figures = program_consistency.leakage_figures(chorale, chorale)
    assert figures["ref_programs"] == figures["est_programs"] == 4
    assert figures["programs_per_instrument"] == 1.0 and figures["main_program_share"] == 1.0


def test_leakage_figures_count_the_programs_an_instrument_is_spread_over(chorale):
    # flute 73 -> piccolo 72 (same family), bass 32 -> piano 0 (another family)
    est = leaked(chorale, {73: 72, 32: 0})
    figures = program_consistency.leakage_figures(chorale, est)
    assert figures["est_programs"] == 6
    assert figures["programs_per_instrument"] == pytest.approx((2 + 1 + 1 + 2) / 4)
    assert 0.6 < figures["main_program_share"] < 0.95


def test_family_reassignment_undoes_leakage_within_a_family_only(chorale):
    est = leaked(chorale, {73: 72, 32: 0})
    fixed = program_consistency.reassign_programs(est, "family")
    assert fixed is not est and len(fixed.notes) == len(est.notes)
    programs = program_consistency.program_note_counts(fixed)
    assert 72 not in programs and programs[73] == program_consistency.program_note_counts(chorale)[73]
    assert 0 in programs  # piano is its own family: a different-family hop stays
    # its limit: clarinet (71) and bassoon (70) are both GM reeds, so they merge into one program
    assert (70 in programs) != (71 in programs)
    def no_reeds(ns):
        return _only(ns, lambda n: n.program not in (70, 71))

    before = metrics.note_metrics(no_reeds(chorale), no_reeds(est))["multi_instrument_f1"]
    after = metrics.note_metrics(no_reeds(chorale), no_reeds(fixed))["multi_instrument_f1"]
    assert after > before
    assert {n.instrument for n in fixed.notes} == set(range(len(programs)))  # one instrument per program
    dominant = program_consistency.reassign_programs(est, "dominant")
    assert len(program_consistency.program_note_counts(dominant)) == 1
    assert program_consistency.reassign_programs(est, "none") is est
    with pytest.raises(ValueError, match="reassign_programs"):
        program_consistency.reassign_programs(est, "nearest")


def test_estimated_program_set_drops_rare_leaked_programs(chorale):
    est = leaked(chorale, {73: 72}, every=25)  # a handful of stray piccolo notes
    counts = program_consistency.program_note_counts(est)
    share = counts[72] / sum(counts.values())
    assert 0 < share < 0.05
    assert program_consistency.estimate_program_set(est, 0.05) == (32, 70, 71, 73)
    assert program_consistency.estimate_program_set(est, 0.0) == (32, 70, 71, 72, 73)
    assert program_consistency.estimate_program_set(est.__class__(), 0.05) == ()


def test_allowed_ids_mask_exactly_the_other_program_tokens():
    allowed = program_consistency.allowed_ids(CODEC, (0, 33), VOCAB)
    low, high = CODEC.event_type_range("program")
    program_ids = vocabularies.encode_tokens(np.arange(low, high + 1))
    assert allowed.shape == (VOCAB,) and allowed.sum() == VOCAB - 126
    assert allowed[program_ids[[0, 33]]].all() and not allowed[program_ids[1]] and not allowed[program_ids[127]]
    other = np.setdiff1d(np.arange(VOCAB), program_ids)
    assert allowed[other].all()  # pitches, shifts, drums, EOS untouched
    assert program_consistency.allowed_ids(CODEC, (), VOCAB).all()


def test_program_lists_are_checked():
    assert program_consistency.parse_programs("40, 0,33,0") == (0, 33, 40)
    with pytest.raises(ValueError, match="--programs"):
        program_consistency.parse_programs("0,piano")
    with pytest.raises(ValueError, match="128"):
        program_consistency.parse_programs("0,128")
    with pytest.raises(ValueError, match="empty"):
        program_consistency.check_programs([])


def test_restrict_to_set_moves_outside_notes_into_the_set(chorale):
    est = leaked(chorale, {73: 72, 32: 0})  # piccolo and piano notes appear
    kept = program_consistency.restrict_to_set(est, (32, 70, 71, 73))
    counts = program_consistency.program_note_counts(kept)
    assert set(counts) == {32, 70, 71, 73} and sum(counts.values()) == len(est.notes)
    assert counts[73] == program_consistency.program_note_counts(chorale)[73]  # piccolo -> flute (same family)
    assert program_consistency.restrict_to_set(chorale, (32, 70, 71, 73)) is chorale  # nothing to move
    only_bass = program_consistency.restrict_to_set(est, (32,))
    assert set(program_consistency.program_note_counts(only_bass)) == {32}


def test_nearest_allowed_is_same_family_first_then_nearest_number():
    assert program_consistency.nearest_allowed(72, (32, 70, 73)) == 73  # piccolo -> flute (Pipe), not bassoon (70)
    assert program_consistency.nearest_allowed(41, (0, 32)) == 32  # viola: no strings allowed; bass is 9 away
    assert program_consistency.nearest_allowed(44, (40, 48)) == 40  # tremolo strings stay strings, though 48 is nearer
    assert program_consistency.nearest_allowed(16, (8, 24)) == 8  # a tie goes to the lower program


def test_program_report_says_what_moved_and_what_was_kept(chorale):
    """--programs 32,73 on the chorale: clarinet and bassoon (Reed) have no family member in the set, so they go to
    the nearest program number (70, 71 -> 73 flute); the report counts every note."""
    counts = program_consistency.program_note_counts(chorale)
    ns, report = program_consistency.apply_program_options(chorale, programs=(32, 73), source="--programs",
                                                           masked=False, reassign="none")
    assert program_consistency.program_note_counts(ns) == {32: counts[32], 73: counts[70] + counts[71] + counts[73]}
    assert report.moved == [(70, 73, counts[70]), (71, 73, counts[71])]
    assert len(ns.notes) == len(chorale.notes)
    moved = counts[70] + counts[71]
    assert report.lines() == [
        f"--programs 32,73 (move): {sum(counts.values())} pitched notes decoded",
        f"{moved} notes of other programs moved to the nearest allowed (same GM family first, else the nearest "
        f"program number): Bassoon (70) -> Flute (73) {counts[70]}, Clarinet (71) -> Flute (73) {counts[71]}",
        f"programs kept (notes): Acoustic Bass (32) {counts[32]}, Flute (73) {counts[70] + counts[71] + counts[73]}"]
    _, family = program_consistency.apply_program_options(chorale, programs=None, source="", masked=False,
                                                          reassign="family")
    winner = max((70, 71), key=lambda p: (counts[p], -p))  # the Reed family's most used program
    loser = 141 - winner
    assert family.moved == [] and family.reassigned == [(loser, winner, counts[loser])]
    assert family.lines()[0].startswith(f"--reassign-programs family: {counts[loser]} notes moved to its GM family's "
                                        "most used program: ")
