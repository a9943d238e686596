"""Tests for mt3.models.models: T5X loss semantics (z-loss, label smoothing, normalisation), metrics, gradients,
prediction, and that the model package never imports TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mt3.models import models, network

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**overrides) -> network.T5Config:
    kwargs = dict(vocab_size=40, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48, num_encoder_layers=1,
                  num_decoder_layers=1, dropout_rate=0.0, input_depth=24, input_frontend="features")
    kwargs.update(overrides)
    return network.T5Config(**kwargs)


def numpy_token_losses(logits: np.ndarray, targets: np.ndarray, label_smoothing: float, z_loss: float):
    """Per-token (KL(q || softmax) + z_loss * logZ^2, z-loss term) in float64, q = smoothed one-hot targets.

    KL(q || p) is cross entropy minus the entropy of q, which is T5X's 'normalizing constant'."""
    logits = logits.astype(np.float64)
    vocab = logits.shape[-1]
    log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    log_p = logits - log_z[..., None]
    q = np.full(logits.shape, label_smoothing / (vocab - 1))
    np.put_along_axis(q, targets[..., None], 1.0 - label_smoothing, axis=-1)
    kl = np.sum(np.where(q > 0, q * (np.log(np.where(q > 0, q, 1.0)) - log_p), 0.0), -1)
    return kl + z_loss * log_z ** 2, z_loss * log_z ** 2


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_weighted_cross_entropy_matches_hand_computation(label_smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(2, 3, 5)).astype(np.float32)
    targets = np.array([[1, 4, 0], [2, 2, 3]])
    weights = np.array([[1.0, 1.0, 0.0], [1.0, 0.5, 1.0]], np.float32)
    loss, z, weight_sum = models.compute_weighted_cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), label_smoothing=label_smoothing, z_loss=1e-4)
    token_loss, token_z = numpy_token_losses(logits, targets, label_smoothing, 1e-4)
    assert float(loss) == pytest.approx(np.sum(token_loss * weights), rel=1e-5)
    assert float(z) == pytest.approx(np.sum(token_z * weights), rel=1e-5)
    assert float(weight_sum) == pytest.approx(4.5)
    if label_smoothing == 0.0:  # plain cross entropy + z-loss
        x = logits.astype(np.float64)
        log_softmax = x - np.log(np.exp(x).sum(-1, keepdims=True))
        plain = -np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
        assert float(loss - z) == pytest.approx(np.sum(plain * weights), rel=1e-5)


def test_label_smoothing_is_zero_at_the_smoothed_target_distribution():
    """T5X subtracts the entropy of the smoothed targets: predicting them exactly costs nothing."""
    vocab, s = 7, 0.2
    targets = np.array([[3, 0, 6]])
    q = np.full((1, 3, vocab), s / (vocab - 1))
    np.put_along_axis(q, targets[..., None], 1.0 - s, axis=-1)
    loss, _, _ = models.compute_weighted_cross_entropy(jnp.asarray(np.log(q), jnp.float32), jnp.asarray(targets),
                                                       label_smoothing=s, z_loss=0.0)
    assert abs(float(loss)) < 1e-5
    unsmoothed, _, _ = models.compute_weighted_cross_entropy(jnp.asarray(np.log(q), jnp.float32),
                                                             jnp.asarray(targets), z_loss=0.0)
    assert float(unsmoothed) == pytest.approx(-3 * np.log(1.0 - s), rel=1e-5)


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config(dropout_rate=0.3)
    module = network.Transformer(config)
    model = models.ContinuousInputsEncoderDecoderModel(module)
    params = jax.jit(model.init_params)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    targets = rng.integers(2, 40, size=(2, 9)).astype(np.int32)
    targets[0, 6:] = 0
    targets[0, 5] = targets[1, 8] = 1  # EOS
    batch = {"encoder_input_tokens": jnp.asarray(rng.normal(size=(2, 5, 24)), jnp.float32),
             "decoder_target_tokens": jnp.asarray(targets),
             "decoder_input_tokens": jnp.asarray(np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], 1)),
             "decoder_loss_weights": jnp.asarray((targets > 0).astype(np.float32))}
    return model, params, batch


