"""Time-indexed event streams: encode whole tracks against audio frames, run-length encode shifts, decode segments.

The encoding is MT3's (REFERENCE §3), kept exactly because it decides which token belongs to which audio frame:

- `encode_and_index_events` walks the time-sorted events and emits one `shift 1` per 10 ms step between them; every
  frame records the index of its first token (`event_start_indices`) and, for ties, the index of the encoder-state dump
  that was current at that point (`state_event_indices`).
- A segment's targets are a slice of that stream (plus the tie section); `run_length_encode_shifts` then replaces the
  single-step shifts by the *absolute* step count since the segment start (chunks of at most `max_shift_steps`),
  dropping trailing shifts, and `remove_redundant_state_changes` drops velocity/program tokens that repeat the last one.
- `decode_events` is the inverse for one segment, driven by an encoding spec's decode function.

This is the generic, event-function-driven implementation (a Python loop, as MT3). The note-specific vectorised path
used for training lives in `mt3.data.track_tokens.tokenize_note_sequence`; tests check the two agree token for token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mt3 import event_codec


@dataclasses.dataclass(frozen=True)
class EventEncodingSpec:
    """How one kind of symbolic data is encoded to events and decoded back (MT3's EventEncodingSpec)."""

    init_encoding_state_fn: Callable[[], Any]
    encode_event_fn: Callable[[Any, Any, event_codec.Codec], Sequence[event_codec.Event]]
    encoding_state_to_events_fn: Callable[[Any], Sequence[event_codec.Event]] | None
    init_decoding_state_fn: Callable[[], Any]
    begin_decoding_segment_fn: Callable[[Any], None]
    decode_event_fn: Callable[[Any, float, event_codec.Event, event_codec.Codec], None]
    flush_decoding_state_fn: Callable[[Any], Any]


def encode_and_index_events(state, event_times: Sequence[float], event_values: Sequence, encode_event_fn,
                            codec: event_codec.Codec, frame_times: Sequence[float],
                            encoding_state_to_events_fn=None, *, mt3_compat: bool = False):
    """Encodes a whole track's events and indexes them by audio frame.

    Events are stably sorted by raw time and quantised to `round(t * steps_per_second)`. Returns numpy int32 arrays
    (events, event_start_indices, event_end_indices, state_events, state_event_indices):
    - frame i's tokens are events[event_start_indices[i]:event_end_indices[i]]; a frame owns the tokens from the
      first token of step floor(frame_time * sps) on (strict `frame_time < step / sps` test), so every token belongs
      to exactly one frame and events after the last frame belong to the last frame;
    - with `encoding_state_to_events_fn`, the state is dumped before every event; state_event_indices[i] is the
      start of the dump valid at frame i. One extra dump of the final state is appended so frames after the last
      event's step point at the state after it. MT3's loop never advances its state index after the last event, so
      there its frames point at the dump taken before the final step's events (notes that have ended still listed);
      `mt3_compat=True` reproduces that, for users comparing against MT3-trained models.
    """
    frame_times = np.asarray(frame_times, dtype=np.float64)
    sps = codec.steps_per_second
    order = np.argsort(np.asarray(event_times, dtype=np.float64), kind="stable")
    event_steps = [int(round(float(event_times[i]) * sps)) for i in order]
    event_values = [event_values[i] for i in order]
    shift1 = codec.encode_event(event_codec.Event("shift", 1))

    events: list[int] = []
    state_events: list[int] = []
    event_start_indices: list[int] = []
    state_event_indices: list[int] = []
    cur_step = 0
    cur_event_idx = 0
    cur_state_event_idx = 0

    def fill_event_start_indices_to_cur_step():
        while len(event_start_indices) < len(frame_times) and frame_times[len(event_start_indices)] < cur_step / sps:
            event_start_indices.append(cur_event_idx)
            state_event_indices.append(cur_state_event_idx)

    for event_step, event_value in zip(event_steps, event_values):
        while event_step > cur_step:
            events.append(shift1)
            cur_step += 1
            fill_event_start_indices_to_cur_step()
            cur_event_idx = len(events)
            cur_state_event_idx = len(state_events)
        if encoding_state_to_events_fn:
            # the dump captures the state *before* this event
            state_events.extend(codec.encode_event(e) for e in encoding_state_to_events_fn(state))
        events.extend(codec.encode_event(e) for e in encode_event_fn(state, event_value, codec))

    # After the last event keep shifting until every frame is covered. The test is not strict: a step that lines up
    # exactly with a frame time still needs one more shift to "cover" that frame.
    while len(frame_times) and cur_step / sps <= frame_times[-1]:
        events.append(shift1)
        cur_step += 1
        fill_event_start_indices_to_cur_step()
        cur_event_idx = len(events)
        if not mt3_compat:
            cur_state_event_idx = len(state_events)
    if encoding_state_to_events_fn:
        state_events.extend(codec.encode_event(e) for e in encoding_state_to_events_fn(state))

    event_end_indices = event_start_indices[1:] + [len(events)] if event_start_indices else []
    as_int32 = lambda x: np.asarray(x, dtype=np.int32)
    return (as_int32(events), as_int32(event_start_indices), as_int32(event_end_indices), as_int32(state_events),
            as_int32(state_event_indices))


def run_length_encode_shifts(tokens, codec: event_codec.Codec) -> np.ndarray:
    """Single-step shifts -> absolute step counts since the segment start (numpy, MT3's run_length_encode_shifts_fn).

    Before each non-shift token that follows at least one shift, the cumulative shift since the first token is
    emitted, split into chunks of at most `max_shift_steps` (the decoder sums consecutive shifts). Leading shifts are
    merged, trailing shifts after the last event dropped, and a shift of 0 is never emitted.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    max_shift = codec.max_shift_steps
    is_shift = (tokens >= 0) & (tokens <= max_shift)
    event_pos = np.flatnonzero(~is_shift)
    if event_pos.size == 0:
        return np.zeros(0, dtype=np.int32)
    total = np.cumsum(np.where(is_shift, tokens, 0))[event_pos]  # shift steps before each event
    previous = np.concatenate([[0], total[:-1]])
    n_chunks = np.where(total > previous, -(-total // max_shift), 0)
    out_len = n_chunks + 1
    out = np.empty(int(out_len.sum()), dtype=np.int32)
    ends = np.cumsum(out_len)
    out[ends - 1] = tokens[event_pos]
    has_shift = n_chunks > 0
    if np.any(n_chunks > 1):  # rare: more than max_shift steps in one segment
        owner = np.repeat(np.arange(len(n_chunks)), n_chunks)
        k = np.arange(owner.size) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
        chunk = np.minimum(max_shift, total[owner] - k * max_shift)
        out[(ends - out_len)[owner] + k] = chunk
    else:
        out[(ends - out_len)[has_shift]] = total[has_shift]
    return out


def remove_redundant_state_changes(tokens, codec: event_codec.Codec,
                                   state_change_event_types: Sequence[str] = ("velocity", "program")) -> np.ndarray:
    """Drops every state-change token equal to the previous token of its type (numpy; MT3 starts from 'unset')."""
    tokens = np.asarray(tokens, dtype=np.int32)
    keep = np.ones(len(tokens), dtype=bool)
    for event_type in state_change_event_types:
        lo, hi = codec.event_type_range(event_type)
        pos = np.flatnonzero((tokens >= lo) & (tokens <= hi))
        if pos.size > 1:
            values = tokens[pos]
            keep[pos[1:][values[1:] == values[:-1]]] = False
    return tokens[keep]


def decode_events(state, tokens, start_time: float, max_time: float | None, codec: event_codec.Codec,
                  decode_event_fn) -> tuple[int, int]:
    """Decodes one segment's run-length-encoded tokens into `state`; returns (invalid_events, dropped_events).

    Shifts are absolute from `start_time` (the step counter resets after every non-shift event). An index the codec
    does not know, or an event `decode_event_fn` rejects with ValueError, is counted as invalid and skipped. Once a
    shift goes past `max_time` (the next segment's start) the rest of the segment is dropped and counted.
    """
    invalid_events = 0
    dropped_events = 0
    cur_steps = 0
    cur_time = start_time
    sps = codec.steps_per_second
    for token_idx, token in enumerate(tokens):
        try:
            event = codec.decode_event_index(token)
        except ValueError:
            invalid_events += 1
            continue
        if event.type == "shift":
            cur_steps += event.value
            cur_time = start_time + cur_steps / sps
            if max_time is not None and cur_time > max_time:
                dropped_events = len(tokens) - token_idx
                break
        else:
            cur_steps = 0
            try:
                decode_event_fn(state, cur_time, event, codec)
            except ValueError:
                invalid_events += 1
    return invalid_events, dropped_events
