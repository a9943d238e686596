"""Whole-track tokenization, vectorised: a NoteSequence -> MT3's event stream indexed by audio frame, and the targets
of any frame range (tie section, shift run-length encoding, redundant-state removal).

This is the training/inference hot path (`mt3 tokens`, the seqio preprocessors, the benchmarks). It produces exactly
what MT3's event-by-event encoder (`run_length_encoding.encode_and_index_events` with the note functions of
`mt3.note_sequences`) produces; the tests check that token for token. Split out of `note_sequences`; data flows one
way: this module imports `note_sequences` (sample rate, hop, encoding specs), never the reverse.

One deliberate difference from MT3, switchable: MT3's encoder never advances its state index after the last note event,
so a segment that starts after a track's final events gets a tie section listing the notes sounding *before* those
events (`program pitch ... tie`). We give such a segment the true state (usually a bare `tie`); `mt3_compat=True`
reproduces MT3's targets exactly (docs/architecture.md, "MT3 parity").
"""

from __future__ import annotations

import functools

import numpy as np

from mt3 import event_codec, note_sequences, run_length_encoding, vocabularies


def audio_frame_times(num_samples: int, sample_rate: int = note_sequences.SAMPLE_RATE,
                      hop_width: int = note_sequences.HOP_WIDTH) -> np.ndarray:
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
                           spec: run_length_encoding.EventEncodingSpec = note_sequences.NoteEncodingWithTiesSpec,
                           *, mt3_compat: bool = False) -> TrackTokens:
    """Tokenizes a whole NoteSequence against audio frame times (MT3's track tokenization, vectorised).

    `spec` picks onsets-only (`NoteOnsetEncodingSpec`) or onsets+offsets with programs (the other two; MT3 encodes
    every dataset with programs and drops them later for 'flat'). Sustain must already be applied. Overlapping
    same-pitch notes are encoded as they are (trim them first where MT3 does: `trim_overlapping_notes`). Departures
    from MT3, both for inputs it cannot encode: non-drum notes with end <= start are skipped (they would leave a note
    sounding forever in the tie state), and velocities are clipped to 1..127 (velocity 0 would encode a note-off).
    `mt3_compat` reproduces MT3's tie section for frames after the last note event (module docstring).
    """
    if spec.encode_event_fn is not note_sequences.note_event_data_to_events:
        raise ValueError("tokenize_note_sequence only handles the note encoding specs; use "
                         "run_length_encoding.encode_and_index_events for custom specs")
    onsets_only = spec.decode_event_fn is note_sequences.decode_note_onset_event
    frame_times = np.asarray(frame_times, dtype=np.float64)
    sps = codec.steps_per_second
    start, end, pitch, velocity, program, is_drum = _note_arrays(ns)
    velocity = np.clip(velocity, 1, vocabularies.MAX_MIDI_VELOCITY)
    for name, values in (("pitch", pitch), ("program", program)):
        if values.size and (values.min() < 0 or values.max() > 127):
            raise ValueError(f"{name} outside the MIDI range 0..127: {values.min()}..{values.max()}")
    pitch_lo = codec.event_type_range("pitch")[0]
    if onsets_only:
        # MT3 sorts the notes by pitch before the stable time sort: simultaneous onsets come out in pitch order
        by_pitch = np.argsort(pitch, kind="stable")
        start, pitch = start[by_pitch], pitch[by_pitch]
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
    tie_pos = state_pos
    if mt3_compat and n_ev:
        # MT3's state index stops at the dump taken before the final step's events: frames after them reuse it
        tie_pos = np.where(state_pos == n_ev, np.searchsorted(steps, last_step, side="left"), state_pos)
    return TrackTokens(events, start_idx, end_idx, tie_pos, ties, codec)


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
        tokens = note_sequences.map_midi_programs(tokens, codec, program_granularity)
    tokens = run_length_encoding.run_length_encode_shifts(tokens, codec)
    return run_length_encoding.remove_redundant_state_changes(tokens, codec)
