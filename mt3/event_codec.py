"""The event codec: (type, value) events <-> dense integer indices, MT3's layout.

A codec is an ordered list of event ranges; an event's index is the offset of its type plus (value - min). The shift
range always comes first and starts at 0, so a codec index below or equal to `max_shift_steps` *is* a shift of that
many steps -- run-length encoding and decoding rely on this to test "is this a shift" with one comparison.
Vocabulary ids (PAD/EOS/UNK offset) are a separate layer: see `mt3.vocabularies`.
"""

from __future__ import annotations

import dataclasses
import functools
import operator


@dataclasses.dataclass(frozen=True)
class EventRange:
    """All values `min_value..max_value` (inclusive) of one event type."""

    type: str
    min_value: int
    max_value: int


@dataclasses.dataclass(frozen=True)
class Event:
    """One symbolic event, e.g. Event('pitch', 60) or Event('shift', 12)."""

    type: str
    value: int


class Codec:
    """Encodes and decodes events to and from contiguous integer indices.

    `max_shift_steps` and `steps_per_second` define the time grid (MT3: 1000 steps of 10 ms); `event_ranges` are the
    non-shift types in index order (MT3: pitch, velocity, tie, program, drum).
    """

    def __init__(self, max_shift_steps: int, steps_per_second: float, event_ranges: list[EventRange]):
        self.steps_per_second = steps_per_second
        self._shift_range = EventRange(type="shift", min_value=0, max_value=int(max_shift_steps))
        self._event_ranges = [self._shift_range, *event_ranges]
        types = [er.type for er in self._event_ranges]
        if len(types) != len(set(types)):
            raise ValueError(f"event types must be unique, got {types}")
        for er in self._event_ranges:
            if er.max_value < er.min_value:
                raise ValueError(f"empty event range {er}")
        # offsets[i] = first index of range i; kept for O(log n) decoding and O(1) type lookup
        self._offsets: list[int] = []
        offset = 0
        for er in self._event_ranges:
            self._offsets.append(offset)
            offset += er.max_value - er.min_value + 1
        self._num_classes = offset
        self._by_type = {er.type: (i, er) for i, er in enumerate(self._event_ranges)}

    @property
    def num_classes(self) -> int:
        """Number of distinct event indices (MT3: 1388 with 1 velocity bin, 1514 with 127)."""
        return self._num_classes

    @property
    def max_shift_steps(self) -> int:
        return self._shift_range.max_value

    @property
    def event_ranges(self) -> tuple[EventRange, ...]:
        """All ranges in index order, shift first."""
        return tuple(self._event_ranges)

    def is_shift_event_index(self, index: int) -> bool:
        return self._shift_range.min_value <= index <= self._shift_range.max_value

    def encode_event(self, event: Event) -> int:
        """Event -> index. Raises ValueError for an unknown type or an out-of-range value."""
        entry = self._by_type.get(event.type)
        if entry is None:
            raise ValueError(f"unknown event type: {event.type!r}")
        i, er = entry
        if not er.min_value <= event.value <= er.max_value:
            raise ValueError(f"event value {event.value} is not within range [{er.min_value}, {er.max_value}] "
                             f"for type {event.type}")
        return self._offsets[i] + event.value - er.min_value

    def event_type_range(self, event_type: str) -> tuple[int, int]:
        """(first index, last index), inclusive, of an event type."""
        entry = self._by_type.get(event_type)
        if entry is None:
            raise ValueError(f"unknown event type: {event_type!r}")
        i, er = entry
        return self._offsets[i], self._offsets[i] + er.max_value - er.min_value

    def decode_event_index(self, index: int) -> Event:
        """Index -> Event. Raises ValueError for anything that is not an integer in [0, num_classes)."""
        try:
            index = operator.index(index)  # ints and numpy integers; floats and strings are not indices
        except TypeError as err:
            raise ValueError(f"not an event index: {index!r}") from err
        if not 0 <= index < self._num_classes:
            raise ValueError(f"unknown event index: {index}")
        return self._decoded[index]

    @functools.cached_property
    def _decoded(self) -> tuple[Event, ...]:
        """Every index's Event, built once: decoding a whole track is then a table lookup per token."""
        return tuple(Event(er.type, value) for er in self._event_ranges
                     for value in range(er.min_value, er.max_value + 1))

    def __eq__(self, other) -> bool:
        return (isinstance(other, Codec) and self.steps_per_second == other.steps_per_second
                and self._event_ranges == other._event_ranges)

    def __hash__(self) -> int:
        return hash((self.steps_per_second, tuple(self._event_ranges)))

    def __repr__(self) -> str:
        ranges = ", ".join(f"{er.type}[{er.min_value}..{er.max_value}]" for er in self._event_ranges)
        return f"Codec(steps_per_second={self.steps_per_second}, {ranges}; num_classes={self.num_classes})"
