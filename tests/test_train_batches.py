"""Per-batch decoder padding cut (train.trim_target_padding): shapes follow the longest target, loss and gradients do
not change, and it is refused where hosts would disagree on shapes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mt3 import train
from mt3.models import models, network


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
    assert train.trim_target_padding(_batch([10, 70]), 64)["decoder_target_tokens"].shape == (2, 128)
    assert train.trim_target_padding(_batch([64, 3]), 64)["decoder_input_tokens"].shape == (2, 64)
    assert train.trim_target_padding(_batch([250, 3]), 64)["decoder_loss_weights"].shape == (2, 256)
    assert train.trim_target_padding(_batch([200], target_length=200), 64)["decoder_target_tokens"].shape == (1, 200)
    assert train.trim_target_padding(_batch([10, 70]), 64)["encoder_input_tokens"].shape == (2, 8, 16)


def test_loss_and_gradients_are_unchanged():
    config = network.T5Config(vocab_size=128, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=1,
                              num_decoder_layers=1, dropout_rate=0.0, input_depth=16, input_frontend="features")
    model = models.ContinuousInputsEncoderDecoderModel(network.Transformer(config))
    params = model.init_params(jax.random.PRNGKey(0))
    full = _batch([12, 40, 33])
    cut = train.trim_target_padding(full, 16)
    assert cut["decoder_target_tokens"].shape[1] == 48
    (loss_full, _), grads_full = jax.value_and_grad(model.loss_fn, has_aux=True)(params, full, None)
    (loss_cut, _), grads_cut = jax.value_and_grad(model.loss_fn, has_aux=True)(params, cut, None)
    np.testing.assert_allclose(loss_cut, loss_full, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_full), jax.tree.leaves(grads_cut), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_refused_with_several_data_shards():
    cfg = train.DatasetConfig(target_length_multiple=64)
    with pytest.raises(ValueError, match="one data shard"):
        next(iter(train.make_batch_iterator(cfg, host_batch_size=2, shard_id=0, num_shards=2)))
