"""Stitching segment predictions: one decoding state across segments, ties, max_time, and a decoder that never raises
whatever a model emits."""

from __future__ import annotations

import note_seq
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mt3 import metrics_utils, vocabularies
from mt3 import note_sequences as nsq
from mt3.event_codec import Event

CODEC = vocabularies.build_codec(vocabularies.MT3_VOCAB_CONFIG)
SPECS = [nsq.NoteEncodingWithTiesSpec, nsq.NoteEncodingSpec, nsq.NoteOnsetEncodingSpec]


def E(event_type, value):
    return CODEC.encode_event(Event(event_type, value))


def notes_of(ns):
    return sorted((n.pitch, n.program, n.is_drum, round(n.start_time, 6), round(n.end_time, 6)) for n in ns.notes)


# arbitrary model output: valid indices, ids never trimmed, DECODED_INVALID_ID, DECODED_EOS_ID, huge values
token_lists = st.lists(st.one_of(st.integers(0, CODEC.num_classes - 1), st.sampled_from([-2, -1, 1388, 2**40]),
                                 st.sampled_from([E("tie", 0), E("velocity", 0), E("velocity", 1), E("program", 3),
                                                  E("pitch", 60), E("drum", 36), 5, 300])), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=st.lists(st.tuples(token_lists, st.floats(0.0, 20.0)), max_size=5), spec=st.sampled_from(SPECS))
def test_decoder_never_raises_and_counts_invalid_events(segments, spec):
    predictions = [{"est_tokens": np.array(tokens, dtype=np.int64), "start_time": start} for tokens, start in segments]
    result = metrics_utils.event_predictions_to_ns(predictions, CODEC, spec)
    n_bad_ids = sum(sum(1 for t in tokens if not 0 <= t < CODEC.num_classes) for tokens, _ in segments)
    total = sum(len(tokens) for tokens, _ in segments)
    assert result["est_dropped_events"] >= 0 and 0 <= result["est_invalid_events"] <= total
    # ids outside the codec are invalid unless they were dropped after a segment's end
    assert result["est_invalid_events"] + result["est_dropped_events"] >= n_bad_ids
    for note in result["est_ns"].notes:
        assert note.end_time >= note.start_time + nsq.MIN_NOTE_DURATION - 1e-9


def test_invalid_ids_are_counted_not_raised():
    tokens = [-2, E("program", 0), E("velocity", 1), E("pitch", 60), -2, 50, E("velocity", 0), E("pitch", 60),
              E("pitch", 61)]  # the last one: note-off for a note never started
    result = metrics_utils.event_predictions_to_ns([{"est_tokens": tokens, "start_time": 0.0}], CODEC,
                                                   nsq.NoteEncodingSpec)
    assert result["est_invalid_events"] == 3
    assert notes_of(result["est_ns"]) == [(60, 0, False, 0.0, 0.5)]


def test_ties_stitch_a_note_across_segments_and_end_untied_notes():
    seg0 = [E("tie", 0), E("program", 5), E("velocity", 1), E("pitch", 60), E("pitch", 64)]
    seg1 = [E("program", 5), E("pitch", 60), E("tie", 0), 30, E("velocity", 0), E("pitch", 60)]  # 64 not tied
    seg2 = [E("tie", 0), 10, E("program", 5), E("velocity", 1), E("pitch", 67)]  # never ended: flushed
    preds = [{"est_tokens": seg1, "start_time": 2.048}, {"est_tokens": seg0, "start_time": 0.0},
             {"est_tokens": seg2, "start_time": 4.096}]  # any order: sorted by start_time
    result = metrics_utils.event_predictions_to_ns(preds, CODEC, nsq.NoteEncodingWithTiesSpec)
    assert (result["est_invalid_events"], result["est_dropped_events"]) == (0, 0)
    # origins are the frame times floored to 10 ms: 2.04 and 4.09
    assert notes_of(result["est_ns"]) == [(60, 5, False, 0.0, 2.34), (64, 5, False, 0.0, 2.04),
                                          (67, 5, False, 4.19, 4.2)]
    assert "raw_inputs" not in result


def test_events_past_the_next_segment_start_are_dropped():
    seg0 = [E("tie", 0), E("program", 0), E("velocity", 1), E("pitch", 60), 150, E("velocity", 0), E("pitch", 60),
            250, E("pitch", 61)]
    preds = [{"est_tokens": seg0, "start_time": 0.0, "raw_inputs": np.zeros((2, 4))},
             {"est_tokens": [E("tie", 0)], "start_time": 2.048, "raw_inputs": np.ones((1, 4))}]
    result = metrics_utils.event_predictions_to_ns(preds, CODEC, nsq.NoteEncodingWithTiesSpec)
    assert result["est_dropped_events"] == 2  # shift to 2.5 s > 2.04 s: that shift and the pitch
    assert notes_of(result["est_ns"]) == [(60, 0, False, 0.0, 1.5)]
    assert result["raw_inputs"].shape == (3, 4) and result["start_times"] == [0.0, 2.048]


@pytest.mark.parametrize("time, origin", [(2.048, 2.04), (2.04, 2.04), (2.0399999999999996, 2.04), (10.24, 10.24),
                                          (0.0, 0.0), (0.008, 0.0)])
def test_segment_start_time_snaps_down_to_the_grid(time, origin):
    assert metrics_utils.segment_start_time(time, CODEC) == pytest.approx(origin, abs=1e-12)


@pytest.mark.parametrize("piece", ["bach_chorale", "string_quartet", "piano_piece"])
def test_note_sequence_round_trip_on_music(music21_sequences, piece):
    ns = music21_sequences[piece]
    result = metrics_utils.note_sequence_round_trip(ns, vocab="mt3", segment_seconds=1.5)
    assert result["invalid_events"] == 0 and result["dropped_events"] == 0
    assert result["max_segment_tokens"] <= 1023  # fits MT3's target length with EOS
    expected = nsq.trim_overlapping_notes(result["ref_ns"])
    got = notes_of(result["est_ns"])
    want = sorted((n.pitch, n.program, n.is_drum, round(n.start_time * 100) / 100,
                   max(round(n.end_time * 100) / 100, round(n.start_time * 100) / 100 + 0.01)) for n in expected.notes)
    assert [g[:3] for g in got] == [w[:3] for w in want]
    np.testing.assert_allclose([g[3:] for g in got], [w[3:] for w in want], atol=1e-9)
    assert result["notes_in"] == len(ns.notes) and result["notes_out"] == len(expected.notes)


def test_round_trip_ismir2021_drops_programs_keeps_velocity():
    ns = note_seq.NoteSequence()
    ns.notes.add(pitch=60, start_time=0.1, end_time=5.0, velocity=33, program=40)
    ns.notes.add(pitch=62, start_time=4.5, end_time=9.0, velocity=90, program=0)
    result = metrics_utils.note_sequence_round_trip(ns, vocab="ismir2021")
    assert result["segments"] == 3  # 9.1 s of frames in 4.096 s segments
    assert sorted((n.pitch, n.program, n.velocity, n.start_time, n.end_time) for n in result["est_ns"].notes) == [
        (60, 0, 33, 0.1, 5.0), (62, 0, 90, 4.5, 9.0)]
    with pytest.raises(ValueError, match="vocabulary"):
        metrics_utils.note_sequence_round_trip(ns, vocab="mt4")
