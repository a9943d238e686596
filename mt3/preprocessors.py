"""Transcription preprocessing: converted track records -> model examples (frames + target tokens).

The logic is plain numpy (`tokenize_track`, `training_examples`, `eval_segments`) so it can be tested and reused
without TensorFlow; the `*_fn` seqio preprocessors at the bottom only wrap it in `tf.numpy_function`, as seqio tasks
need `tf.data.Dataset -> tf.data.Dataset` functions. The steps follow MT3 (REFERENCE §4.1/4.2):

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

from mt3 import event_codec, note_sequences, run_length_encoding, spectrograms, track_tokens, vocabularies

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
    mt3_compat: bool = False  # MT3's tie section after a track's last note event (mt3.track_tokens docstring)

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


# ----------------------------------------------------------------------------------------------------------------
# seqio wrappers (TensorFlow lives only below this line, imported lazily)
# ----------------------------------------------------------------------------------------------------------------


def _parse(record_bytes_audio, record_bytes_sequence):
    import note_seq

    audio = np.frombuffer(record_bytes_audio, dtype="<f4").astype(np.float32)
    return audio, note_seq.NoteSequence.FromString(record_bytes_sequence)


def _stack_padded(arrays: list[np.ndarray], dtype, trailing: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(a) for a in arrays], np.int32)
    out = np.zeros((len(arrays), int(lengths.max(initial=0)), *trailing), dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out, lengths


def tokenize_transcription_example(dataset, config: TokenizeConfig, *, sequence_length, split_kind: str = "train",
                                   mix_config=None, augment_config=None, frame_targets: bool | None = None):
    """seqio preprocessor: parsed track records -> examples {'inputs': [L', hop] f32, 'targets': [T'] i32, ...}.

    `split_kind` is "train" (random crops per chunk, seeded per element by seqio) or "eval" (consecutive segments;
    adds 'id', 'start_time' and, on segment 0, the full-track reference 'sequence'). Training examples are audio mixes
    of several tracks' crops when `mix_config` (a `mixing.MixConfig`; None = the gin-bound
    `mixing.training_mix_config()`, off by default) says so. Their audio is augmented (level, colour, room, noise)
    when `augment_config` (an `augmentation.AugmentConfig`; None = the gin-bound one, off by default) says so.
    Training examples also carry 'aux_onsets'/'aux_frames' piano rolls [L', 128] (`mt3.frame_targets`, for the
    encoder's auxiliary heads) when `frame_targets` is True (None = gin's AUX_FRAME_LOSS_WEIGHT > 0; off by default).
    """
    import tensorflow as tf

    hop = config.spectrogram_config.hop_width
    input_length = int(sequence_length["inputs"])

    if split_kind == "train" and augment_config is None:
        from mt3 import augmentation

        augment_config = augmentation.training_augment_config()
    rolls_config = config if split_kind == "train" and _frame_targets_on(frame_targets) else None

    def _train_np(audio_bytes, seq_bytes, element_seed):
        audio, ns = _parse(audio_bytes, seq_bytes)
        rng = np.random.default_rng(_seed_words(element_seed))
        examples = list(training_examples(tokenize_track(audio, ns, config), config, input_length, rng))
        examples = augmented_examples(examples, augment_config, element_seed)
        inputs, in_len = _stack_padded([e[0] for e in examples], np.float32, (hop,))
        targets, tgt_len = _stack_padded([e[1] for e in examples], np.int32)
        return inputs, in_len, targets, tgt_len

    def _eval_np(audio_bytes, seq_bytes):
        audio, ns = _parse(audio_bytes, seq_bytes)
        segments = list(eval_segments(tokenize_track(audio, ns, config), config, input_length))
        inputs, in_len = _stack_padded([s["inputs"] for s in segments], np.float32, (hop,))
        targets, tgt_len = _stack_padded([s["targets"] for s in segments], np.int32)
        start_times = np.array([s["input_times"][0] for s in segments], np.float64)
        return inputs, in_len, targets, tgt_len, start_times

    if split_kind == "train" and mix_config is None:
        from mt3 import mixing

        mix_config = mixing.training_mix_config()
    if split_kind == "train" and mix_config.enabled:
        return _mixed_training_dataset(dataset, config, mix_config, input_length, augment_config, rolls_config)
    if split_kind == "train":
        # seqio hands each element its own stateless seed, different every epoch (the repeat happens before this
        # post-cache step), yet reproducible for a given task seed: crops vary across epochs, resumes are exact.
        _map = _seeded_examples_map(_train_np, hop, lambda ex: ex["id"], rolls_config)
        ds = _map(dataset)
    elif split_kind == "eval":
        def _map(ex):
            inputs, in_len, targets, tgt_len, start_times = tf.numpy_function(
                _eval_np, [ex["audio"], ex["sequence"]], [tf.float32, tf.int32, tf.int32, tf.int32, tf.float64],
                stateful=False)
            k = tf.shape(in_len)[0]
            sequence = tf.concat([[ex["sequence"]], tf.fill([k - 1], tf.constant(b""))], axis=0)
            return {
                "inputs": tf.ensure_shape(inputs, [None, None, hop]),
                "inputs_length": in_len,
                "targets": tf.ensure_shape(targets, [None, None]),
                "targets_length": tgt_len,
                "id": tf.fill([k], ex["id"]),
                "start_time": start_times,
                "sequence": sequence,
            }

        ds = dataset.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        raise ValueError(f"split_kind must be 'train' or 'eval', got {split_kind!r}")

    return ds.unbatch().map(_unpad_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _mixed_training_dataset(dataset, config: TokenizeConfig, mix_config, input_length: int, augment_config,
                            rolls_config=None):
    """Training examples mixed across tracks: records are shuffled (seeded, so resumes stay exact), read in groups of
    `records_per_group`, and every group yields one example per crop, some summed with other tracks' crops."""
    import tensorflow as tf

    from mt3 import mixing

    hop = config.spectrogram_config.hop_width

    def _group_np(audio_bytes, seq_bytes, element_seed):
        rng = np.random.default_rng(_seed_words(element_seed))
        tracks = [tokenize_track(*_parse(a, q), config) for a, q in zip(audio_bytes, seq_bytes, strict=True)]
        examples = list(mixing.mixed_training_examples(tracks, config, mix_config, input_length, rng))
        examples = augmented_examples(examples, augment_config, element_seed)
        inputs, in_len = _stack_padded([e[0] for e in examples], np.float32, (hop,))
        targets, tgt_len = _stack_padded([e[1] for e in examples], np.int32)
        return inputs, in_len, targets, tgt_len

    # a group's examples carry its first id
    _map = _seeded_examples_map(_group_np, hop, lambda ex: ex["id"][0], rolls_config)

    grouped = dataset.shuffle(4 * mix_config.records_per_group, seed=mix_config.seed).batch(
        mix_config.records_per_group)
    return _map(grouped).unbatch().map(_unpad_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _seed_words(element_seed) -> list[int]:
    return [int(s) & 0xFFFFFFFF for s in np.ravel(element_seed)]


def augmented_examples(examples: list[tuple[np.ndarray, np.ndarray]], augment_config,
                       element_seed) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) pairs with augmented inputs. Its own generator, derived from the element's seed, so the crops
    (drawn before) are the same with augmentation on or off, and each crop is augmented reproducibly."""
    if augment_config is None or not augment_config.enabled:
        return examples
    from mt3 import augmentation

    rng = np.random.default_rng([*_seed_words(element_seed), 0xA06])
    return [(augmentation.augment_frames(inputs, augment_config, rng), targets) for inputs, targets in examples]


def _seeded_examples_map(numpy_fn, hop: int, id_fn, rolls_config: TokenizeConfig | None = None):
    """A seqio map (one stateless seed per element) running `numpy_fn(audio, sequence, seed) -> (inputs, input
    lengths, targets, target lengths)` and returning the padded examples with their lengths and ids; with
    `rolls_config`, also the frame-target rolls decoded from each example's target ids (`mt3.frame_targets`)."""
    import seqio
    import tensorflow as tf

    from mt3 import frame_targets

    def _with_rolls(*args):
        inputs, in_len, targets, tgt_len = numpy_fn(*args)
        return (inputs, in_len, targets, tgt_len, *frame_targets.batch_rolls(
            targets, tgt_len, inputs.shape[1], rolls_config.codec, rolls_config.spectrogram_config.frames_per_second,
            include_ties=rolls_config.include_ties))

    dtypes = [tf.float32, tf.int32, tf.int32, tf.int32] + [tf.uint8] * (2 if rolls_config is not None else 0)

    @seqio.map_over_dataset(num_seeds=1)
    def _map(ex, seed):
        inputs, in_len, targets, tgt_len, *rolls = tf.numpy_function(
            numpy_fn if rolls_config is None else _with_rolls, [ex["audio"], ex["sequence"], seed], dtypes,
            stateful=False)
        out = {"inputs": tf.ensure_shape(inputs, [None, None, hop]), "inputs_length": in_len,
               "targets": tf.ensure_shape(targets, [None, None]), "targets_length": tgt_len,
               "id": tf.fill([tf.shape(in_len)[0]], id_fn(ex))}
        for key, roll in zip(frame_targets.FEATURES, rolls, strict=False):
            out[key] = tf.ensure_shape(roll, [None, None, frame_targets.NUM_PITCHES])
        return out

    return _map


def _frame_targets_on(frame_targets: bool | None) -> bool:
    if frame_targets is not None:
        return bool(frame_targets)
    from mt3 import frame_targets as frame_targets_lib

    return frame_targets_lib.training_enabled()


def _unpad_example(ex):
    """Cuts a padded example back to its lengths and drops the length features."""
    out = dict(ex)
    from mt3 import frame_targets

    for key in frame_targets.FEATURES:  # one row per input frame
        if key in out:
            out[key] = ex[key][: ex["inputs_length"]]
    out["inputs"] = ex["inputs"][: out.pop("inputs_length")]
    out["targets"] = ex["targets"][: out.pop("targets_length")]
    return out


def handle_too_long(dataset, *, sequence_length, skip: bool = False):
    """MT3 asserts targets fit; we either drop examples whose targets exceed the length (skip=True) or leave them to
    the feature converter, which truncates (and `mt3 data-stats` reports how often that happens)."""
    if not skip:
        return dataset
    limit = int(sequence_length["targets"])
    return dataset.filter(lambda ex: _len_le(ex["targets"], limit))


def _len_le(t, limit):
    import tensorflow as tf

    return tf.shape(t)[0] <= limit
