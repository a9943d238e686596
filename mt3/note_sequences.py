"""NoteSequences <-> note events: MT3's encoding specs, the tie mechanism, and a vectorised track tokenizer.

Event semantics follow MT3 (REFERENCE §2-3): a non-drum onset is `program, velocity, pitch`, an offset the same with
velocity 0, a drum hit `velocity, drum`; at one time step offsets come before onsets, each ordered by (program,
pitch), drums last. With ties, each segment starts with the notes already sounding (`program, pitch` pairs sorted by
(program, pitch)) and a `tie` token, so segments decode independently yet stitch into whole notes.

`tokenize_note_sequence` + `segment_targets` are the fast numpy path used by `mt3 tokens`, the seqio preprocessors and
the benchmarks. They produce exactly what MT3's event-by-event encoder (`run_length_encoding.encode_and_index_events`
with the functions below) produces; the tests check that token for token. note_seq is imported lazily.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import MutableMapping, MutableSet

import numpy as np

from mt3 import event_codec, run_length_encoding, vocabularies

DEFAULT_VELOCITY = 100
DEFAULT_NOTE_DURATION = 0.01
MIN_NOTE_DURATION = 0.01
SAMPLE_RATE = 16000
HOP_WIDTH = 128


def _new_note_sequence():
    import note_seq

    return note_seq.NoteSequence(ticks_per_quarter=220)


@dataclasses.dataclass(frozen=True)
class TrackSpec:
    """One instrument track scored on its own (Cerberus4: bass 32, drums, guitar 24, piano 0)."""

    name: str
    program: int = 0
    is_drum: bool = False


def extract_track(ns, program: int, is_drum: bool):
    """The notes of one (program, is_drum) track as a new NoteSequence."""
    track = _new_note_sequence()
    track.notes.extend(n for n in ns.notes if n.program == program and n.is_drum == is_drum)
    track.total_time = max((n.end_time for n in track.notes), default=0.0)
    return track


def trim_overlapping_notes(ns):
    """Copy of `ns` where a note overlapping the next same (pitch, program, is_drum) note ends at that note's start;
    notes left with zero length (e.g. exact duplicates) are dropped. MT3 does this to training targets, which cannot
    represent two sounding notes of one pitch and program."""
    trimmed = copy.deepcopy(ns)
    notes = trimmed.notes
    order = sorted(range(len(notes)), key=lambda i: (notes[i].pitch, notes[i].program, notes[i].is_drum,
                                                     notes[i].start_time))
    for prev, cur in zip(order, order[1:]):
        a, b = notes[prev], notes[cur]
        if (a.pitch, a.program, a.is_drum) == (b.pitch, b.program, b.is_drum) and a.end_time > b.start_time:
            a.end_time = b.start_time
    valid = [n for n in notes if n.start_time < n.end_time]
    del trimmed.notes[:]
    trimmed.notes.extend(valid)
    return trimmed


def validate_note_sequence(ns) -> None:
    """ValueError for a note with start >= end or zero velocity (MT3's check before encoding)."""
    for note in ns.notes:
        if note.start_time >= note.end_time:
            raise ValueError(f"note has start time >= end time: {note.start_time} >= {note.end_time}")
        if note.velocity == 0:
            raise ValueError("note has zero velocity")


def assign_instruments(ns) -> None:
    """Instrument index per program in order of first appearance, skipping 9; every drum note gets instrument 9."""
    program_instruments: dict[int, int] = {}
    for note in ns.notes:
        if not note.is_drum and note.program not in program_instruments:
            n = len(program_instruments)
            program_instruments[note.program] = n if n < 9 else n + 1
    for note in ns.notes:
        note.instrument = 9 if note.is_drum else program_instruments[note.program]


# ----------------------------------------------------------------------------------------------------------------
# NoteSequence -> (times, NoteEventData)


@dataclasses.dataclass
class NoteEventData:
    pitch: int
    velocity: int | None = None
    program: int | None = None
    is_drum: bool | None = None
    instrument: int | None = None


def note_sequence_to_onsets(ns):
    """Onset times and pitch-only event data (onsets-only task)."""
    return [n.start_time for n in ns.notes], [NoteEventData(pitch=n.pitch) for n in ns.notes]


def note_sequence_to_onsets_and_offsets(ns):
    """Offsets then onsets, notes sorted by pitch, no programs (a stable sort by time later keeps offsets first)."""
    notes = sorted(ns.notes, key=lambda n: n.pitch)
    times = [n.end_time for n in notes] + [n.start_time for n in notes]
    values = ([NoteEventData(pitch=n.pitch, velocity=0) for n in notes]
              + [NoteEventData(pitch=n.pitch, velocity=n.velocity) for n in notes])
    return times, values


def note_sequence_to_onsets_and_offsets_and_programs(ns):
    """Non-drum offsets then all onsets, notes sorted by (is_drum, program, pitch); drums have no offsets."""
    notes = sorted(ns.notes, key=lambda n: (n.is_drum, n.program, n.pitch))
    times = [n.end_time for n in notes if not n.is_drum] + [n.start_time for n in notes]
    values = ([NoteEventData(pitch=n.pitch, velocity=0, program=n.program, is_drum=False)
               for n in notes if not n.is_drum]
              + [NoteEventData(pitch=n.pitch, velocity=n.velocity, program=n.program, is_drum=n.is_drum)
                 for n in notes])
    return times, values


# ----------------------------------------------------------------------------------------------------------------
# encoding


@dataclasses.dataclass
class NoteEncodingState:
    """(pitch, program) -> velocity bin of the notes sounding now (0 = not sounding); drums never enter."""

    active_pitches: MutableMapping[tuple[int, int], int] = dataclasses.field(default_factory=dict)


def note_event_data_to_events(state: NoteEncodingState | None, value: NoteEventData,
                              codec: event_codec.Codec) -> list[event_codec.Event]:
    """One note onset/offset -> its events, updating the tie state."""
    Event = event_codec.Event
    if value.velocity is None:
        return [Event("pitch", value.pitch)]  # onsets only
    velocity_bin = vocabularies.velocity_to_bin(value.velocity, vocabularies.num_velocity_bins_from_codec(codec))
    if value.program is None:
        if state is not None:
            state.active_pitches[(value.pitch, 0)] = velocity_bin
        return [Event("velocity", velocity_bin), Event("pitch", value.pitch)]
    if value.is_drum:
        return [Event("velocity", velocity_bin), Event("drum", value.pitch)]
    if state is not None:
        state.active_pitches[(value.pitch, value.program)] = velocity_bin
    return [Event("program", value.program), Event("velocity", velocity_bin), Event("pitch", value.pitch)]


def note_encoding_state_to_events(state: NoteEncodingState) -> list[event_codec.Event]:
    """The tie section: `program, pitch` for every sounding note sorted by (program, pitch), then `tie`."""
    output = []
    for pitch, program in sorted(state.active_pitches, key=lambda k: k[::-1]):
        if state.active_pitches[(pitch, program)]:
            output += [event_codec.Event("program", program), event_codec.Event("pitch", pitch)]
    output.append(event_codec.Event("tie", 0))
    return output


# ----------------------------------------------------------------------------------------------------------------
# decoding


@dataclasses.dataclass
class NoteDecodingState:
    """Decoder state carried across the segments of one track."""

    current_time: float = 0.0
    current_velocity: int = DEFAULT_VELOCITY
    current_program: int = 0
    active_pitches: MutableMapping[tuple[int, int], tuple[float, int]] = dataclasses.field(default_factory=dict)
    tied_pitches: MutableSet[tuple[int, int]] = dataclasses.field(default_factory=set)
    is_tie_section: bool = False
    note_sequence: object = dataclasses.field(default_factory=_new_note_sequence)


def _add_note_to_sequence(ns, start_time, end_time, pitch, velocity, program=0, is_drum=False) -> None:
    end_time = max(end_time, start_time + MIN_NOTE_DURATION)
    ns.notes.add(start_time=start_time, end_time=end_time, pitch=pitch, velocity=velocity, program=program,
                 is_drum=is_drum)
    ns.total_time = max(ns.total_time, end_time)


def decode_note_onset_event(state: NoteDecodingState, time: float, event: event_codec.Event,
                            codec: event_codec.Codec) -> None:
    """Onsets-only decoding: a pitch is a 10 ms note at the default velocity."""
    if event.type != "pitch":
        raise ValueError(f"unexpected event type: {event.type}")
    _add_note_to_sequence(state.note_sequence, time, time + DEFAULT_NOTE_DURATION, event.value, DEFAULT_VELOCITY)


def decode_note_event(state: NoteDecodingState, time: float, event: event_codec.Event,
                      codec: event_codec.Codec) -> None:
    """Applies one event to the decoding state; ValueError (counted as invalid by the caller) for an impossible one."""
    if time < state.current_time:
        raise ValueError(f"event time < current time, {time} < {state.current_time}")
    state.current_time = time
    key = (event.value, state.current_program)
    if event.type == "pitch":
        if state.is_tie_section:
            if key not in state.active_pitches:
                raise ValueError(f"inactive pitch/program in tie section: {key}")
            if key in state.tied_pitches:
                raise ValueError(f"pitch/program is already tied: {key}")
            state.tied_pitches.add(key)
        elif state.current_velocity == 0:
            if key not in state.active_pitches:
                raise ValueError(f"note-off for inactive pitch/program: {key}")
            onset_time, onset_velocity = state.active_pitches.pop(key)
            _add_note_to_sequence(state.note_sequence, onset_time, time, event.value, onset_velocity,
                                  program=state.current_program)
        else:
            if key in state.active_pitches:
                # already sounding: end the old note here and start a new one (graceful overlap handling)
                onset_time, onset_velocity = state.active_pitches.pop(key)
                _add_note_to_sequence(state.note_sequence, onset_time, time, event.value, onset_velocity,
                                      program=state.current_program)
            state.active_pitches[key] = (time, state.current_velocity)
    elif event.type == "drum":
        if state.current_velocity == 0:
            raise ValueError("velocity cannot be zero for drum event")
        _add_note_to_sequence(state.note_sequence, time, time + DEFAULT_NOTE_DURATION, event.value,
                              state.current_velocity, is_drum=True)
    elif event.type == "velocity":
        state.current_velocity = vocabularies.bin_to_velocity(event.value,
                                                              vocabularies.num_velocity_bins_from_codec(codec))
    elif event.type == "program":
        state.current_program = event.value
    elif event.type == "tie":
        if not state.is_tie_section:
            raise ValueError("tie section end event when not in tie section")
        for active in list(state.active_pitches):
            if active not in state.tied_pitches:
                onset_time, onset_velocity = state.active_pitches.pop(active)
                _add_note_to_sequence(state.note_sequence, onset_time, state.current_time, active[0], onset_velocity,
                                      program=active[1])
        state.is_tie_section = False
    else:
        raise ValueError(f"unexpected event type: {event.type}")


def begin_tied_pitches_section(state: NoteDecodingState) -> None:
    """Every segment of a ties model starts by declaring which sounding notes continue."""
    state.tied_pitches = set()
    state.is_tie_section = True


def flush_note_decoding_state(state: NoteDecodingState):
    """Ends notes still sounding at max(last event time, latest onset + 10 ms), assigns instruments, returns the NS."""
    for onset_time, _ in state.active_pitches.values():
        state.current_time = max(state.current_time, onset_time + MIN_NOTE_DURATION)
    for (pitch, program), (onset_time, onset_velocity) in list(state.active_pitches.items()):
        _add_note_to_sequence(state.note_sequence, onset_time, state.current_time, pitch, onset_velocity,
                              program=program)
    state.active_pitches.clear()
    assign_instruments(state.note_sequence)
    return state.note_sequence


class NoteEncodingSpecType(run_length_encoding.EventEncodingSpec):
    """Type of the note encoding specs (a distinct name for gin and type checks, as MT3)."""


NoteOnsetEncodingSpec = NoteEncodingSpecType(
    init_encoding_state_fn=lambda: None, encode_event_fn=note_event_data_to_events, encoding_state_to_events_fn=None,
    init_decoding_state_fn=NoteDecodingState, begin_decoding_segment_fn=lambda state: None,
    decode_event_fn=decode_note_onset_event, flush_decoding_state_fn=lambda state: state.note_sequence)

NoteEncodingSpec = NoteEncodingSpecType(  # ismir2021: onsets + offsets, no tie section
    init_encoding_state_fn=lambda: None, encode_event_fn=note_event_data_to_events, encoding_state_to_events_fn=None,
    init_decoding_state_fn=NoteDecodingState, begin_decoding_segment_fn=lambda state: None,
    decode_event_fn=decode_note_event, flush_decoding_state_fn=flush_note_decoding_state)

NoteEncodingWithTiesSpec = NoteEncodingSpecType(  # MT3: every segment begins with a tie section
    init_encoding_state_fn=NoteEncodingState, encode_event_fn=note_event_data_to_events,
    encoding_state_to_events_fn=note_encoding_state_to_events, init_decoding_state_fn=NoteDecodingState,
    begin_decoding_segment_fn=begin_tied_pitches_section, decode_event_fn=decode_note_event,
    flush_decoding_state_fn=flush_note_decoding_state)


def map_midi_programs(tokens, codec: event_codec.Codec, granularity: str = "full") -> np.ndarray:
    """Applies a program granularity ('flat' drops program tokens, 'midi_class' maps to 8*(p//8), 'full' keeps)."""
    if granularity not in vocabularies.PROGRAM_GRANULARITIES:
        raise ValueError(f"unknown program granularity {granularity!r}; choose one of "
                         f"{sorted(vocabularies.PROGRAM_GRANULARITIES)}")
    return vocabularies.PROGRAM_GRANULARITIES[granularity].tokens_map_fn(np.asarray(tokens, np.int32), codec)


# ----------------------------------------------------------------------------------------------------------------
# vectorised whole-track tokenization


def audio_frame_times(num_samples: int, sample_rate: int = SAMPLE_RATE, hop_width: int = HOP_WIDTH) -> np.ndarray:
    """Frame times of `num_samples` of audio under MT3's framing: pad by hop - len % hop, then hop-sized frames."""
    num_frames = (int(num_samples) + hop_width - int(num_samples) % hop_width) // hop_width
    return np.arange(num_frames, dtype=np.float64) / (sample_rate / hop_width)


def _first_step_after(times: np.ndarray, steps_per_second: float) -> np.ndarray:
    """Smallest integer c >= 1 with t < c / sps, computed with the same float comparison as the event loop."""
    times = np.asarray(times, dtype=np.float64)
    c = np.floor(times * steps_per_second).astype(np.int64) + 1
    c = np.where(times < c / steps_per_second, c, c + 1)
    c = np.where((c > 1) & (times < (c - 1) / steps_per_second), c - 1, c)
    return np.maximum(c, 1)


class TrackTokens:
    """A whole track's unencoded event stream, indexed by audio frame (codec indices, int32).

    `events`, `event_start_indices`, `event_end_indices` are MT3's arrays. The tie state is kept as note intervals and
    a tie section is built only for the frames asked for (`tie_section`); `state_events` / `state_event_indices`
    materialise MT3's representation on first access (one dump per distinct state, each ending with `tie`).
    """

    def __init__(self, events, event_start_indices, event_end_indices, frame_state_positions, tie_intervals, codec):
        self.events = events
        self.event_start_indices = event_start_indices
        self.event_end_indices = event_end_indices
        self._frame_state_positions = frame_state_positions  # per frame: number of note events before its dump
        # (start, end, program token, pitch token) sorted by (program, pitch): the note is sounding in dump k iff
        # start < k <= end
        self._tie_start, self._tie_end, self._tie_program, self._tie_pitch = tie_intervals
        self._tie_token = codec.encode_event(event_codec.Event("tie", 0))

    @property
    def num_frames(self) -> int:
        return len(self.event_start_indices)

    def _dump(self, position: int) -> np.ndarray:
        active = (self._tie_start < position) & (self._tie_end >= position)
        n = int(np.count_nonzero(active))
        out = np.empty(2 * n + 1, dtype=np.int32)
        out[0:-1:2] = self._tie_program[active]
        out[1:-1:2] = self._tie_pitch[active]
        out[-1] = self._tie_token
        return out

    def tie_section(self, frame: int) -> np.ndarray:
        """The notes sounding when frame `frame`'s tokens begin, as `program, pitch, ..., tie` (unencoded)."""
        return self._dump(int(self._frame_state_positions[frame]))

    @functools.cached_property
    def _state_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """One dump per distinct state position, all at once: every (interval, position) pair it covers, ordered by
        position then (program, pitch) (a stable sort keeps the intervals' order)."""
        positions, inverse = np.unique(self._frame_state_positions, return_inverse=True)
        lo = np.searchsorted(positions, self._tie_start, side="right")  # first position > start
        hi = np.searchsorted(positions, self._tie_end, side="right")  # first position > end
        count = np.maximum(hi - lo, 0)
        interval = np.repeat(np.arange(len(count)), count)
        query = np.repeat(lo, count) + (np.arange(interval.size) - np.repeat(np.cumsum(count) - count, count))
        order = np.argsort(query, kind="stable")
        interval, query = interval[order], query[order]
        per_query = np.bincount(query, minlength=len(positions))
        offsets = np.cumsum(2 * per_query + 1) - (2 * per_query + 1)
        rank = np.arange(query.size) - (np.cumsum(per_query) - per_query)[query]
        state_events = np.empty(int(np.sum(2 * per_query + 1)), dtype=np.int32)
        state_events[offsets[query] + 2 * rank] = self._tie_program[interval]
        state_events[offsets[query] + 2 * rank + 1] = self._tie_pitch[interval]
        state_events[offsets + 2 * per_query] = self._tie_token
        return state_events, offsets[inverse.reshape(-1)].astype(np.int32)

    @property
    def state_events(self) -> np.ndarray:
        return self._state_arrays[0]

    @property
    def state_event_indices(self) -> np.ndarray:
        return self._state_arrays[1]


def _note_arrays(ns):
    """(start, end, pitch, velocity, program, is_drum) columns; one pass over the protobuf notes."""
    rows = [(n.start_time, n.end_time, n.pitch, n.velocity, n.program, n.is_drum) for n in ns.notes]
    table = np.array(rows, dtype=np.float64).reshape(-1, 6)
    ints = table[:, 2:5].astype(np.int64)
    return table[:, 0], table[:, 1], ints[:, 0], ints[:, 1], ints[:, 2], table[:, 5] != 0


def tokenize_note_sequence(ns, frame_times, codec: event_codec.Codec,
                           spec: run_length_encoding.EventEncodingSpec = NoteEncodingWithTiesSpec) -> TrackTokens:
    """Tokenizes a whole NoteSequence against audio frame times (MT3's track tokenization, vectorised).

    `spec` picks onsets-only (`NoteOnsetEncodingSpec`) or onsets+offsets with programs (the other two; MT3 encodes
    every dataset with programs and drops them later for 'flat'). Sustain must already be applied. Departures from
    MT3, both for inputs it cannot encode: non-drum notes with end <= start are skipped (they would leave a note
    sounding forever in the tie state), and velocities are clipped to 1..127 (velocity 0 would encode a note-off).
    """
    if spec.encode_event_fn is not note_event_data_to_events:
        raise ValueError("tokenize_note_sequence only handles the note encoding specs; use "
                         "run_length_encoding.encode_and_index_events for custom specs")
    onsets_only = spec.decode_event_fn is decode_note_onset_event
    frame_times = np.asarray(frame_times, dtype=np.float64)
    sps = codec.steps_per_second
    start, end, pitch, velocity, program, is_drum = _note_arrays(ns)
    velocity = np.clip(velocity, 1, vocabularies.MAX_MIDI_VELOCITY)
    for name, values in (("pitch", pitch), ("program", program)):
        if values.size and (values.min() < 0 or values.max() > 127):
            raise ValueError(f"{name} outside the MIDI range 0..127: {values.min()}..{values.max()}")
    pitch_lo = codec.event_type_range("pitch")[0]
    if onsets_only:
        ev_time = start
        ev_len = np.ones(len(start), np.int64)
    else:
        keep = is_drum | (end > start)
        start, end, pitch, velocity, program, is_drum = (a[keep] for a in (start, end, pitch, velocity, program,
                                                                            is_drum))
        order = np.lexsort((pitch, program, is_drum))  # stable: ties keep NoteSequence order, as Python's sorted
        start, end, pitch, velocity, program, is_drum = (a[order] for a in (start, end, pitch, velocity, program,
                                                                            is_drum))
        nd = np.flatnonzero(~is_drum)
        note = np.concatenate([nd, np.arange(len(start))])  # offsets of non-drums, then every onset
        is_onset = np.concatenate([np.zeros(len(nd), bool), np.ones(len(start), bool)])
        ev_time = np.concatenate([end[nd], start])
        ev_len = np.where(is_drum[note], 2, 3)

    order = np.argsort(ev_time, kind="stable")
    steps = np.maximum(np.rint(ev_time[order] * sps).astype(np.int64), 0)
    ev_len = ev_len[order]
    n_ev = len(order)
    cum_len = np.concatenate([[0], np.cumsum(ev_len)])
    last_step = int(steps[-1]) if n_ev else 0
    final_step = max(last_step, int(_first_step_after(frame_times[-1:], sps)[0])) if len(frame_times) else last_step
    events = np.full(int(cum_len[-1]) + final_step, codec.encode_event(event_codec.Event("shift", 1)), np.int32)
    pos = cum_len[:-1] + steps  # first token of each note event

    if onsets_only:
        events[pos] = pitch_lo + pitch[order]
    else:
        note, is_onset = note[order], is_onset[order]
        vb = vocabularies.num_velocity_bins_from_codec(codec)
        vel_lo = codec.event_type_range("velocity")[0]
        bins = np.where(is_onset, (vb * velocity[note] + vocabularies.MAX_MIDI_VELOCITY - 1)
                        // vocabularies.MAX_MIDI_VELOCITY, 0)
        drum = is_drum[note]
        d, nd_ev = np.flatnonzero(drum), np.flatnonzero(~drum)
        events[pos[d]] = vel_lo + bins[d]
        events[pos[d] + 1] = codec.event_type_range("drum")[0] + pitch[note[d]]
        program_tokens = codec.event_type_range("program")[0] + program[note]
        events[pos[nd_ev]] = program_tokens[nd_ev]
        events[pos[nd_ev] + 1] = vel_lo + bins[nd_ev]
        events[pos[nd_ev] + 2] = pitch_lo + pitch[note[nd_ev]]

    # frame f's tokens start at the first token of step m_f = floor(t_f * sps) (strict test, see run_length_encoding)
    m = _first_step_after(frame_times, sps) - 1
    state_pos = np.searchsorted(steps, m, side="left")  # note events before step m_f
    start_idx = (cum_len[state_pos] + m).astype(np.int32)
    end_idx = np.concatenate([start_idx[1:], [len(events)]]).astype(np.int32)
    if onsets_only:  # the onsets-only encoder never touches the tie state
        zeros = np.zeros(n_ev, np.int64)
        ties = _tie_intervals(zeros, zeros, zeros.astype(bool), zeros - 1, codec)
    else:
        ev_program, ev_pitch = program[note], pitch[note]
        ties = _tie_intervals(ev_program, ev_pitch, is_onset & ~drum, np.where(drum, -1, ev_program * 128 + ev_pitch),
                              codec)
    return TrackTokens(events, start_idx, end_idx, state_pos, ties, codec)


def _tie_intervals(program, pitch, sounding, key, codec):
    """(start, end, program token, pitch token) of every span where a (pitch, program) key is sounding, in note-event
    positions, sorted by (program, pitch): an onset at position a keeps its key sounding in the dumps a+1..b, where b
    is the key's next event (offset or re-onset). `key` is -1 for events that never enter the state (drums)."""
    n_ev = len(key)
    position = np.arange(n_ev)
    by_key = np.lexsort((position, key))
    same_next = key[by_key][1:] == key[by_key][:-1]
    next_pos = np.full(n_ev, n_ev)
    next_pos[by_key[:-1][same_next]] = by_key[1:][same_next]
    sel = np.flatnonzero(sounding)
    sel = sel[np.lexsort((sel, pitch[sel], program[sel]))]
    return (position[sel], next_pos[sel], (codec.event_type_range("program")[0] + program[sel]).astype(np.int32),
            (codec.event_type_range("pitch")[0] + pitch[sel]).astype(np.int32))


def segment_targets(track_tokens: TrackTokens, start_frame: int, end_frame: int, codec: event_codec.Codec,
                    include_ties: bool, program_granularity: str = "full") -> np.ndarray:
    """Targets of frames [start_frame, end_frame) as int32 codec indices, MT3's training order: slice the track's
    events (with ties: prepend the tie section), map program granularity, run-length encode shifts, then remove
    redundant velocity/program tokens. No EOS (see `vocabularies.encode_tokens`)."""
    n = track_tokens.num_frames
    if not 0 <= start_frame < end_frame:
        raise ValueError(f"need 0 <= start_frame < end_frame, got [{start_frame}, {end_frame})")
    if start_frame >= n:
        raise ValueError(f"start_frame {start_frame} is past the track's {n} frames")
    end_frame = min(end_frame, n)
    body = track_tokens.events[track_tokens.event_start_indices[start_frame]:
                               track_tokens.event_end_indices[end_frame - 1]]
    tokens = np.concatenate([track_tokens.tie_section(start_frame), body]) if include_ties else body
    if program_granularity != "full":
        tokens = map_midi_programs(tokens, codec, program_granularity)
    tokens = run_length_encoding.run_length_encode_shifts(tokens, codec)
    return run_length_encoding.remove_redundant_state_changes(tokens, codec)
