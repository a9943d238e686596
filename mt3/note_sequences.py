"""NoteSequences <-> note events: MT3's encoding specs, the tie mechanism, and a vectorised track tokenizer.

Event semantics follow MT3 (REFERENCE §2-3): a non-drum onset is `program, velocity, pitch`, an offset the same with
velocity 0, a drum hit `velocity, drum`; at one time step offsets come before onsets, each ordered by (program,
pitch), drums last. With ties, each segment starts with the notes already sounding (`program, pitch` pairs sorted by
(program, pitch)) and a `tie` token, so segments decode independently yet stitch into whole notes.

`tokenize_note_sequence` + `segment_targets` are the fast numpy path used by `mt3 tokens`, the seqio preprocessors and
the benchmarks; they live in `mt3.data.track_tokens`, which builds on this module (never the other way round: import
them
from there). They produce exactly what MT3's event-by-event
encoder (`run_length_encoding.encode_and_index_events` with the functions below) produces; the tests check that token
for token. note_seq is imported lazily.
"""

from __future__ import annotations

import copy
import dataclasses
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
    """Onset times and pitch-only event data (onsets-only task), notes sorted by pitch as MT3 does, so that the later
    stable sort by time puts simultaneous onsets in pitch order rather than the file's order."""
    notes = sorted(ns.notes, key=lambda n: n.pitch)
    return [n.start_time for n in notes], [NoteEventData(pitch=n.pitch) for n in notes]


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
