"""Note encoding: MT3's worked example token for token, the fast tokenizer against MT3's event-by-event encoder, and
segment-wise round trips (ties, many programs, drums, long notes, empty segments) checked note by note and with
mir_eval."""

from __future__ import annotations

import mir_eval
import note_seq
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mt3 import metrics_utils, run_length_encoding, vocabularies
from mt3 import note_sequences as nsq
from mt3.data import track_tokens

MT3_CODEC = vocabularies.build_codec(vocabularies.MT3_VOCAB_CONFIG)
PIANO_CODEC = vocabularies.build_codec(vocabularies.ISMIR2021_VOCAB_CONFIG)


def make_ns(notes):
    """notes: (pitch, start, end, program, is_drum[, velocity])."""
    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    for pitch, start, end, program, is_drum, *velocity in notes:
        ns.notes.add(pitch=pitch, start_time=start, end_time=end, program=program, is_drum=is_drum,
                     velocity=velocity[0] if velocity else 100)
    ns.total_time = max((n.end_time for n in ns.notes), default=0.0)
    return ns


def frame_times_for(ns, margin=0.1):
    seconds = max((n.end_time for n in ns.notes), default=0.0) + margin
    return track_tokens.audio_frame_times(int(np.ceil(seconds * 16000)))


def segment_predictions(ns, codec, spec, segment_frames, include_ties=True, granularity="full"):
    frame_times = frame_times_for(ns)
    track = track_tokens.tokenize_note_sequence(ns, frame_times, codec, spec)
    return [{"est_tokens": track_tokens.segment_targets(track, s, s + segment_frames, codec, include_ties, granularity),
             "start_time": float(frame_times[s])} for s in range(0, len(frame_times), segment_frames)]


def round_trip(ns, segment_frames=256, codec=MT3_CODEC, spec=nsq.NoteEncodingWithTiesSpec, include_ties=True,
               granularity="full"):
    preds = segment_predictions(ns, codec, spec, segment_frames, include_ties, granularity)
    return metrics_utils.event_predictions_to_ns(preds, codec, spec)


def expected_notes(ns, velocity=None):
    """What the codec can represent: times on the 10 ms grid, notes at least 10 ms, drums 10 ms long."""
    out = []
    for n in ns.notes:
        start = round(n.start_time * 100) / 100
        end = start + 0.01 if n.is_drum else max(round(n.end_time * 100) / 100, start + 0.01)
        out.append((n.pitch, 0 if n.is_drum else n.program, n.is_drum, round(start, 6), round(end, 6),
                    velocity if velocity is not None else n.velocity))
    return sorted(out)


def decoded_notes(ns):
    return sorted((n.pitch, n.program, n.is_drum, round(n.start_time, 6), round(n.end_time, 6), n.velocity)
                  for n in ns.notes)


def f1_scores(ref_ns, est_ns):
    """(onset+offset F1 on drumless notes, multi-instrument F1 with notes matched per (program, is_drum) track and
    drums onset-only), both with mir_eval's default tolerances."""
    def arrays(notes):
        iv = np.array([[n.start_time, n.end_time] for n in notes]).reshape(-1, 2)
        return iv, np.array([440.0 * 2 ** ((n.pitch - 69) / 12) for n in notes])

    def match(ref, est, offsets):
        if not ref or not est:
            return 0
        (ri, rp), (ei, ep) = arrays(ref), arrays(est)
        return len(mir_eval.transcription.match_notes(ri, rp, ei, ep, offset_ratio=0.2 if offsets else None))

    ref_nd = [n for n in ref_ns.notes if not n.is_drum]
    est_nd = [n for n in est_ns.notes if not n.is_drum]
    f1 = lambda m, r, e: 2 * m / (r + e) if r + e else 1.0
    onset_offset = f1(match(ref_nd, est_nd, True), len(ref_nd), len(est_nd))
    tracks = {(0 if n.is_drum else n.program, n.is_drum) for n in list(ref_ns.notes) + list(est_ns.notes)}
    select = lambda ns, p, d: [n for n in ns.notes if n.is_drum == d and (d or n.program == p)]
    matched = sum(match(select(ref_ns, p, d), select(est_ns, p, d), not d) for p, d in tracks)
    return onset_offset, f1(matched, len(ref_ns.notes), len(est_ns.notes))


