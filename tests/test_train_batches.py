"""Per-batch decoder padding cut (input_pipeline.trim_target_padding): shapes follow the longest target, loss and
gradients do not change, and it is refused where hosts would disagree on shapes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mt3 import vocabularies
from mt3.data import frame_targets
from mt3.models import models, network
from mt3.training import input_pipeline, train


def _batch(lengths, target_length=256, seed=0):
    rng = np.random.default_rng(seed)
    b = len(lengths)
    targets = np.zeros((b, target_length), np.int32)
    for i, n in enumerate(lengths):
        targets[i, :n] = rng.integers(3, 100, n)
        targets[i, n - 1] = 1
    inputs = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1)
    return {"encoder_input_tokens": rng.normal(size=(b, 8, 16)).astype(np.float32),
            "decoder_target_tokens": targets, "decoder_input_tokens": inputs,
            "decoder_loss_weights": (targets > 0).astype(np.float32)}


def test_cut_follows_the_longest_target():
    assert input_pipeline.trim_target_padding(_batch([10, 70]), 64)["decoder_target_tokens"].shape == (2, 128)
    assert input_pipeline.trim_target_padding(_batch([64, 3]), 64)["decoder_input_tokens"].shape == (2, 64)
    assert input_pipeline.trim_target_padding(_batch([250, 3]), 64)["decoder_loss_weights"].shape == (2, 256)
    long = input_pipeline.trim_target_padding(_batch([200], target_length=200), 64)
    assert long["decoder_target_tokens"].shape == (1, 200)
    assert input_pipeline.trim_target_padding(_batch([10, 70]), 64)["encoder_input_tokens"].shape == (2, 8, 16)


def test_loss_and_gradients_are_unchanged():
    config = network.T5Config(vocab_size=128, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=1,
                              num_decoder_layers=1, dropout_rate=0.0, input_depth=16, input_frontend="features")
    model = models.ContinuousInputsEncoderDecoderModel(network.Transformer(config))
    params = model.init_params(jax.random.PRNGKey(0))
    full = _batch([12, 40, 33])
    cut = input_pipeline.trim_target_padding(full, 16)
    assert cut["decoder_target_tokens"].shape[1] == 48
    (loss_full, _), grads_full = jax.value_and_grad(model.loss_fn, has_aux=True)(params, full, None)
    (loss_cut, _), grads_cut = jax.value_and_grad(model.loss_fn, has_aux=True)(params, cut, None)
    np.testing.assert_allclose(loss_cut, loss_full, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_full), jax.tree.leaves(grads_cut), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_refused_with_several_data_shards():
    cfg = train.DatasetConfig(target_length_multiple=64)
    with pytest.raises(ValueError, match="one data shard"):
        next(iter(input_pipeline.make_batch_iterator(cfg, host_batch_size=2, shard_id=0, num_shards=2)))


def test_cut_keeps_the_frame_targets_whole():
    batch = _batch([10, 70])
    batch["aux_onsets"] = np.ones((2, 8, 128), np.uint8)
    cut = input_pipeline.trim_target_padding(batch, 64)
    assert cut["aux_onsets"].shape == (2, 8, 128) and cut["decoder_target_tokens"].shape == (2, 128)


def _batches(tmp_path, music21_sequences, monkeypatch, aux_frame_loss_weight, pipeline):
    from data_fixtures import windows, write_prepared_dataset

    from mt3 import datasets, tasks

    if not (tmp_path / "local").exists():
        pieces = windows(music21_sequences["bach_chorale"], 4, stride=3.0, length=6.0, prefix="t")
        write_prepared_dataset(tmp_path, "local", {"train": pieces, "validation": pieces[:1], "test": pieces[:1]})
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    # the model's AUX_FRAME_LOSS_WEIGHT reaches the pipeline on the dataset config (gin/train.gin binds it there)
    cfg = train.DatasetConfig(mixture_or_task_name=f"{tasks._MT3_PREFIXES['local']}_train",
                              task_feature_lengths={"inputs": 256, "targets": 256}, batch_size=2, shuffle=False,
                              target_length_multiple=64, data_dir=str(tmp_path), pipeline=pipeline,
                              aux_frame_loss_weight=aux_frame_loss_weight)
    return list(zip(range(3), input_pipeline.make_batch_iterator(cfg, host_batch_size=2, shard_id=0, num_shards=1),
                    strict=False))


@pytest.mark.parametrize("pipeline", ["indexed", "seqio"])
def test_trainer_batches_carry_frame_targets_only_when_the_aux_loss_is_on(tmp_path, music21_sequences, monkeypatch,
                                                                          pipeline):
    """Both input pipelines (the indexed sampler; seqio's feature converter and the trainer's filter): rolls padded
    to the encoder length when on; with the weight at 0 the batches are exactly the model features they were."""
    off = _batches(tmp_path, music21_sequences, monkeypatch, 0.0, pipeline)
    on = _batches(tmp_path, music21_sequences, monkeypatch, 1.0, pipeline)
    assert len(off) == len(on) == 3
    for (_, a), (_, b) in zip(off, on, strict=True):
        assert set(a) == set(input_pipeline.MODEL_FEATURES)
        assert set(b) == set(input_pipeline.MODEL_FEATURES) | {"aux_onsets", "aux_frames"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert b["aux_onsets"].shape == b["aux_frames"].shape == (2, 256, 128) and b["aux_frames"].dtype == np.uint8
        assert b["aux_frames"].sum() > 0
        codec = vocabularies.build_codec(vocabularies.MT3_VOCAB_CONFIG)
        for i, ids in enumerate(b["decoder_target_tokens"]):  # the rolls are those of the row's targets
            onsets, frames = frame_targets.rolls_from_ids(ids, 256, codec, 125.0, include_ties=True)
            np.testing.assert_array_equal(b["aux_onsets"][i], onsets)
            assert not np.any(b["aux_frames"][i] & ~frames)  # (a crop's notes end with it; zero padding after)
