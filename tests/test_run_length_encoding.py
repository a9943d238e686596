"""Shift run-length encoding, redundant-state removal, frame indexing and segment decoding (REFERENCE §3)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mt3 import run_length_encoding as rle
from mt3 import vocabularies
from mt3.event_codec import Event

CODEC = vocabularies.build_codec(vocabularies.MT3_VOCAB_CONFIG)
SHIFT1 = CODEC.encode_event(Event("shift", 1))
PITCH = CODEC.event_type_range("pitch")[0]
VEL = CODEC.event_type_range("velocity")[0]
PROGRAM = CODEC.event_type_range("program")[0]


def E(event_type, value):
    return CODEC.encode_event(Event(event_type, value))


# an unencoded stream: runs of single-step shifts between non-shift events
streams = st.lists(st.one_of(st.lists(st.just(SHIFT1), min_size=1, max_size=2500),
                             st.lists(st.integers(PITCH, CODEC.num_classes - 1), min_size=1, max_size=3)),
                   max_size=8).map(lambda runs: np.array([t for run in runs for t in run], dtype=np.int32))


def timed_events(tokens):
    """(step, token) of every non-shift token, counting single shifts: what the stream means."""
    out, step = [], 0
    for t in tokens:
        if t == SHIFT1:
            step += 1
        else:
            out.append((step, int(t)))
    return out


def decoded_timed_events(encoded):
    """(step, token) after run-length decoding: consecutive shifts sum, the count restarts after each event."""
    out, steps, absolute = [], 0, 0
    for t in encoded:
        if CODEC.is_shift_event_index(t):
            steps += int(t)
            absolute = steps
        else:
            out.append((absolute, int(t)))
            steps = 0
    return out


@given(streams)
def test_run_length_encoding_round_trip(tokens):
    encoded = rle.run_length_encode_shifts(tokens, CODEC)
    assert decoded_timed_events(encoded) == timed_events(tokens)
    shifts = encoded[[CODEC.is_shift_event_index(t) for t in encoded]] if len(encoded) else encoded
    assert np.all((shifts >= 1) & (shifts <= CODEC.max_shift_steps))  # never a zero shift, never too long
    if len(encoded):
        assert not CODEC.is_shift_event_index(encoded[-1])  # trailing shifts dropped


def test_shifts_are_absolute_chunked_and_merged():
    p60, p62 = E("pitch", 60), E("pitch", 62)
    tokens = [SHIFT1] * 3 + [p60] + [SHIFT1] * 2 + [p62, p60] + [SHIFT1] * 2500 + [p62] + [SHIFT1] * 7
    assert list(rle.run_length_encode_shifts(tokens, CODEC)) == [3, p60, 5, p62, p60, 1000, 1000, 505, p62]
    assert list(rle.run_length_encode_shifts([p60, SHIFT1, SHIFT1], CODEC)) == [p60]
    assert len(rle.run_length_encode_shifts([SHIFT1] * 4, CODEC)) == 0


@given(st.lists(st.sampled_from([E("velocity", 0), E("velocity", 1), E("program", 0), E("program", 5),
                                 E("pitch", 60), SHIFT1]), max_size=40))
def test_remove_redundant_state_changes(tokens):
    out = rle.remove_redundant_state_changes(tokens, CODEC)
    expected, last = [], {}
    for t in tokens:
        kind = "velocity" if VEL <= t < VEL + 2 else "program" if PROGRAM <= t < PROGRAM + 128 else None
        if kind is None or last.get(kind) != t:
            expected.append(t)
        if kind:
            last[kind] = t
    assert list(out) == expected


def simple_encode(state, value, codec):
    return [Event("pitch", value)]


def test_encode_and_index_events_frame_assignment():
    # frames every 8 ms, steps every 10 ms; events at 0, 0.013 (step 1), 0.016 (step 2)
    frame_times = np.arange(6) / 125.0
    events, starts, ends, state_events, state_indices = rle.encode_and_index_events(
        None, [0.016, 0.0, 0.013], [62, 60, 61], simple_encode, CODEC, frame_times)
    p = lambda v: E("pitch", v)
    # step 0: p60; shift; step 1: p61; shift; step 2: p62; then shifts until past the last frame (0.04 s)
    assert list(events) == [p(60), SHIFT1, p(61), SHIFT1, p(62), SHIFT1, SHIFT1, SHIFT1]
    # frame f owns the tokens from step floor(t_f * 100): frames 0,1 -> step 0 (frame 0 empty), 2 (0.016) -> step 1,
    # 3 (0.024) -> step 2, 4 (0.032) -> step 3, 5 (0.04) -> step 4
    assert list(starts) == [0, 0, 2, 4, 6, 7]
    assert list(ends) == [0, 2, 4, 6, 7, 8]
    assert len(state_events) == 0 and len(state_indices) == 6


def test_encode_and_index_events_state_dumps():
    def count_state(state, value, codec):
        state.append(value)
        return [Event("pitch", value)]

    dump = lambda state: [Event("program", len(state)), Event("tie", 0)]
    frame_times = np.arange(4) / 125.0
    _, _, _, state_events, state_indices = rle.encode_and_index_events(
        [], [0.0, 0.02], [60, 61], count_state, CODEC, frame_times, dump)
    # one dump before each event plus the final state; frames before step 2 see the dump taken before event 2
    assert list(state_events) == [E("program", 0), E("tie", 0), E("program", 1), E("tie", 0), E("program", 2),
                                  E("tie", 0)]
    assert list(state_indices) == [0, 0, 2, 2]


class Recorder:
    def __init__(self):
        self.calls = []


def record(state, time, event, codec):
    if event.type == "tie":
        raise ValueError("rejected")
    state.calls.append((round(time, 6), event.type, event.value))


def test_decode_events_absolute_shifts_invalid_and_dropped():
    state = Recorder()
    tokens = [E("pitch", 60), 50, E("pitch", 61), 20, E("tie", 0), -2, 10_000, 100, E("pitch", 62), 1, 2]
    invalid, dropped = rle.decode_events(state, tokens, 2.0, 2.9, CODEC, record)
    assert state.calls == [(2.0, "pitch", 60), (2.5, "pitch", 61)]
    # tie rejected by the decode function, -2 and 10000 are not codec indices; shift 100 -> 3.0 > 2.9: rest dropped
    assert invalid == 3 and dropped == 4
    state = Recorder()
    assert rle.decode_events(state, tokens[:4] + [E("pitch", 63)], 1.0, None, CODEC, record) == (0, 0)
    assert state.calls[-1] == (1.2, "pitch", 63)  # shift 20 counts from the segment start, not from 1.5
