"""Vocabulary configuration, the MT3 codec, velocity bins, program granularities and codec-index <-> id mapping.

Two layers of integers exist and must not be confused:
- codec indices (`mt3.event_codec.Codec`): 0..num_classes-1, shift first;
- vocabulary ids (what the model reads and writes): PAD=0, EOS=1, UNK=2, codec index i -> id i+3, then 100 unused
  extra ids (T5's DEFAULT_EXTRA_IDS); the embedding has `num_embeddings` rows (vocab size rounded up to 128).
The sizes match MT3's checkpoints (REFERENCE §2): MT3 1388 classes / 1491 ids / 1536 rows, ismir2021 1514/1617/1664.

`GenericTokenVocabulary` is a `seqio.Vocabulary`, but this module must import on GPU hosts without TensorFlow, so the
class is built on first attribute access (PEP 562 `__getattr__`); everything else here is numpy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from mt3 import event_codec

DEFAULT_STEPS_PER_SECOND = 100
DEFAULT_MAX_SHIFT_SECONDS = 10
DEFAULT_NUM_VELOCITY_BINS = 127

MIN_MIDI_PITCH, MAX_MIDI_PITCH = 0, 127
MIN_MIDI_PROGRAM, MAX_MIDI_PROGRAM = 0, 127
MAX_MIDI_VELOCITY = 127

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
NUM_SPECIAL_TOKENS = 3
DEFAULT_EXTRA_IDS = 100  # t5.data.DEFAULT_EXTRA_IDS
EMBEDDING_ROW_MULTIPLE = 128

DECODED_EOS_ID = -1
DECODED_INVALID_ID = -2


@dataclasses.dataclass(frozen=True)
class VocabularyConfig:
    """The knobs that change the codec. Frozen (hashable) so it can key caches and gin can bind it."""

    steps_per_second: int = DEFAULT_STEPS_PER_SECOND
    max_shift_seconds: int = DEFAULT_MAX_SHIFT_SECONDS
    num_velocity_bins: int = DEFAULT_NUM_VELOCITY_BINS

    def __post_init__(self):
        if self.steps_per_second <= 0 or self.max_shift_seconds <= 0:
            raise ValueError(f"steps_per_second and max_shift_seconds must be positive, got {self}")
        if not 1 <= self.num_velocity_bins <= MAX_MIDI_VELOCITY:
            raise ValueError(f"num_velocity_bins must be in 1..127, got {self.num_velocity_bins}")

    @property
    def abbrev(self) -> str:
        """Task-name suffix for non-default settings, as MT3 (`vb1` for the MT3 vocabulary, '' for the default)."""
        s = ""
        if self.steps_per_second != DEFAULT_STEPS_PER_SECOND:
            s += f"ss{self.steps_per_second}"
        if self.max_shift_seconds != DEFAULT_MAX_SHIFT_SECONDS:
            s += f"ms{self.max_shift_seconds}"
        if self.num_velocity_bins != DEFAULT_NUM_VELOCITY_BINS:
            s += f"vb{self.num_velocity_bins}"
        return s

    abbrev_str = abbrev  # MT3's name for the same property


MT3_VOCAB_CONFIG = VocabularyConfig(num_velocity_bins=1)
ISMIR2021_VOCAB_CONFIG = VocabularyConfig(num_velocity_bins=127)
PRESETS: dict[str, VocabularyConfig] = {"mt3": MT3_VOCAB_CONFIG, "ismir2021": ISMIR2021_VOCAB_CONFIG}


def vocab_config_from_name(name: str) -> VocabularyConfig:
    """'mt3' | 'ismir2021' -> its VocabularyConfig; ValueError naming the choices otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown vocabulary {name!r}; choose one of {sorted(PRESETS)}") from None


def build_codec(vocab_config: VocabularyConfig = VocabularyConfig()) -> event_codec.Codec:
    """MT3's codec: shift 0..sps*max_shift_seconds, pitch, velocity 0..bins, tie, program, drum (in this order)."""
    event_ranges = [
        event_codec.EventRange("pitch", MIN_MIDI_PITCH, MAX_MIDI_PITCH),
        # velocity bin 0 is reserved for note-off
        event_codec.EventRange("velocity", 0, vocab_config.num_velocity_bins),
        event_codec.EventRange("tie", 0, 0),
        event_codec.EventRange("program", MIN_MIDI_PROGRAM, MAX_MIDI_PROGRAM),
        event_codec.EventRange("drum", MIN_MIDI_PITCH, MAX_MIDI_PITCH),
    ]
    return event_codec.Codec(max_shift_steps=vocab_config.steps_per_second * vocab_config.max_shift_seconds,
                             steps_per_second=vocab_config.steps_per_second, event_ranges=event_ranges)