# --------------------------------------------------------------------------------------------------------------------
# REFERENCE §3.5 worked example (vb=1, ties): bass p40 0-3 s, piano p60 0.5-1.5, drum 36 at 1.0, piano p64 1.5-2.5

WORKED_EXAMPLE = [(40, 0.0, 3.0, 32, False), (60, 0.5, 1.5, 0, False), (36, 1.0, 1.05, 0, True),
                  (64, 1.5, 2.5, 0, False)]


def test_worked_example_token_for_token():
    ns = make_ns(WORKED_EXAMPLE)
    frame_times = track_tokens.audio_frame_times(8 * 16000)
    track = track_tokens.tokenize_note_sequence(ns, frame_times, MT3_CODEC, nsq.NoteEncodingWithTiesSpec)
    seg0 = vocabularies.encode_tokens(track_tokens.segment_targets(track, 0, 256, MT3_CODEC, True))
    assert list(seg0) + [vocabularies.EOS_ID] == [1134, 1167, 1133, 1044, 53, 1135, 1064, 103, 1299, 153, 1132, 1064,
                                                  1133, 1068, 1]
    seg1 = track_tokens.segment_targets(track, 256, 512, MT3_CODEC, True)
    E = lambda t, v: MT3_CODEC.encode_event(nsq.event_codec.Event(t, v))
    assert list(seg1) == [E("program", 0), E("pitch", 64), E("program", 32), E("pitch", 40), E("tie", 0),
                          E("shift", 46), E("program", 0), E("velocity", 0), E("pitch", 64), E("shift", 96),
                          E("program", 32), E("pitch", 40)]
    # REFERENCE §3.3: segment 1 starts at frame 256 (2.048 s), its origin is 2.04 s, so 2.50 s is shift 46
    # the segment with no notes sounding at its start (segment 3, 6.144 s) is a bare tie
    assert list(track_tokens.segment_targets(track, 256 * 3, 256 * 4, MT3_CODEC, True)) == [E("tie", 0)]


def test_worked_example_decodes_back():
    ns = make_ns(WORKED_EXAMPLE)
    result = round_trip(ns)
    assert (result["est_invalid_events"], result["est_dropped_events"]) == (0, 0)
    assert decoded_notes(result["est_ns"]) == expected_notes(ns, velocity=127)
    instruments = {(n.program, n.is_drum): n.instrument for n in result["est_ns"].notes}
    assert instruments[(0, True)] == 9 and instruments[(32, False)] != instruments[(0, False)]


# --------------------------------------------------------------------------------------------------------------------
# random NoteSequences


@st.composite
def note_sequences(draw, max_notes=40, programs=(0, 4, 24, 32, 33, 40, 48, 73, 127), max_seconds=14.0, trim=True):
    """Random multi-program music with drums, cross-program overlaps, chords, long notes, gaps (empty segments);
    same-pitch overlaps trimmed unless `trim` is False (MAESTRO-like data, which MT3 tokenizes as it is)."""
    n = draw(st.integers(0, max_notes))
    times = st.floats(0.0, max_seconds, allow_nan=False).map(lambda t: round(t, 3))
    notes = []
    for _ in range(n):
        is_drum = draw(st.booleans()) and draw(st.booleans())
        start = draw(times)
        duration = draw(st.one_of(st.floats(0.001, 0.5), st.floats(0.5, 9.0)))  # up to 4+ segments long
        pitch = draw(st.integers(30, 90))
        notes.append((pitch, start, round(start + duration, 3), 0 if is_drum else draw(st.sampled_from(programs)),
                      is_drum, draw(st.integers(1, 127))))
    if draw(st.booleans()):  # a chord shared by several programs at one instant
        t = draw(times)
        notes += [(60, t, t + 1.0, p, False, 90) for p in programs[:4]]
    return nsq.trim_overlapping_notes(make_ns(notes)) if trim else make_ns(notes)


HYPO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPO
@given(ns=note_sequences(), segment_frames=st.sampled_from([125, 256, 300, 1250]))
def test_round_trip_with_ties_recovers_every_note(ns, segment_frames):
    result = round_trip(ns, segment_frames)
    assert result["est_invalid_events"] == 0 and result["est_dropped_events"] == 0
    assert decoded_notes(result["est_ns"]) == expected_notes(ns, velocity=127)
    if ns.notes:
        assert f1_scores(ns, result["est_ns"]) == (1.0, 1.0)