def test_loss_fn_metrics_match_numpy(tiny):
    model, params, batch = tiny
    loss, metrics = jax.jit(model.loss_fn)(params, batch, None)
    assert set(metrics) == {"loss", "z_loss", "cross_ent_loss", "accuracy", "num_tokens"}
    logits = np.asarray(jax.jit(lambda p: model.module.apply(
        {"params": p}, batch["encoder_input_tokens"], batch["decoder_input_tokens"], batch["decoder_target_tokens"],
        enable_dropout=False))(params))
    targets, weights = np.asarray(batch["decoder_target_tokens"]), np.asarray(batch["decoder_loss_weights"])
    token_loss, token_z = numpy_token_losses(logits, targets, 0.0, 1e-4)
    assert float(loss) == pytest.approx(np.sum(token_loss * weights), rel=1e-5)  # summed, not averaged (MT3)
    assert float(metrics["z_loss"]) == pytest.approx(np.sum(token_z * weights), rel=1e-5)
    assert float(metrics["cross_ent_loss"]) == pytest.approx(np.sum((token_loss - token_z) * weights), rel=1e-5)
    assert float(metrics["num_tokens"]) == 6 + 9
    accuracy = np.sum((logits.argmax(-1) == targets) * weights) / weights.sum()
    assert float(metrics["accuracy"]) == pytest.approx(accuracy)
    # Without explicit weights the padding (targets == 0) is excluded all the same.
    unweighted = {k: v for k, v in batch.items() if k != "decoder_loss_weights"}
    assert float(jax.jit(model.loss_fn)(params, unweighted, None)[0]) == pytest.approx(float(loss), rel=1e-6)
    # eval_fn is the deterministic loss_fn.
    eval_metrics = jax.jit(model.eval_fn)(params, batch)
    assert {k: float(v) for k, v in eval_metrics.items()} == pytest.approx({k: float(v) for k, v in metrics.items()})
    # score_batch: summed target log-likelihood per example = -(cross entropy without z-loss).
    assert float(jnp.sum(jax.jit(model.score_batch)(params, batch))) == pytest.approx(
        -float(metrics["cross_ent_loss"]), rel=1e-5)


def test_loss_normalizing_factor(tiny):
    model, params, batch = tiny
    summed = float(jax.jit(model.loss_fn)(params, batch, None)[0])
    per_token = models.ContinuousInputsEncoderDecoderModel(model.module,
                                                           loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
    assert float(jax.jit(per_token.loss_fn)(params, batch, None)[0]) == pytest.approx(summed / 15, rel=1e-5)
    fixed = models.ContinuousInputsEncoderDecoderModel(model.module, loss_normalizing_factor=4.0)
    assert float(jax.jit(fixed.loss_fn)(params, batch, None)[0]) == pytest.approx(summed / 4, rel=1e-5)
    with pytest.raises(ValueError, match="NUM_REAL_TARGET_TOKENS"):
        models.ContinuousInputsEncoderDecoderModel(model.module, loss_normalizing_factor="per_token")


def test_gradients_reach_every_parameter_and_dropout_uses_the_rng(tiny):
    model, params, batch = tiny
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p, key: model.loss_fn(p, batch, key)[0]))
    drop_a, grads = loss_and_grad(params, jax.random.PRNGKey(1))
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0, path
    drop_b = loss_and_grad(params, jax.random.PRNGKey(2))[0]
    eval_loss = jax.jit(model.loss_fn)(params, batch, None)[0]
    assert float(drop_a) != float(drop_b) and float(eval_loss) not in (float(drop_a), float(drop_b))


def test_predict_batch_shape_and_ids(tiny):
    model, params, batch = tiny
    ids = model.predict_batch(params, batch, max_decode_len=6)
    assert ids.shape == (2, 6) and ids.dtype == jnp.int32
    assert ((np.asarray(ids) >= 0) & (np.asarray(ids) < 40)).all()


def test_param_count_helpers_agree(tiny):
    model, params, _ = tiny
    assert models.count_params(params) == models.expected_param_count(model.config)
    assert models.count_params(model.abstract_params()) == models.count_params(params)


def test_constructor_validation():
    module = network.Transformer(tiny_config())
    with pytest.raises(ValueError, match="label_smoothing"):
        models.ContinuousInputsEncoderDecoderModel(module, label_smoothing=1.0)
    with pytest.raises(ValueError, match="z_loss"):
        models.ContinuousInputsEncoderDecoderModel(module, z_loss=-1.0)


def test_model_package_never_imports_tensorflow():
    code = ("import mt3.models.network, mt3.models.models, mt3.models.decoding, mt3.models.layers, mt3.spectrograms; "
            "import sys; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
            "assert 'seqio' not in sys.modules, 'seqio imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def _with_rolls(batch, seed=3):
    """The tiny batch plus piano rolls of its 5 encoder frames (as the training pipeline adds them)."""
    rng = np.random.default_rng(seed)
    shape = batch["encoder_input_tokens"].shape[:2] + (128,)
    frames = (rng.random(shape) < 0.1).astype(np.uint8)
    onsets = frames * (rng.random(shape) < 0.5).astype(np.uint8)
    return {**batch, "aux_onsets": jnp.asarray(onsets), "aux_frames": jnp.asarray(frames)}


def _numpy_frame_bce(logits, targets):
    p = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    t = np.asarray(targets, np.float64)
    return float(np.sum(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)), axis=-1)))