def num_velocity_bins_from_codec(codec: event_codec.Codec) -> int:
    lo, hi = codec.event_type_range("velocity")
    return hi - lo


def velocity_to_bin(velocity: int, num_velocity_bins: int) -> int:
    """MIDI velocity -> bin: 0 stays 0 (note-off); otherwise ceil(bins * v / 127), so every onset has bin >= 1."""
    if velocity == 0:
        return 0
    return math.ceil(num_velocity_bins * velocity / MAX_MIDI_VELOCITY)


def bin_to_velocity(velocity_bin: int, num_velocity_bins: int) -> int:
    """Bin -> MIDI velocity: int(127 * bin / bins); with one bin every onset decodes to velocity 127."""
    if velocity_bin == 0:
        return 0
    return int(MAX_MIDI_VELOCITY * velocity_bin / num_velocity_bins)


# ----------------------------------------------------------------------------------------------------------------
# program granularities (applied to training targets and to metrics)


def drop_programs(tokens: np.ndarray, codec: event_codec.Codec) -> np.ndarray:
    """Removes every program token ('flat': the model never sees instruments)."""
    tokens = np.asarray(tokens)
    lo, hi = codec.event_type_range("program")
    return tokens[(tokens < lo) | (tokens > hi)]


def programs_to_midi_classes(tokens: np.ndarray, codec: event_codec.Codec) -> np.ndarray:
    """Maps every program token to the first program of its GM family of 8 ('midi_class')."""
    tokens = np.asarray(tokens)
    lo, hi = codec.event_type_range("program")
    is_program = (tokens >= lo) & (tokens <= hi)
    return np.where(is_program, lo + 8 * ((tokens - lo) // 8), tokens).astype(tokens.dtype, copy=False)


@dataclasses.dataclass(frozen=True)
class ProgramGranularity:
    tokens_map_fn: Callable[[np.ndarray, event_codec.Codec], np.ndarray]  # on codec-index token arrays
    program_map_fn: Callable[[int], int]  # on a GM program (metrics)


PROGRAM_GRANULARITIES: dict[str, ProgramGranularity] = {
    "flat": ProgramGranularity(tokens_map_fn=drop_programs, program_map_fn=lambda program: 0),
    "midi_class": ProgramGranularity(tokens_map_fn=programs_to_midi_classes,
                                     program_map_fn=lambda program: 8 * (program // 8)),
    "full": ProgramGranularity(tokens_map_fn=lambda tokens, codec: np.asarray(tokens),
                               program_map_fn=lambda program: program),
}


# ----------------------------------------------------------------------------------------------------------------
# codec indices <-> vocabulary ids (numpy; the seqio class below does the same for seqio/TF)


def vocabulary_size(codec: event_codec.Codec, extra_ids: int = DEFAULT_EXTRA_IDS) -> int:
    """3 special ids + codec classes + extra ids (MT3: 1491; ismir2021: 1617)."""
    return NUM_SPECIAL_TOKENS + codec.num_classes + extra_ids


def num_embeddings(codec_or_vocab_size: event_codec.Codec | int, extra_ids: int = DEFAULT_EXTRA_IDS) -> int:
    """Embedding / logit rows: the vocabulary size rounded up to a multiple of 128 (MT3: 1536; ismir2021: 1664)."""
    size = codec_or_vocab_size
    if isinstance(size, event_codec.Codec):
        size = vocabulary_size(size, extra_ids)
    return EMBEDDING_ROW_MULTIPLE * math.ceil(int(size) / EMBEDDING_ROW_MULTIPLE)


def encode_tokens(codec_indices, num_classes: int | None = None) -> np.ndarray:
    """Codec indices -> vocabulary ids (+3), int32. ValueError on a negative index (or one >= num_classes if given)."""
    indices = np.asarray(codec_indices)
    if indices.size and (indices.min() < 0 or (num_classes is not None and indices.max() >= num_classes)):
        raise ValueError(f"codec indices must be in [0, {num_classes or 'num_classes'}), "
                         f"got range [{indices.min()}, {indices.max()}]")
    return (indices.astype(np.int64) + NUM_SPECIAL_TOKENS).astype(np.int32)


def decode_tokens(ids, num_classes: int) -> np.ndarray:
    """Vocabulary ids -> codec indices, int32: EOS -> -1, PAD, UNK and the extra ids -> -2 (invalid), else id - 3.

    Element-wise, like MT3's `_decode`; trim at the first EOS with `trim_eos`. `num_classes` (the codec's size) is
    required: without it an extra id would pass for a codec index past the end, which callers that count tokens by
    range (`mt3 data-stats`) would not notice.
    """
    if num_classes is None or int(num_classes) < 1:
        raise ValueError(f"decode_tokens needs the codec's num_classes, got {num_classes!r}")
    ids = np.asarray(ids).astype(np.int64)
    out = ids - NUM_SPECIAL_TOKENS
    invalid = (ids < NUM_SPECIAL_TOKENS) | (ids >= NUM_SPECIAL_TOKENS + int(num_classes))
    out = np.where(invalid, DECODED_INVALID_ID, out)
    out = np.where(ids == EOS_ID, DECODED_EOS_ID, out)
    return out.astype(np.int32)


def trim_eos(codec_indices) -> np.ndarray:
    """Everything before the first DECODED_EOS_ID (the whole array if there is none): MT3's postprocessing."""
    indices = np.asarray(codec_indices)
    eos = np.flatnonzero(indices == DECODED_EOS_ID)
    return indices[: eos[0]] if eos.size else indices


# ----------------------------------------------------------------------------------------------------------------
# seqio vocabulary, created lazily so importing this module never imports TensorFlow


def _make_generic_token_vocabulary_class():
    import seqio
    import tensorflow as tf

    class GenericTokenVocabulary(seqio.Vocabulary):
        """MT3's vocabulary of integer tokens: ids 0/1/2 = PAD/EOS/UNK, codec index i <-> id i + 3."""

        def __init__(self, regular_ids: int, extra_ids: int = 0):
            self._num_special_tokens = NUM_SPECIAL_TOKENS
            self._num_regular_tokens = int(regular_ids)
            super().__init__(extra_ids=extra_ids)

        @property
        def eos_id(self) -> int:
            return EOS_ID

        @property
        def unk_id(self) -> int:
            return UNK_ID

        @property
        def _base_vocab_size(self) -> int:
            return self._num_special_tokens + self._num_regular_tokens

        def _encode(self, token_ids):
            encoded = []
            for token_id in token_ids:
                if not 0 <= token_id < self._num_regular_tokens:
                    raise ValueError(f"token_id {token_id} does not fall within valid range of "
                                     f"[0, {self._num_regular_tokens})")
                encoded.append(int(token_id) + self._num_special_tokens)
            return encoded

        def _decode(self, ids):
            def decode_id(encoded_id: int) -> int:
                if encoded_id == self.eos_id:
                    return DECODED_EOS_ID
                if encoded_id < self._num_special_tokens or encoded_id >= self._base_vocab_size:
                    return DECODED_INVALID_ID
                return encoded_id - self._num_special_tokens

            return [decode_id(int(i)) for i in ids]

        def _encode_tf(self, token_ids):
            with tf.control_dependencies([
                tf.debugging.assert_less(token_ids, tf.cast(self._num_regular_tokens, token_ids.dtype)),
                tf.debugging.assert_greater_equal(token_ids, tf.cast(0, token_ids.dtype)),
            ]):
                return token_ids + self._num_special_tokens

        def _decode_tf(self, ids):
            # From the first EOS on everything is DECODED_EOS_ID; PAD/UNK/extra ids are invalid.
            after_eos = tf.cumsum(tf.cast(tf.equal(ids, self.eos_id), tf.int32), axis=-1) > 0
            valid = tf.logical_and(tf.greater_equal(ids, self._num_special_tokens), tf.less(ids, self._base_vocab_size))
            decoded = tf.where(valid, ids - self._num_special_tokens, tf.cast(DECODED_INVALID_ID, ids.dtype))
            return tf.where(after_eos, tf.cast(DECODED_EOS_ID, ids.dtype), decoded)

        def __eq__(self, other):
            return (isinstance(other, GenericTokenVocabulary) and self.extra_ids == other.extra_ids
                    and self._num_regular_tokens == other._num_regular_tokens)

        def __hash__(self):
            return hash((type(self).__name__, self.extra_ids, self._num_regular_tokens))

    GenericTokenVocabulary.__module__ = __name__
    GenericTokenVocabulary.__qualname__ = "GenericTokenVocabulary"
    return GenericTokenVocabulary


_LAZY_CLASSES: dict[str, type] = {}


def __getattr__(name: str):
    """PEP 562: `vocabularies.GenericTokenVocabulary` imports seqio/TensorFlow only when first asked for."""
    if name == "GenericTokenVocabulary":
        if name not in _LAZY_CLASSES:
            _LAZY_CLASSES[name] = _make_generic_token_vocabulary_class()
        return _LAZY_CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def vocabulary_from_codec(codec: event_codec.Codec, extra_ids: int = DEFAULT_EXTRA_IDS):
    """The seqio vocabulary for a codec (imports seqio/TensorFlow)."""
    return __getattr__("GenericTokenVocabulary")(codec.num_classes, extra_ids=extra_ids)
