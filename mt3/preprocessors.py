"""Transcription preprocessing for seqio: converted track records -> model examples (frames + target tokens).

The logic is plain numpy in `track_examples` (framing, tokenizing, crops, segments), `mixing` (audio mixes),
`augmentation` and `frame_targets`; the seqio preprocessors here only wrap it in `tf.numpy_function`, as seqio tasks
need `tf.data.Dataset -> tf.data.Dataset` functions. TensorFlow is imported lazily, inside the functions.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from mt3 import mixing
from mt3.data import augmentation
from mt3.data.track_examples import TokenizeConfig, eval_segments, tokenize_track, training_examples


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """What the training preprocessor adds to MT3's crops: audio mixes, augmentation, frame-target rolls. Off unless a
    caller sets them with `training_options` (the trainer passes its dataset config's, bound in gin/train.gin)."""

    mix_config: mixing.MixConfig | None = None
    augment_config: augmentation.AugmentConfig | None = None
    frame_targets: bool = False


_OPTIONS = TrainingOptions()


@contextlib.contextmanager
def training_options(*, mix_config=None, augment_config=None, frame_targets: bool = False):
    """Sets the TrainingOptions for the seqio datasets built inside the block. seqio runs a task's preprocessors when
    its dataset is built (and passes them no extra arguments), so the options are read then, as `data_dir_override`
    does for the data root; nothing outlives the block."""
    global _OPTIONS
    saved, _OPTIONS = _OPTIONS, TrainingOptions(mix_config, augment_config, bool(frame_targets))
    try:
        yield
    finally:
        _OPTIONS = saved


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
    of several tracks' crops when `mix_config` (a `mixing.MixConfig`) says so. Their audio is augmented (level,
    colour, room, noise) when `augment_config` (an `augmentation.AugmentConfig`) says so. Training examples also carry
    'aux_onsets'/'aux_frames' piano rolls [L', 128] (`mt3.data.frame_targets`, for the encoder's auxiliary heads) when
    `frame_targets` is True. Each None takes the `training_options` in force (all off by default).
    """
    import tensorflow as tf

    hop = config.spectrogram_config.hop_width
    input_length = int(sequence_length["inputs"])

    if split_kind == "train" and augment_config is None:
        augment_config = _OPTIONS.augment_config
    rolls_config = config if split_kind == "train" and _frame_targets_on(frame_targets) else None

    def _train_np(audio_bytes, seq_bytes, element_seed):
        audio, ns = _parse(audio_bytes, seq_bytes)
        rng = np.random.default_rng(_seed_words(element_seed))
        examples = list(training_examples(tokenize_track(audio, ns, config), config, input_length, rng))
        examples = augmentation.augment_examples(examples, augment_config, element_seed)
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
        mix_config = _OPTIONS.mix_config
    if split_kind == "train" and mix_config is not None and mix_config.enabled:
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

    hop = config.spectrogram_config.hop_width

    def _group_np(audio_bytes, seq_bytes, element_seed):
        rng = np.random.default_rng(_seed_words(element_seed))
        tracks = [tokenize_track(*_parse(a, q), config) for a, q in zip(audio_bytes, seq_bytes, strict=True)]
        examples = list(mixing.mixed_training_examples(tracks, config, mix_config, input_length, rng))
        examples = augmentation.augment_examples(examples, augment_config, element_seed)
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


def _seeded_examples_map(numpy_fn, hop: int, id_fn, rolls_config: TokenizeConfig | None = None):
    """A seqio map (one stateless seed per element) running `numpy_fn(audio, sequence, seed) -> (inputs, input
    lengths, targets, target lengths)` and returning the padded examples with their lengths and ids; with
    `rolls_config`, also the frame-target rolls decoded from each example's target ids (`mt3.data.frame_targets`)."""
    import seqio
    import tensorflow as tf

    from mt3.data import frame_targets

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
    return _OPTIONS.frame_targets if frame_targets is None else bool(frame_targets)


def _unpad_example(ex):
    """Cuts a padded example back to its lengths and drops the length features."""
    out = dict(ex)
    from mt3.data import frame_targets

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