@HYPO
@given(ns=note_sequences(programs=(0,)), segment_frames=st.sampled_from([256, 512]))
def test_round_trip_without_ties_for_piano(ns, segment_frames):
    """ismir2021: 127 velocity bins keep velocities, notes may end in a later segment without any tie."""
    result = round_trip(ns, segment_frames, PIANO_CODEC, nsq.NoteEncodingSpec, include_ties=False, granularity="flat")
    assert result["est_invalid_events"] == 0 and result["est_dropped_events"] == 0
    assert decoded_notes(result["est_ns"]) == expected_notes(ns)


def generic_encoding(ns, frame_times, codec, mt3_compat=False):
    """MT3's event-by-event encoder (run_length_encoding.encode_and_index_events) with the note functions."""
    times, values = nsq.note_sequence_to_onsets_and_offsets_and_programs(ns)
    return run_length_encoding.encode_and_index_events(
        nsq.NoteEncodingState(), times, values, nsq.note_event_data_to_events, codec, frame_times,
        nsq.note_encoding_state_to_events, mt3_compat=mt3_compat)


def tie_sections(state_events, state_event_indices, tie_token):
    out = []
    for start in state_event_indices:
        end = start + int(np.argmax(state_events[start:] == tie_token)) + 1
        out.append(list(state_events[start:end]))
    return out


@HYPO
@given(ns=st.booleans().flatmap(lambda trim: note_sequences(max_notes=25, max_seconds=4.0, trim=trim)),
       codec=st.sampled_from([MT3_CODEC, PIANO_CODEC]), mt3_compat=st.booleans())
def test_fast_tokenizer_equals_event_by_event_encoder(ns, codec, mt3_compat):
    """Token for token, with and without same-pitch overlaps, in both end-of-track tie modes."""
    frame_times = frame_times_for(ns, margin=0.3)
    events, starts, ends, state_events, state_indices = generic_encoding(ns, frame_times, codec, mt3_compat)
    track = track_tokens.tokenize_note_sequence(ns, frame_times, codec, nsq.NoteEncodingWithTiesSpec,
                                                mt3_compat=mt3_compat)
    np.testing.assert_array_equal(track.events, events)
    np.testing.assert_array_equal(track.event_start_indices, starts)
    np.testing.assert_array_equal(track.event_end_indices, ends)
    tie = codec.encode_event(nsq.event_codec.Event("tie", 0))
    expected = tie_sections(state_events, state_indices, tie)
    assert [list(track.tie_section(f)) for f in range(len(frame_times))] == expected
    assert tie_sections(track.state_events, track.state_event_indices, tie) == expected
    # onsets only: pitch tokens in pitch order within a time step (MT3's sort), no state
    events, starts, ends, _, _ = run_length_encoding.encode_and_index_events(
        None, *nsq.note_sequence_to_onsets(ns), nsq.note_event_data_to_events, codec, frame_times)
    track = track_tokens.tokenize_note_sequence(ns, frame_times, codec, nsq.NoteOnsetEncodingSpec)
    np.testing.assert_array_equal(track.events, events)
    np.testing.assert_array_equal(track.event_start_indices, starts)
    np.testing.assert_array_equal(track.event_end_indices, ends)


def test_onsets_only_simultaneous_onsets_in_pitch_order_not_file_order():
    ns = make_ns([(64, 0.5, 1.0, 0, False), (36, 0.5, 0.6, 0, True), (60, 0.5, 1.0, 3, False),
                  (62, 0.2, 0.4, 0, False)])
    times, values = nsq.note_sequence_to_onsets(ns)
    assert [(t, v.pitch) for t, v in zip(times, values)] == [(0.5, 36), (0.5, 60), (0.2, 62), (0.5, 64)]
    frame_times = frame_times_for(ns)
    track = track_tokens.tokenize_note_sequence(ns, frame_times, MT3_CODEC, nsq.NoteOnsetEncodingSpec)
    E = lambda t, v: MT3_CODEC.encode_event(nsq.event_codec.Event(t, v))
    targets = track_tokens.segment_targets(track, 0, len(frame_times), MT3_CODEC, False)
    assert list(targets) == [E("shift", 20), E("pitch", 62), E("shift", 50), E("pitch", 36), E("pitch", 60),
                             E("pitch", 64)]


# two notes ending together at 1.0 s; audio to 3 s, so segments from frame 256 (2.048 s) start after the last event
END_OF_TRACK = [(60, 0.0, 1.0, 0, False), (40, 0.5, 1.0, 32, False)]


