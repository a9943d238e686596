"""The event codec: contiguous indices, shift first at 0, exact round trips, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mt3.event_codec import Codec, Event, EventRange

RANGES = [EventRange("pitch", 21, 108), EventRange("velocity", 0, 3), EventRange("tie", 0, 0)]


@st.composite
def codecs(draw):
    names = draw(st.lists(st.sampled_from(["pitch", "velocity", "tie", "program", "drum", "x"]), unique=True,
                          max_size=5))
    ranges = []
    for name in names:
        lo = draw(st.integers(-5, 50))
        ranges.append(EventRange(name, lo, lo + draw(st.integers(0, 130))))
    return Codec(max_shift_steps=draw(st.integers(1, 1000)), steps_per_second=100, event_ranges=ranges)


@given(codec=codecs(), data=st.data())
def test_every_index_round_trips(codec, data):
    index = data.draw(st.integers(0, codec.num_classes - 1))
    event = codec.decode_event_index(index)
    assert codec.encode_event(event) == index
    lo, hi = codec.event_type_range(event.type)
    assert lo <= index <= hi
    assert codec.is_shift_event_index(index) == (event.type == "shift")


@given(codec=codecs())
def test_ranges_are_contiguous_and_shift_first(codec):
    ranges = codec.event_ranges
    assert ranges[0] == EventRange("shift", 0, codec.max_shift_steps)
    spans = [codec.event_type_range(er.type) for er in ranges]
    assert spans[0][0] == 0 and spans[-1][1] == codec.num_classes - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:]))
    # a shift's index is its value: RLE and decoding rely on this
    assert all(codec.encode_event(Event("shift", v)) == v for v in (0, 1, codec.max_shift_steps))


def test_layout_and_errors():
    codec = Codec(max_shift_steps=100, steps_per_second=100, event_ranges=RANGES)
    assert codec.num_classes == 101 + 88 + 4 + 1
    assert codec.encode_event(Event("pitch", 21)) == 101
    assert codec.encode_event(Event("velocity", 3)) == 101 + 88 + 3
    assert codec.decode_event_index(np.int32(193)) == Event("tie", 0)
    assert codec.max_shift_steps == 100 and codec.steps_per_second == 100
    for bad in (Event("pitch", 20), Event("pitch", 109), Event("drum", 1)):
        with pytest.raises(ValueError):
            codec.encode_event(bad)
    for bad in (-1, -2, codec.num_classes, 2**70, 1.5, "3", None):
        with pytest.raises(ValueError):
            codec.decode_event_index(bad)
    with pytest.raises(ValueError):
        codec.event_type_range("drum")
    with pytest.raises(ValueError, match="unique"):
        Codec(10, 100, [EventRange("pitch", 0, 1), EventRange("pitch", 2, 3)])
    with pytest.raises(ValueError, match="unique"):
        Codec(10, 100, [EventRange("shift", 0, 1)])
    assert codec == Codec(100, 100, list(RANGES)) and hash(codec) == hash(Codec(100, 100, list(RANGES)))
    assert codec != Codec(99, 100, list(RANGES))
