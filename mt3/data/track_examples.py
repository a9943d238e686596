"""Track -> model examples, in plain numpy: framing, tokenizing against the frame times, crops and segments.

Below the seqio layer on purpose: `preprocessors` (seqio/tf.data wrappers), `mixing` (audio mixes of crops) and
`input_pipeline` (the index-based sampler) all build on these functions, and none of them is imported here, so the
data flow reads one way. Testable and reusable without TensorFlow. The steps follow MT3 (REFERENCE §4.1/4.2):

  train: tokenize the whole track -> split into 2000-frame chunks (MT3's cache chunks) -> one random crop of the input
         length per chunk (`uniform_random_start`: crops at chunk edges may be shorter) -> targets of the crop with the
         tie section, program granularity, shift RLE and redundant-state removal -> ids + EOS.
  eval:  tokenize the whole track -> consecutive non-overlapping segments of the input length (last one shorter);
         segment 0 carries the full-track reference NoteSequence for metrics.

Inputs stay raw 128-sample frames here; the model computes the log-mel (`spectrograms.compute_spectrogram`) as its
first stage, so training and inference share one frontend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from mt3 import event_codec, note_sequences, run_length_encoding, spectrograms, vocabularies
from mt3.data import track_tokens

MAX_NUM_CACHED_FRAMES = 2000  # MT3's cache chunk (16 s); a training crop never crosses one


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    """Everything that decides how a track becomes examples. Frozen, so it can key caches and be logged."""

    vocab_config: vocabularies.VocabularyConfig = vocabularies.MT3_VOCAB_CONFIG
    spectrogram_config: spectrograms.SpectrogramConfig = spectrograms.SpectrogramConfig()
    onsets_only: bool = False
    include_ties: bool = True
    program_granularity: str = "full"  # "flat" | "midi_class" | "full"
    trim_overlapping_notes: bool = True  # MT3 trims same-pitch overlaps for Slakh/Cerberus4 (DatasetConfig flag)
    mt3_compat: bool = False  # MT3's tie section after a track's last note event (mt3.data.track_tokens docstring)

    def __post_init__(self):
        if self.program_granularity not in ("flat", "midi_class", "full"):
            raise ValueError(f"program_granularity must be flat, midi_class or full, got {self.program_granularity!r}")
        if self.onsets_only and self.include_ties:
            raise ValueError("onsets-only encoding has no ties (MT3 registers no such task)")

    @property
    def encoding_spec(self):
        if self.onsets_only:
            return note_sequences.NoteOnsetEncodingSpec
        return note_sequences.NoteEncodingWithTiesSpec if self.include_ties else note_sequences.NoteEncodingSpec

    @property
    def codec(self) -> event_codec.Codec:
        return _codec(self.vocab_config)


_CODECS: dict = {}


def _codec(vocab_config) -> event_codec.Codec:
    if vocab_config not in _CODECS:
        _CODECS[vocab_config] = vocabularies.build_codec(vocab_config)
    return _CODECS[vocab_config]


@dataclasses.dataclass
class Track:
    """One tokenized track: its audio frames and the whole-track event tokens."""

    frames: np.ndarray  # [n, hop] float32
    frame_times: np.ndarray  # [n] float64 seconds
    tokens: object  # track_tokens.TrackTokens
    sequence: object  # the (reference) NoteSequence as stored in the record


def tokenize_track(audio: np.ndarray, ns, config: TokenizeConfig) -> Track:
    """Frames the audio and tokenizes the NoteSequence against those frame times (MT3's tokenize step)."""
    frames, frame_times = spectrograms.split_audio(np.asarray(audio, np.float32), config.spectrogram_config)
    labels = ns
    # Onsets-only targets keep a note that starts with another of the same pitch and program (its onset is real and
    # the encoding holds both); MT3 trims before encoding regardless, which mt3_compat reproduces.
    if config.trim_overlapping_notes and (not config.onsets_only or config.mt3_compat):
        labels = note_sequences.trim_overlapping_notes(ns)
    tokens = track_tokens.tokenize_note_sequence(labels, frame_times, config.codec, config.encoding_spec,
                                                   mt3_compat=config.mt3_compat)
    return Track(frames=frames, frame_times=frame_times, tokens=tokens, sequence=ns)


def segment_ids(track: Track, start: int, end: int, config: TokenizeConfig) -> np.ndarray:
    """Vocabulary ids (with EOS) of the targets for frames [start, end)."""
    codec = config.codec
    targets = track_tokens.segment_targets(track.tokens, start, end, codec, config.include_ties)
    if config.program_granularity != "full":
        targets = note_sequences.map_midi_programs(targets, codec, config.program_granularity)
        targets = run_length_encoding.remove_redundant_state_changes(targets, codec)
    ids = vocabularies.encode_tokens(np.asarray(targets, np.int32))
    return np.concatenate([ids, [vocabularies.EOS_ID]]).astype(np.int32)


def random_crop_bounds(num_frames: int, length: int, rng: np.random.Generator) -> tuple[int, int]:
    """MT3's `select_random_chunk(uniform_random_start=True)`: start ~ U[-(L-1), n), then clip to [0, n]."""
    start = int(rng.integers(-(length - 1), max(num_frames, 1)))
    return max(start, 0), min(start + length, num_frames)


def training_examples(track: Track, config: TokenizeConfig, input_length: int,
                      rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (inputs [<=L, hop], target ids) — one random crop per 2000-frame chunk of the track."""
    n = len(track.frames)
    for chunk_start in range(0, n, MAX_NUM_CACHED_FRAMES):
        chunk_len = min(MAX_NUM_CACHED_FRAMES, n - chunk_start)
        start, end = random_crop_bounds(chunk_len, input_length, rng)
        start, end = chunk_start + start, chunk_start + end
        if end <= start:
            continue
        yield track.frames[start:end], segment_ids(track, start, end, config)


def eval_segments(track: Track, config: TokenizeConfig, input_length: int) -> Iterator[dict]:
    """Yields consecutive non-overlapping segments with their targets and start times (MT3's eval/infer split)."""
    n = len(track.frames)
    for index, start in enumerate(range(0, n, input_length)):
        end = min(start + input_length, n)
        yield {
            "inputs": track.frames[start:end],
            "targets": segment_ids(track, start, end, config),
            "input_times": track.frame_times[start:end],
            "segment_index": index,
        }