@pytest.mark.parametrize("mt3_compat", [False, True])
def test_tie_section_after_the_last_note_event(mt3_compat):
    ns = make_ns(END_OF_TRACK)
    frame_times = track_tokens.audio_frame_times(3 * 16000)
    track = track_tokens.tokenize_note_sequence(ns, frame_times, MT3_CODEC, mt3_compat=mt3_compat)
    E = lambda t, v: MT3_CODEC.encode_event(nsq.event_codec.Event(t, v))
    sounding = [E("program", 0), E("pitch", 60), E("program", 32), E("pitch", 40), E("tie", 0)]
    # frame 125 (1.0 s) owns the offsets at step 100: both modes list the notes they end
    assert list(track_tokens.segment_targets(track, 125, 256, MT3_CODEC, True)) == sounding + [
        E("program", 0), E("velocity", 0), E("pitch", 60), E("program", 32), E("pitch", 40)]
    after = list(track_tokens.segment_targets(track, 256, 512, MT3_CODEC, True))
    # ours: nothing sounds after 1.0 s -> `tie EOS`; MT3 never advances its state index past the final events, so
    # its targets list the notes sounding before them -> `program pitch ... tie EOS`
    assert after == (sounding if mt3_compat else [E("tie", 0)])
    # which is why ours is the default: stitched, MT3's targets decode with two invalid tie-section pitches
    preds = [{"est_tokens": track_tokens.segment_targets(track, s, s + 256, MT3_CODEC, True),
              "start_time": float(frame_times[s])} for s in range(0, len(frame_times), 256)]
    result = metrics_utils.event_predictions_to_ns(preds, MT3_CODEC, nsq.NoteEncodingWithTiesSpec)
    assert result["est_invalid_events"] == (2 if mt3_compat else 0)
    assert decoded_notes(result["est_ns"]) == expected_notes(ns, 127)  # the notes themselves survive


def test_long_note_through_segments_holding_only_its_tie():
    ns = make_ns([(48, 0.3, 9.0, 19, False), (36, 9.5, 9.6, 0, True), (50, 9.4, 9.8, 19, False)])
    preds = segment_predictions(ns, MT3_CODEC, nsq.NoteEncodingWithTiesSpec, 125)
    E = lambda t, v: MT3_CODEC.encode_event(nsq.event_codec.Event(t, v))
    middle = [list(p["est_tokens"]) for p in preds[1:8]]
    assert middle == [[E("program", 19), E("pitch", 48), E("tie", 0)]] * 7  # 1 s segments in 1..8 s: only the tie
    assert list(preds[9]["est_tokens"][:6]) == [E("program", 19), E("pitch", 48), E("tie", 0), E("velocity", 0),
                                                E("pitch", 48), 40]  # ends at 9.0 s = this segment's origin
    result = metrics_utils.event_predictions_to_ns(preds, MT3_CODEC, nsq.NoteEncodingWithTiesSpec)
    assert decoded_notes(result["est_ns"]) == expected_notes(ns, velocity=127)


def test_strict_frame_assignment_every_token_in_exactly_one_frame():
    # events exactly on frame times and on step boundaries between frames
    ns = make_ns([(60, 2.04, 2.048, 0, False), (61, 2.048, 2.05, 0, False), (62, 0.0, 0.008, 0, False)])
    frame_times = track_tokens.audio_frame_times(3 * 16000)
    track = track_tokens.tokenize_note_sequence(ns, frame_times, MT3_CODEC, nsq.NoteEncodingSpec)
    assert track.event_start_indices[0] == 0 and track.event_end_indices[-1] == len(track.events)
    np.testing.assert_array_equal(track.event_start_indices[1:], track.event_end_indices[:-1])
    # a token at step s belongs to the last frame with floor(t * 100) == s: frame 256 (2.048 s) owns step 204
    seg1 = track_tokens.segment_targets(track, 256, 512, MT3_CODEC, False)
    first = [MT3_CODEC.decode_event_index(t) for t in seg1[:3]]
    assert [e.type for e in first] == ["program", "velocity", "pitch"] and first[2].value == 60


