"""Tests for mt3.training.input_pipeline: the indexed sampler resumes exactly from a few integers, per host, on real
prepared
records (music21 Bach with synthesised audio, written by the converters' own ShardWriter); its features are the seqio
feature converter's; a checkpoint without a pipeline state resumes the seqio pipeline by skipping, as before; a name
it cannot read is an error, not a switch to seqio."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_fixtures import sub_sequence, windows, write_prepared_dataset

from mt3.training import input_pipeline, train

TASK = "local_mix_notes_ties_vb1_train"
LENGTHS = {"inputs": 256, "targets": 256}


@pytest.fixture(scope="module")
def prepared(music21_sequences, tmp_path_factory):
    chorale = music21_sequences["bach_chorale"]
    root = tmp_path_factory.mktemp("prepared")
    write_prepared_dataset(root, "local", {
        "train": windows(chorale, 7, stride=3.0, length=20.0, prefix="chorale_"),
        "validation": [("chorale_val", sub_sequence(chorale, 12.0, 30.0))],
    }, num_shards=2)
    return root


def _cfg(root, **kw) -> train.DatasetConfig:
    return train.DatasetConfig(mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, batch_size=3,
                               data_dir=str(root), block_tracks=3, **kw)


def _stream(cfg, **kw):
    return input_pipeline.make_batch_iterator(cfg, host_batch_size=cfg.batch_size, shard_id=kw.pop("shard_id", 0),
                                              num_shards=kw.pop("num_shards", 1), **kw)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resume_from_a_stored_position_equals_the_straight_stream(prepared):
    straight = _stream(_cfg(prepared))
    assert isinstance(straight, input_pipeline.IndexedStream)
    expected = [next(straight) for _ in range(14)]  # more than one epoch of 7 records: epochs differ
    straight.close()
    for stop in (1, 5, 9):  # inside a block, at other offsets, in the second epoch
        first = _stream(_cfg(prepared))
        for _ in range(stop):
            next(first)
        state = json.loads(json.dumps(input_pipeline.stream_state(first)))  # as the checkpoint meta stores it
        first.close()
        assert len(json.dumps(state)) < 200  # a few integers, not a buffer of examples
        resumed = _stream(_cfg(prepared), state=state)
        for index in range(stop, 14):
            _assert_same(next(resumed), expected[index])
        resumed.close()
    # real examples: targets of different crops, EOS present, inputs not silent
    targets = np.concatenate([b["decoder_target_tokens"] for b in expected])
    assert len({row.tobytes() for row in targets}) > 30 and (targets == 1).sum() == len(targets)
    assert np.abs(expected[0]["encoder_input_tokens"]).max() > 0.01


def test_seed_changes_the_order_and_hosts_read_disjoint_records(prepared):
    a, b = _stream(_cfg(prepared)), _stream(_cfg(prepared, seed=1))
    assert not np.array_equal(next(a)["decoder_target_tokens"], next(b)["decoder_target_tokens"])
    hosts = [_stream(_cfg(prepared), shard_id=i, num_shards=2) for i in range(2)]
    offsets = [set(h.records[0]) for h in hosts]
    assert not offsets[0] & offsets[1] and len(offsets[0] | offsets[1]) == 7
    for stream in (a, b, *hosts):
        stream.close()


def test_features_equal_the_seqio_feature_converter(prepared):
    """The same (inputs, targets) examples through seqio's converter and through `model_features`."""
    import tensorflow as tf

    from mt3.data.feature_converters import ContinuousInputsEncDecFeatureConverter

    stream = _stream(_cfg(prepared))
    examples = stream.block_examples(0, 0)[:4]
    stream.close()
    examples.append((examples[0][0][:100], np.arange(3, 400, dtype=np.int32)))  # short input, too-long targets
    # seqio trims each feature to its length before the converter (seqio.get_dataset's trim step)
    ds = tf.data.Dataset.from_generator(lambda: ({"inputs": x, "targets": y[:LENGTHS["targets"]]} for x, y in examples),
                                        output_signature={"inputs": tf.TensorSpec([None, 128], tf.float32),
                                                          "targets": tf.TensorSpec([None], tf.int32)})
    converted = ContinuousInputsEncDecFeatureConverter(pack=False)(ds, LENGTHS).batch(len(examples))
    want = next(converted.as_numpy_iterator())
    got = input_pipeline.model_features(examples, LENGTHS["inputs"], LENGTHS["targets"])
    for key in input_pipeline.MODEL_FEATURES:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_eval_split_targets_keep_overlaps(prepared):
    stream = _stream(_cfg(prepared, split="eval", shuffle=False))
    assert not stream.tasks[0].tokenize_config.trim_overlapping_notes
    assert _stream(_cfg(prepared)).tasks[0].tokenize_config.trim_overlapping_notes
    assert next(stream)["decoder_target_tokens"].shape == (3, 256)
    stream.close()


def test_a_checkpoint_without_pipeline_state_skips_the_seqio_pipeline(prepared):
    notes: list[str] = []
    legacy = _stream(_cfg(prepared), skip_batches=2, note=notes.append)
    assert not isinstance(legacy, input_pipeline.IndexedStream)
    assert len(notes) == 1 and "skipping 2 batches" in notes[0]
    seqio_stream = _stream(_cfg(prepared, pipeline="seqio"))
    next(seqio_stream), next(seqio_stream)
    _assert_same(next(legacy), next(seqio_stream))


def test_a_name_the_indexed_sampler_cannot_read_is_one_line_never_a_silent_switch(prepared):
    from mt3.errors import InputError

    eval_task = train.DatasetConfig(mixture_or_task_name="local_notes_ties_vb1_validation",
                                    task_feature_lengths=LENGTHS, batch_size=1, split="eval", data_dir=str(prepared))
    with pytest.raises(InputError, match="inference-eval task .* train on local_notes_ties_vb1_train"):
        _stream(eval_task)
    with pytest.raises(InputError, match="inference-eval task"):
        _stream(eval_task, state=input_pipeline.IndexedPosition(task_blocks=(0,)).to_json())
    seqio_stream = _stream(train.DatasetConfig(**{**eval_task.__dict__, "pipeline": "seqio"}))  # asked for: seqio
    assert not isinstance(seqio_stream, input_pipeline.IndexedStream) and next(seqio_stream)
    with pytest.raises(ValueError, match="pipeline"):
        _cfg(prepared, pipeline="tfdata")