def test_aux_heads_off_leave_params_loss_and_metrics_unchanged(tiny):
    """Weight 0 (MT3's presets): no head parameters, and rolls in the batch are ignored."""
    model, params, batch = tiny
    off = models.ContinuousInputsEncoderDecoderModel(model.module, aux_frame_loss_weight=0.0)
    fresh = off.init_params(jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(params) and set(fresh) == {
        "encoder", "decoder"}
    plain = jax.jit(model.loss_fn)(params, batch, jax.random.PRNGKey(5))
    with_rolls = jax.jit(off.loss_fn)(params, _with_rolls(batch), jax.random.PRNGKey(5))
    assert set(with_rolls[1]) == set(plain[1])
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(with_rolls), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_aux_loss_adds_weighted_frame_bce_and_trains_only_the_encoder_side(tiny):
    model, params, batch = tiny
    weight = 0.5
    aux = models.ContinuousInputsEncoderDecoderModel(model.module, aux_frame_loss_weight=weight)
    aux_params = jax.jit(aux.init_params)(jax.random.PRNGKey(0))
    assert set(aux_params) == {"encoder", "decoder", models.AUX_HEADS}
    for key in ("encoder", "decoder"):  # the network's parameters are the plain model's (same init rng)
        for a, b in zip(jax.tree.leaves(aux_params[key]), jax.tree.leaves(params[key]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert models.count_params(aux_params[models.AUX_HEADS]) == 2 * (32 * 128 + 128)
    rolled = _with_rolls(batch)
    loss, metrics = jax.jit(aux.loss_fn)(aux_params, rolled, None)
    token_loss, token_metrics = jax.jit(model.loss_fn)(params, batch, None)
    encoded = model.module.apply({"params": params}, batch["encoder_input_tokens"], enable_dropout=False,
                                 method=network.Transformer.encode)
    onset_logits, frame_logits = network.FrameHeads().apply({"params": aux_params[models.AUX_HEADS]}, encoded)
    assert float(metrics["aux_onset_loss"]) == pytest.approx(_numpy_frame_bce(onset_logits, rolled["aux_onsets"]),
                                                             rel=1e-5)
    assert float(metrics["aux_frame_loss"]) == pytest.approx(_numpy_frame_bce(frame_logits, rolled["aux_frames"]),
                                                             rel=1e-5)
    assert float(loss) == pytest.approx(float(token_loss) + weight * (float(metrics["aux_onset_loss"])
                                                                      + float(metrics["aux_frame_loss"])), rel=1e-6)
    assert float(metrics["cross_ent_loss"]) == pytest.approx(float(token_metrics["cross_ent_loss"]), rel=1e-6)
    # Gradients: the heads and the encoder get the auxiliary signal; the decoder's are exactly the token loss's.
    grads = jax.jit(jax.grad(lambda p: aux.loss_fn(p, rolled, None)[0]))(aux_params)
    token_grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, None)[0]))(params)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads[models.AUX_HEADS]))
    for a, b in zip(jax.tree.leaves(grads["decoder"]), jax.tree.leaves(token_grads["decoder"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert not np.allclose(np.asarray(grads["encoder"]["encoder_norm"]["scale"]),
                           np.asarray(token_grads["encoder"]["encoder_norm"]["scale"]))
    # Eval batches carry no rolls: teacher-forced eval is the token loss alone, comparable across arms.
    eval_metrics = jax.jit(aux.eval_fn)(aux_params, batch)
    assert set(eval_metrics) == set(token_metrics)
    assert float(eval_metrics["loss"]) == pytest.approx(float(token_loss), rel=1e-6)
    with pytest.raises(ValueError, match="AUX_FRAME_LOSS_WEIGHT"):
        aux.loss_fn(aux_params, batch, None)
    with pytest.raises(ValueError, match="aux_frame_loss_weight"):
        models.ContinuousInputsEncoderDecoderModel(model.module, aux_frame_loss_weight=-1.0)


def test_prediction_ignores_the_aux_heads(tiny):
    """Inference and decoding never need the heads: the same network parameters decode the same ids with or without
    them in the tree."""
    model, params, batch = tiny
    aux = models.ContinuousInputsEncoderDecoderModel(model.module, aux_frame_loss_weight=1.0)
    aux_params = jax.jit(aux.init_params)(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(aux.predict_batch(aux_params, batch, max_decode_len=6)),
                                  np.asarray(model.predict_batch(params, batch, max_decode_len=6)))


def test_aux_metrics_sum_over_microbatches(tiny):
    """With gradient accumulation the batch's aux losses are the sums of its microbatches' (as the token loss)."""
    from mt3.training import trainer

    model, _, batch = tiny
    aux = models.ContinuousInputsEncoderDecoderModel(model.module, aux_frame_loss_weight=1.0)
    aux_params = jax.jit(aux.init_params)(jax.random.PRNGKey(0))
    rolled = _with_rolls(batch)
    _, whole = trainer.compute_gradients(aux_params, rolled, jax.random.PRNGKey(0), loss_fn=lambda p, b, r: aux.loss_fn(
        p, b, None))
    _, micro = trainer.compute_gradients(aux_params, rolled, jax.random.PRNGKey(0), loss_fn=lambda p, b, r: aux.loss_fn(
        p, b, None), num_microbatches=2)
    for key in ("loss", "aux_onset_loss", "aux_frame_loss"):
        assert float(micro[key]) == pytest.approx(float(whole[key]), rel=1e-5), key