@pytest.mark.parametrize("piece", ["bach_chorale", "string_quartet", "piano_piece"])
@pytest.mark.parametrize("segment_frames", [125, 256, 640])
def test_music21_round_trip(music21_sequences, piece, segment_frames):
    ns = nsq.trim_overlapping_notes(music21_sequences[piece])
    result = round_trip(ns, segment_frames)
    assert (result["est_invalid_events"], result["est_dropped_events"]) == (0, 0)
    assert decoded_notes(result["est_ns"]) == expected_notes(ns, velocity=127)
    assert f1_scores(ns, result["est_ns"]) == (1.0, 1.0)


def test_onsets_only_spec():
    ns = make_ns([(60, 0.5, 1.0, 0, False), (62, 2.2, 4.0, 3, False), (36, 3.0, 3.1, 0, True)])
    result = round_trip(ns, 256, spec=nsq.NoteOnsetEncodingSpec, include_ties=False)
    assert result["est_invalid_events"] == 0
    assert sorted((n.pitch, n.start_time, round(n.end_time - n.start_time, 6)) for n in result["est_ns"].notes) == [
        (36, 3.0, 0.01), (60, 0.5, 0.01), (62, 2.2, 0.01)]


# --------------------------------------------------------------------------------------------------------------------
# helpers


def test_trim_overlapping_notes_cuts_same_pitch_program_and_collapses_duplicates():
    ns = make_ns([(60, 0.0, 2.0, 0, False), (60, 1.0, 3.0, 0, False), (60, 1.0, 3.0, 0, False),
                  (60, 0.5, 1.5, 40, False), (61, 0.5, 1.5, 0, False)])
    trimmed = nsq.trim_overlapping_notes(ns)
    got = sorted((n.pitch, n.program, n.start_time, n.end_time) for n in trimmed.notes)
    assert got == [(60, 0, 0.0, 1.0), (60, 0, 1.0, 3.0), (60, 40, 0.5, 1.5), (61, 0, 0.5, 1.5)]
    assert len(ns.notes) == 5  # the input is not modified


def test_assign_instruments_in_order_of_appearance_skipping_nine():
    ns = make_ns([(60, 0, 1, p, False) for p in range(11)] + [(36, 0, 1, 5, True)])
    nsq.assign_instruments(ns)
    assert [n.instrument for n in ns.notes] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 9]


def test_validate_and_extract_track():
    with pytest.raises(ValueError, match="start time >= end time"):
        nsq.validate_note_sequence(make_ns([(60, 1.0, 1.0, 0, False)]))
    with pytest.raises(ValueError, match="zero velocity"):
        nsq.validate_note_sequence(make_ns([(60, 1.0, 2.0, 0, False, 0)]))
    ns = make_ns(WORKED_EXAMPLE)
    assert [n.pitch for n in nsq.extract_track(ns, 0, False).notes] == [60, 64]
    assert [n.pitch for n in nsq.extract_track(ns, 0, True).notes] == [36]
    assert nsq.extract_track(ns, 32, False).total_time == 3.0


def test_map_midi_programs_granularities():
    E = lambda t, v: MT3_CODEC.encode_event(nsq.event_codec.Event(t, v))
    tokens = np.array([E("program", 33), E("pitch", 40), E("program", 41), E("shift", 5)])
    assert list(nsq.map_midi_programs(tokens, MT3_CODEC, "full")) == list(tokens)
    assert list(nsq.map_midi_programs(tokens, MT3_CODEC, "midi_class")) == [E("program", 32), E("pitch", 40),
                                                                           E("program", 40), E("shift", 5)]
    assert list(nsq.map_midi_programs(tokens, MT3_CODEC, "flat")) == [E("pitch", 40), E("shift", 5)]
    with pytest.raises(ValueError, match="granularity"):
        nsq.map_midi_programs(tokens, MT3_CODEC, "coarse")


def test_segment_targets_rejects_bad_ranges():
    frame_times = track_tokens.audio_frame_times(16000)
    track = track_tokens.tokenize_note_sequence(make_ns(WORKED_EXAMPLE[:1]), frame_times, MT3_CODEC)
    with pytest.raises(ValueError):
        track_tokens.segment_targets(track, 10, 10, MT3_CODEC, True)
    with pytest.raises(ValueError):
        track_tokens.segment_targets(track, len(frame_times), len(frame_times) + 5, MT3_CODEC, True)
    with pytest.raises(ValueError, match="pitch"):
        track_tokens.tokenize_note_sequence(make_ns([(128, 0.0, 1.0, 0, False)]), frame_times, MT3_CODEC)
