"""mt3.metrics against direct mir_eval calls on perturbed real music (music21 corpus pieces).

Expected numbers are computed here independently: note_seq filters and `sequence_to_valued_intervals` build the
interval/pitch arrays, mir_eval scores them, and the test itself pools per-program tracks as REFERENCE §7 defines.
Where the answer is known analytically (dropped notes, a wrong program for one part) the test checks the closed form.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import mir_eval
import note_seq
import numpy as np
import pytest
from note_seq.sequences_lib import sequence_to_valued_intervals

from mt3 import metrics

PIECES = ("bach_chorale", "string_quartet", "piano_piece")
SCORE_KEYS_SKIP = {"ref_notes", "est_notes", "ref_drum_notes", "est_drum_notes"}


# ---------------------------------------------------------------------------------------------- helpers (independent)
def _filtered(ns, keep):
    out = note_seq.NoteSequence()
    out.CopyFrom(ns)
    del out.notes[:]
    out.notes.extend([n for n in ns.notes if keep(n)])
    return out


def _direct(ref_ns, est_ns, *, velocity=False, **kwargs):
    """(P, R, F1) straight from mir_eval on note_seq's valued intervals."""
    ref_i, ref_p, ref_v = sequence_to_valued_intervals(ref_ns)
    est_i, est_p, est_v = sequence_to_valued_intervals(est_ns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if velocity:
            p, r, f, _ = mir_eval.transcription_velocity.precision_recall_f1_overlap(
                ref_i, ref_p, ref_v, est_i, est_p, est_v, **kwargs)
        else:
            p, r, f, _ = mir_eval.transcription.precision_recall_f1_overlap(ref_i, ref_p, est_i, est_p, **kwargs)
    return p, r, f


def _direct_program_aware(ref_ns, est_ns, program_of):
    """REFERENCE §7 program-aware F1 written out: per (mapped program, is_drum) track, pooled by note counts."""
    def key(n):
        return (0 if n.is_drum else program_of(n.program), n.is_drum)

    tracks = {key(n) for n in ref_ns.notes} | {key(n) for n in est_ns.notes}
    p_sum = r_sum = n_est = n_ref = 0.0
    for track in tracks:
        ref_t = _filtered(ref_ns, lambda n, t=track: key(n) == t)
        est_t = _filtered(est_ns, lambda n, t=track: key(n) == t)
        kwargs = {"offset_ratio": None} if track[1] else {}
        p, r, _ = _direct(ref_t, est_t, **kwargs)
        p_sum += p * len(est_t.notes)
        r_sum += r * len(ref_t.notes)
        n_est += len(est_t.notes)
        n_ref += len(ref_t.notes)
    precision, recall = p_sum / n_est, r_sum / n_ref
    return precision, recall, mir_eval.util.f_measure(precision, recall)


def _drumless(ns):
    return _filtered(ns, lambda n: not n.is_drum)


def _shift(ns, rng, onset_choices, offset_choices):
    out = copy.deepcopy(ns)
    for n in out.notes:
        n.start_time = max(0.0, n.start_time + float(rng.choice(onset_choices)))
        n.end_time += float(rng.choice(offset_choices))
        n.end_time = max(n.end_time, n.start_time + 0.02)
    return out


def _with_drums(ns, *, program=0, seconds=None, jitter=None, rng=None):
    """Adds a GM drum groove (kick 36 every beat, closed hat 42 every half beat) over the piece."""
    out = copy.deepcopy(ns)
    seconds = seconds or ns.total_time
    for i, t in enumerate(np.arange(0.0, seconds, 0.25)):
        pitch = 36 if i % 2 == 0 else 42
        start = float(t)
        if jitter is not None:
            start = max(0.0, start + float(rng.choice(jitter)))
        out.notes.add(pitch=pitch, start_time=start, end_time=start + 0.1, velocity=100, program=program,
                      is_drum=True, instrument=9)
    return out


def _scores(result, prefix, suffix=""):
    return tuple(result[f"{prefix}_{name}{suffix}"] for name in ("precision", "recall", "f1"))


# ------------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("piece", PIECES)
def test_perfect_estimate_scores_one_everywhere(music21_sequences, piece):
    ref = _with_drums(music21_sequences[piece], seconds=8.0)
    result = metrics.note_metrics(ref, copy.deepcopy(ref), velocity=True, tolerance_sweep=True)
    scores = {k: v for k, v in result.items() if k not in SCORE_KEYS_SKIP}
    assert scores and all(v == pytest.approx(1.0) for v in scores.values()), scores
    assert result["ref_notes"] == result["est_notes"] == len(ref.notes)
    assert result["ref_drum_notes"] == sum(n.is_drum for n in ref.notes) > 0


@pytest.mark.parametrize("shift, expected_onset_f1", [(0.03, 1.0), (0.08, 0.0)])
def test_uniform_onset_shift_against_tolerance(music21_sequences, shift, expected_onset_f1):
    """30 ms is inside mir_eval's 50 ms onset window, 80 ms outside: the closed form, then mir_eval itself."""
    ref = music21_sequences["bach_chorale"]
    est = copy.deepcopy(ref)
    for n in est.notes:
        n.start_time += shift
    result = metrics.note_metrics(ref, est)
    assert result["onset_f1"] == pytest.approx(expected_onset_f1)
    assert _scores(result, "onset") == pytest.approx(_direct(ref, est, offset_ratio=None))
    assert _scores(result, "onset_offset") == pytest.approx(_direct(ref, est))


@pytest.mark.parametrize("piece", PIECES)
def test_random_shifts_match_mir_eval(music21_sequences, piece):
    rng = np.random.default_rng(7)
    ref = music21_sequences[piece]
    est = _shift(ref, rng, [0.0, 0.0, 0.03, -0.03, 0.08], [0.0, 0.03, -0.08, 0.2])
    result = metrics.note_metrics(ref, est, tolerance_sweep=True)
    onset = _direct(ref, est, offset_ratio=None)
    onset_offset = _direct(ref, est)
    assert 0.0 < onset_offset[2] < onset[2] < 1.0  # the perturbation must actually bite
    assert _scores(result, "onset") == pytest.approx(onset)
    assert _scores(result, "onset_offset") == pytest.approx(onset_offset)
    for tol in metrics.TOLERANCES:
        expected = _direct(ref, est, onset_tolerance=tol, offset_min_tolerance=tol)[2]
        assert result[f"onset_offset_f1_tol_{tol}"] == pytest.approx(expected)
    assert result["onset_offset_f1_tol_0.01"] < result["onset_offset_f1_tol_0.5"]
    # programs untouched and no drums: program-aware F1 equals mir_eval run per program and pooled
    assert _scores(result, "multi_instrument") == pytest.approx(_direct_program_aware(ref, est, lambda p: p))


def test_dropping_ten_percent_of_notes(music21_sequences):
    rng = np.random.default_rng(3)
    ref = music21_sequences["piano_piece"]
    keep = rng.random(len(ref.notes)) >= 0.1
    est = _filtered(ref, lambda n, it=iter(keep): bool(next(it)))
    result = metrics.note_metrics(ref, est)
    recall = keep.sum() / len(ref.notes)
    for prefix in ("onset", "onset_offset", "multi_instrument"):
        assert result[f"{prefix}_precision"] == pytest.approx(1.0)
        assert result[f"{prefix}_recall"] == pytest.approx(recall)
        assert result[f"{prefix}_f1"] == pytest.approx(2 * recall / (1 + recall))
    assert result["est_notes"] == keep.sum()


def test_wrong_program_for_one_part(music21_sequences):
    """Clarinet (71) relabelled as oboe (68): note metrics unchanged, full multi-instrument F1 loses exactly that part,
    MIDI-class and flat granularities (both Reed family / all one program) do not."""
    ref = music21_sequences["bach_chorale"]
    est = copy.deepcopy(ref)
    moved = 0
    for n in est.notes:
        if n.program == 71:
            n.program = 68
            moved += 1
    assert moved > 0
    result = metrics.note_metrics(ref, est)
    total = len(ref.notes)
    assert result["onset_offset_f1"] == pytest.approx(1.0)
    assert result["multi_instrument_f1"] < result["onset_offset_f1"]
    assert _scores(result, "multi_instrument") == pytest.approx(((total - moved) / total,) * 3)
    assert _scores(result, "multi_instrument") == pytest.approx(_direct_program_aware(ref, est, lambda p: p))
    assert result["multi_instrument_f1_midi_class"] == pytest.approx(1.0)
    assert result["multi_instrument_f1_flat"] == pytest.approx(1.0)

    # a program from another family breaks midi_class too, but never flat
    for n in est.notes:
        if n.program == 68:
            n.program = 0
    result = metrics.note_metrics(ref, est)
    assert result["multi_instrument_f1_midi_class"] == pytest.approx(
        _direct_program_aware(ref, est, lambda p: 8 * (p // 8))[2])
    assert result["multi_instrument_f1_midi_class"] < 1.0
    assert result["multi_instrument_f1_flat"] == pytest.approx(1.0)


def test_combined_perturbation_with_drums_matches_mir_eval(music21_sequences):
    rng = np.random.default_rng(11)
    ref = _with_drums(music21_sequences["string_quartet"], seconds=30.0)
    est = _shift(music21_sequences["string_quartet"], rng, [0.0, 0.03, 0.08], [0.0, 0.1])
    est = _filtered(est, lambda n: rng.random() >= 0.1)
    for n in est.notes:
        if n.instrument == 2:  # the viola becomes a cello
            n.program = 42
    # estimated drums: jittered, some hats mistaken for snares, and carrying a meaningless program number
    est = _with_drums(est, program=5, seconds=30.0, jitter=[0.0, 0.0, 0.08], rng=rng)
    for n in est.notes:
        if n.is_drum and n.pitch == 42 and rng.random() < 0.3:
            n.pitch = 38
    result = metrics.note_metrics(ref, est)

    # drums never enter the note metrics
    assert _scores(result, "onset") == pytest.approx(_direct(_drumless(ref), _drumless(est), offset_ratio=None))
    assert _scores(result, "onset_offset") == pytest.approx(_direct(_drumless(ref), _drumless(est)))
    # drum onset F1: drum notes only, onset-only, pitch-matched, whatever program the estimate gave them
    drums = _direct(_filtered(ref, lambda n: n.is_drum), _filtered(est, lambda n: n.is_drum), offset_ratio=None)
    assert 0.0 < drums[2] < 1.0
    assert _scores(result, "drum_onset") == pytest.approx(drums)
    for granularity, program_of in (("full", lambda p: p), ("midi_class", lambda p: 8 * (p // 8)),
                                    ("flat", lambda p: 0)):
        suffix = metrics.granularity_suffix(granularity)
        assert _scores(result, "multi_instrument", suffix) == pytest.approx(
            _direct_program_aware(ref, est, program_of)), granularity
    assert result["multi_instrument_f1"] < result["multi_instrument_f1_flat"]
    assert result["ref_drum_notes"] == result["est_drum_notes"] == 120


def test_undefined_metrics_are_none(music21_sequences):
    empty = note_seq.NoteSequence()
    both_empty = metrics.note_metrics(empty, empty)
    assert all(v is None for k, v in both_empty.items() if k not in SCORE_KEYS_SKIP)

    ref = music21_sequences["bach_chorale"]
    no_drums = metrics.note_metrics(ref, ref)
    assert _scores(no_drums, "drum_onset") == (None, None, None)

    empty_est = metrics.note_metrics(ref, empty)
    for prefix in ("onset", "onset_offset", "multi_instrument", "frame"):
        assert _scores(empty_est, prefix) == (0.0, 0.0, 0.0)

    onsets_only = metrics.note_metrics(ref, ref, onsets_only=True, tolerance_sweep=True)
    assert _scores(onsets_only, "onset_offset") == (None, None, None)
    assert onsets_only["onset_f1"] == 1.0
    assert not any(k.startswith("onset_offset_f1_tol") for k in onsets_only)


def test_zero_length_notes_are_dropped_like_note_seq(music21_sequences):
    ref = music21_sequences["bach_chorale"]
    est = copy.deepcopy(ref)
    est.notes.add(pitch=100, start_time=1.0, end_time=1.0, velocity=80, program=73)
    result = metrics.note_metrics(ref, est)
    assert result["onset_f1"] == pytest.approx(1.0)
    assert result["multi_instrument_f1"] == pytest.approx(1.0)


def test_velocity_metrics_match_mir_eval(music21_sequences):
    rng = np.random.default_rng(5)
    ref = copy.deepcopy(music21_sequences["piano_piece"])
    for n in ref.notes:
        n.velocity = int(rng.integers(30, 110))
    est = _shift(ref, rng, [0.0, 0.03], [0.0, 0.2])
    for n in est.notes:
        n.velocity = int(np.clip(n.velocity + rng.choice([0, 0, 30]), 1, 127))
    result = metrics.note_metrics(ref, est, velocity=True)
    assert _scores(result, "onset_velocity") == pytest.approx(_direct(ref, est, velocity=True, offset_ratio=None))
    assert _scores(result, "onset_offset_velocity") == pytest.approx(_direct(ref, est, velocity=True))
    assert result["onset_velocity_f1"] < result["onset_f1"]


def test_frame_metrics(music21_sequences):
    ref = music21_sequences["string_quartet"]
    assert _scores(metrics.note_metrics(ref, ref), "frame") == pytest.approx((1.0, 1.0, 1.0))
    # drums are excluded from the frame metric
    assert metrics.note_metrics(ref, _with_drums(ref, seconds=10.0))["frame_f1"] == pytest.approx(1.0)
    # shifting every note by half its length: frames overlap only partly
    late = _shift(ref, np.random.default_rng(0), [0.25], [0.25])
    assert 0.2 < metrics.note_metrics(ref, late)["frame_f1"] < 0.95

    # reference frames count only above velocity 30; estimated frames above 0
    # (one line, so no unisons whose velocities would sum above the threshold)
    quiet = _filtered(ref, lambda n: n.instrument == 0)
    for n in quiet.notes:
        n.velocity = 20
    assert _scores(metrics.note_metrics(quiet, quiet), "frame") == (0.0, 0.0, 0.0)
    # velocities sum over notes (and instruments): two unison quiet notes make an active reference frame
    unison = note_seq.NoteSequence()
    for program in (40, 41):
        unison.notes.add(pitch=67, start_time=0.0, end_time=1.0, velocity=20, program=program)
    single = _filtered(unison, lambda n: n.program == 40)
    assert metrics.note_metrics(unison, single)["frame_f1"] == pytest.approx(1.0)
    assert metrics.note_metrics(single, single)["frame_f1"] == 0.0

    # a 10 ms reference note is extended to 50 ms before rolling (3 frames at 62.5 fps)
    short, long_ = note_seq.NoteSequence(), note_seq.NoteSequence()
    short.notes.add(pitch=60, start_time=1.0, end_time=1.01, velocity=80)
    long_.notes.add(pitch=60, start_time=1.0, end_time=1.05, velocity=80)
    assert metrics.note_metrics(short, long_)["frame_f1"] == pytest.approx(1.0)


def test_frame_scores_pads_rolls_and_counts_positive_class():
    ref = np.zeros((128, 10))
    ref[60, 0:4] = 80
    ref[62, 2:4] = 20  # below threshold: not a reference frame
    est = np.zeros((128, 6))
    est[60, 2:6] = 1
    scores = metrics.frame_scores(ref, est)
    # ref active: 4 frames; est active: 4 frames; overlap 2
    assert (scores.precision, scores.recall, scores.f1) == pytest.approx((0.5, 0.5, 0.5))
    assert metrics.frame_scores(np.zeros((128, 3)), np.zeros((128, 0))) is None


def test_instrument_class_metrics(music21_sequences):
    ref = _with_drums(music21_sequences["bach_chorale"], seconds=10.0)
    est = copy.deepcopy(ref)
    for n in est.notes:
        if n.program == 71:  # clarinet (Reed) becomes a piano
            n.program = 0
    table = metrics.instrument_class_metrics(ref, est)
    assert list(table) == ["Piano", "Bass", "Reed", "Pipe", "Drums"]  # GM order, drums last, only present families
    clarinet = sum(n.program == 71 for n in ref.notes)
    bassoon = sum(n.program == 70 for n in ref.notes)
    assert table["Reed"]["ref_notes"] == clarinet + bassoon and table["Reed"]["est_notes"] == bassoon
    reed_ref = _filtered(ref, lambda n: n.program in (70, 71) and not n.is_drum)
    reed_est = _filtered(est, lambda n: n.program in (70, 71) and not n.is_drum)
    assert table["Reed"]["onset_f1"] == pytest.approx(_direct(reed_ref, reed_est, offset_ratio=None)[2])
    assert table["Reed"]["onset_offset_f1"] == pytest.approx(_direct(reed_ref, reed_est)[2])
    assert table["Piano"]["ref_notes"] == 0 and table["Piano"]["onset_f1"] == 0.0
    assert table["Pipe"]["onset_offset_f1"] == table["Bass"]["onset_f1"] == 1.0
    assert table["Drums"]["onset_f1"] == 1.0 and table["Drums"]["onset_offset_f1"] is None


def test_transcription_metrics_aggregates_like_mt3(music21_sequences):
    bach = music21_sequences["bach_chorale"]
    with_drums = _with_drums(music21_sequences["piano_piece"], seconds=20.0)
    rng = np.random.default_rng(2)
    est_bach = _shift(bach, rng, [0.0, 0.08], [0.0])
    est_piano = _filtered(with_drums, lambda n: rng.random() >= 0.2)
    per_track = [metrics.note_metrics(bach, est_bach), metrics.note_metrics(with_drums, est_piano)]
    result = metrics.transcription_metrics([(bach, est_bach, 2, 1), {"ref_ns": with_drums, "est_ns": est_piano}])
    assert result["num_tracks"] == 2
    assert result["onset_f1"] == pytest.approx(np.mean([t["onset_f1"] for t in per_track]))
    assert result["multi_instrument_f1"] == pytest.approx(np.mean([t["multi_instrument_f1"] for t in per_track]))
    # only the second track has drums: its drum F1 is the mean, the undefined one is skipped
    assert per_track[0]["drum_onset_f1"] is None
    assert result["drum_onset_f1"] == pytest.approx(per_track[1]["drum_onset_f1"])
    assert result["ref_notes"] == len(bach.notes) + len(with_drums.notes)
    assert result["est_invalid_events"] == 2 and result["est_dropped_events"] == 1
    # pooled classes: matched notes over all notes of the family across tracks
    piano = result["instrument_classes"]["Piano"]
    assert piano["ref_notes"] == sum(not n.is_drum for n in with_drums.notes)
    assert piano["onset_recall"] == pytest.approx(sum(not n.is_drum for n in est_piano.notes) / piano["ref_notes"])
    assert set(result["instrument_classes"]) == {"Piano", "Bass", "Reed", "Pipe", "Drums"}
    with pytest.raises(ValueError):
        metrics.transcription_metrics([(bach,)])


def test_prepare_reference_applies_sustain():
    ns = note_seq.NoteSequence()
    ns.notes.add(pitch=60, start_time=0.0, end_time=0.5, velocity=80)
    ns.notes.add(pitch=64, start_time=3.0, end_time=3.5, velocity=80)
    ns.control_changes.add(time=0.1, control_number=64, control_value=127)
    ns.control_changes.add(time=2.0, control_number=64, control_value=0)
    ns.control_changes.add(time=0.0, control_number=7, control_value=100)
    ns.total_time = 3.5
    out = metrics.prepare_reference(ns)
    assert [n.end_time for n in out.notes] == pytest.approx([2.0, 3.5])
    assert [cc.control_number for cc in out.control_changes] == [7]
    assert ns.notes[0].end_time == 0.5  # input untouched


def test_metrics_module_never_imports_tensorflow():
    code = ("import sys, note_seq; from mt3 import metrics, plotting; ns = note_seq.NoteSequence(); "
            "ns.notes.add(pitch=60, start_time=0, end_time=1, velocity=80); metrics.note_metrics(ns, ns); "
            "assert 'tensorflow' not in sys.modules and 'jax' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)
