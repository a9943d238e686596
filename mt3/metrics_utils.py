"""Segment predictions -> one NoteSequence per track (stitching with ties), and the symbolic round trip.

Segments are decoded in time order with one decoding state, so a note begun in one segment and declared in the next
segment's tie section stays one note; each segment may only place events before the next segment's start. Decoding
never raises: whatever a model emits, impossible events are counted (`est_invalid_events`) and events past the
segment end are counted (`est_dropped_events`). Metric computation itself lives in `mt3.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mt3 import event_codec, note_sequences, run_length_encoding, vocabularies
from mt3.data import track_tokens

# vocabulary preset -> how MT3 trains it: ties, program granularity, input length in frames (REFERENCE §0)
VOCAB_SETTINGS: dict[str, dict[str, Any]] = {
    "mt3": {"include_ties": True, "program_granularity": "full", "input_frames": 256},
    "ismir2021": {"include_ties": False, "program_granularity": "flat", "input_frames": 512},
}
FRAMES_PER_SECOND = note_sequences.SAMPLE_RATE / note_sequences.HOP_WIDTH  # 125


def segment_start_time(time: float, codec: event_codec.Codec) -> float:
    """A segment's decoding origin: its first frame time rounded down to the codec's grid (10 ms).

    Shift tokens count from this grid point (REFERENCE §3.3). A small tolerance absorbs float error, so a time already
    on the grid stays put (MT3's `t - t % 0.01` can move 2.04 down to 2.03).
    """
    sps = codec.steps_per_second
    return math.floor(float(time) * sps + 1e-6) / sps


def decode_and_combine_predictions(predictions: Sequence[dict], init_state_fn: Callable[[], Any],
                                   begin_segment_fn: Callable[[Any], None],
                                   decode_tokens_fn: Callable[[Any, Any, float, float | None], tuple[int, int]],
                                   flush_state_fn: Callable[[Any], Any]) -> tuple[Any, int, int]:
    """Decodes segments sorted by start_time into one state; returns (flushed result, invalid, dropped)."""
    ordered = sorted(predictions, key=lambda pred: pred["start_time"])
    state = init_state_fn()
    total_invalid = total_dropped = 0
    for i, pred in enumerate(ordered):
        begin_segment_fn(state)
        # a token may belong to several frames' worth of time: never decode past the next segment's start
        max_time = ordered[i + 1]["start_time"] if i + 1 < len(ordered) else None
        invalid, dropped = decode_tokens_fn(state, pred["est_tokens"], pred["start_time"], max_time)
        total_invalid += invalid
        total_dropped += dropped
    return flush_state_fn(state), total_invalid, total_dropped


def event_predictions_to_ns(predictions: Sequence[dict], codec: event_codec.Codec,
                            encoding_spec: run_length_encoding.EventEncodingSpec) -> dict[str, Any]:
    """[{"est_tokens": codec indices (trimmed at EOS), "start_time": s}, ...] -> {"est_ns", "est_invalid_events",
    "est_dropped_events"} (+ "raw_inputs" and "start_times" when every prediction carries "raw_inputs").

    Start times are snapped down to the 10 ms grid here (`segment_start_time`), so raw frame times and MT3's already
    rounded times decode identically. Never raises on any token content.
    """
    snapped = [{**pred, "start_time": segment_start_time(pred["start_time"], codec)} for pred in predictions]

    def decode_tokens_fn(state, tokens, start_time, max_time):
        tokens = np.asarray(tokens).reshape(-1) if not isinstance(tokens, list) else tokens
        return run_length_encoding.decode_events(state, tokens, start_time, max_time, codec,
                                                 encoding_spec.decode_event_fn)

    ns, invalid, dropped = decode_and_combine_predictions(
        snapped, init_state_fn=encoding_spec.init_decoding_state_fn,
        begin_segment_fn=encoding_spec.begin_decoding_segment_fn, decode_tokens_fn=decode_tokens_fn,
        flush_state_fn=encoding_spec.flush_decoding_state_fn)
    result = {"est_ns": ns, "est_invalid_events": invalid, "est_dropped_events": dropped}
    ordered = sorted(predictions, key=lambda pred: pred["start_time"])
    if ordered and all("raw_inputs" in pred for pred in ordered):
        result["raw_inputs"] = np.concatenate([pred["raw_inputs"] for pred in ordered], axis=0)
        result["start_times"] = [pred["start_time"] for pred in ordered]
    return result


def note_sequence_round_trip(ns, *, vocab: str = "mt3", segment_seconds: float | None = None,
                             margin_seconds: float = 0.1) -> dict[str, Any]:
    """Tokenizes a NoteSequence segment by segment as training would, decodes and stitches it back (`mt3 tokens`).

    Sustain is applied and same-pitch overlaps are trimmed first (training targets cannot hold them). The "audio" is
    as long as the notes plus `margin_seconds`, framed by MT3's rule; segments are consecutive runs of
    round(segment_seconds * 125) frames (default: the vocabulary's input length). Returns the decoded "est_ns", the
    reference it should equal ("ref_ns", sustain applied), and counts: tokens (without EOS), segments,
    max_segment_tokens, invalid_events, dropped_events, notes_in, notes_out.
    """
    from note_seq import sequences_lib

    settings = VOCAB_SETTINGS.get(vocab)
    if settings is None:
        raise ValueError(f"unknown vocabulary {vocab!r}; choose one of {sorted(VOCAB_SETTINGS)}")
    codec = vocabularies.build_codec(vocabularies.vocab_config_from_name(vocab))
    segment_frames = settings["input_frames"] if segment_seconds is None else round(segment_seconds * FRAMES_PER_SECOND)
    if segment_frames < 1:
        raise ValueError(f"segment_seconds must be at least one frame (8 ms), got {segment_seconds}")
    spec = note_sequences.NoteEncodingWithTiesSpec if settings["include_ties"] else note_sequences.NoteEncodingSpec

    ref_ns = sequences_lib.apply_sustain_control_changes(ns)
    del ref_ns.control_changes[:]
    labels = note_sequences.trim_overlapping_notes(ref_ns)
    duration = max((n.end_time for n in labels.notes), default=0.0) + margin_seconds
    frame_times = track_tokens.audio_frame_times(math.ceil(duration * note_sequences.SAMPLE_RATE))
    track = track_tokens.tokenize_note_sequence(labels, frame_times, codec, spec)

    predictions, lengths = [], []
    for start in range(0, len(frame_times), segment_frames):
        targets = track_tokens.segment_targets(track, start, start + segment_frames, codec,
                                                 settings["include_ties"], settings["program_granularity"])
        predictions.append({"est_tokens": targets, "start_time": float(frame_times[start])})
        lengths.append(len(targets))
    decoded = event_predictions_to_ns(predictions, codec, spec)
    return {
        "est_ns": decoded["est_ns"], "ref_ns": ref_ns, "tokens": int(sum(lengths)), "segments": len(predictions),
        "max_segment_tokens": int(max(lengths, default=0)), "invalid_events": int(decoded["est_invalid_events"]),
        "dropped_events": int(decoded["est_dropped_events"]), "notes_in": len(ns.notes),
        "notes_out": len(decoded["est_ns"].notes),
    }
