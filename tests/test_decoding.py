"""Tests for mt3.models.decoding: the KV cache reproduces teacher forcing, cached == uncached decoding, EOS stopping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mt3.models import decoding, models, network


def tiny_config(**overrides) -> network.T5Config:
    kwargs = dict(vocab_size=40, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48, num_encoder_layers=1,
                  num_decoder_layers=2, dropout_rate=0.0, input_depth=24, input_frontend="features")
    kwargs.update(overrides)
    return network.T5Config(**kwargs)


@pytest.fixture(scope="module")
def random_model():
    config = tiny_config()
    module = network.Transformer(config)
    params = jax.jit(models.ContinuousInputsEncoderDecoderModel(module).init_params)(jax.random.PRNGKey(0))
    enc = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 24)), jnp.float32)
    return module, params, enc


def test_cached_step_logits_equal_teacher_forced_logits(random_model):
    module, params, enc = random_model
    batch, length = 3, 9
    targets = jnp.asarray(np.random.default_rng(1).integers(2, 40, size=(batch, length)), jnp.int32)
    inputs = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), targets[:, :-1]], axis=1)
    full = jax.jit(lambda p: module.apply({"params": p}, enc, inputs, targets, enable_dropout=False))(params)

    @jax.jit
    def stepwise(params):
        encoded = module.apply({"params": params}, enc, enable_dropout=False, method=module.encode)
        cache = decoding.init_cache(module, params, encoded, length)

        def step(cache, i):
            token = jax.lax.dynamic_slice_in_dim(inputs, i, 1, axis=1)
            logits, variables = module.apply({"params": params, "cache": cache}, encoded, token,
                                             decoder_positions=jnp.full((batch, 1), i), enable_dropout=False,
                                             decode=True, mutable=["cache"], method=module.decode)
            return variables["cache"], logits[:, 0]

        return jnp.swapaxes(jax.lax.scan(step, cache, jnp.arange(length))[1], 0, 1)

    np.testing.assert_allclose(np.asarray(stepwise(params)), np.asarray(full), atol=1e-4)


def test_cached_greedy_equals_uncached_greedy(random_model):
    module, params, enc = random_model
    cached = decoding.decode(module, params, enc, max_decode_len=12)
    uncached = decoding.decode_uncached(module, params, enc, max_decode_len=12)
    assert cached.dtype == jnp.int32 and cached.shape == (3, 12)
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
    assert len(set(np.asarray(cached).ravel().tolist())) > 2  # a real token sequence, not a constant


def test_sampling(random_model):
    module, params, enc = random_model
    greedy = np.asarray(decoding.decode(module, params, enc, max_decode_len=10))
    key = jax.random.PRNGKey(7)
    top1 = decoding.decode(module, params, enc, max_decode_len=10, temperature=0.7, top_k=1, rng=key)
    np.testing.assert_array_equal(np.asarray(top1), greedy)  # top-1 sampling is greedy
    sampled = decoding.decode(module, params, enc, max_decode_len=10, temperature=2.0, rng=key)
    sampled_uncached = decoding.decode_uncached(module, params, enc, max_decode_len=10, temperature=2.0, rng=key)
    np.testing.assert_array_equal(np.asarray(sampled), np.asarray(sampled_uncached))
    other = decoding.decode(module, params, enc, max_decode_len=10, temperature=2.0, rng=jax.random.PRNGKey(8))
    assert (np.asarray(sampled) != np.asarray(other)).any()
    assert (np.asarray(sampled) != greedy).any()
    with pytest.raises(ValueError, match="rng"):
        decoding.decode(module, params, enc, max_decode_len=10, temperature=1.0)


# Targets of different lengths (EOS = 1 included), padded with 0: a memorised model must stop each row at its EOS.
MEMORISED_TARGETS = np.array([[5, 9, 7, 3, 1, 0, 0, 0],
                              [8, 1, 0, 0, 0, 0, 0, 0],
                              [4, 4, 6, 1, 0, 0, 0, 0]], np.int32)


@pytest.fixture(scope="module")
def memorised_model():
    """A tiny model trained (a few hundred Adam steps) until it reproduces three fixed target sequences."""
    config = tiny_config(vocab_size=16, num_encoder_layers=1, num_decoder_layers=1)
    module = network.Transformer(config)
    model = models.ContinuousInputsEncoderDecoderModel(module, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
    targets = jnp.asarray(MEMORISED_TARGETS)
    batch = {"encoder_input_tokens": jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 24)), jnp.float32),
             "decoder_target_tokens": targets,
             "decoder_input_tokens": jnp.concatenate([jnp.zeros((3, 1), jnp.int32), targets[:, :-1]], axis=1),
             "decoder_loss_weights": (targets > 0).astype(jnp.float32)}
    params = jax.jit(model.init_params)(jax.random.PRNGKey(1))
    optimizer = optax.adam(1e-2)

    @jax.jit
    def train(params):
        def step(carry, _):
            params, opt_state = carry
            grads, metrics = jax.grad(model.loss_fn, has_aux=True)(params, batch, None)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), metrics["accuracy"]

        (params, _), accuracy = jax.lax.scan(step, (params, optimizer.init(params)), None, length=300)
        return params, accuracy

    params, accuracy = train(params)
    assert float(accuracy[-1]) == 1.0
    return model, params, batch


def test_decoding_stops_at_eos_and_pads_after_it(memorised_model):
    model, params, batch = memorised_model
    ids, steps = decoding.decode(model.module, params, batch["encoder_input_tokens"], max_decode_len=8,
                                 return_num_steps=True)
    np.testing.assert_array_equal(np.asarray(ids), MEMORISED_TARGETS)
    assert int(steps) == 5  # the longest row ends at step 5; the loop does not run to max_decode_len
    uncached = decoding.decode_uncached(model.module, params, batch["encoder_input_tokens"], max_decode_len=8)
    np.testing.assert_array_equal(np.asarray(uncached), MEMORISED_TARGETS)
    predicted = model.predict_batch(params, batch, max_decode_len=8)
    np.testing.assert_array_equal(np.asarray(predicted), MEMORISED_TARGETS)


def test_max_decode_len_truncates_without_eos(memorised_model):
    model, params, batch = memorised_model
    ids, steps = decoding.decode(model.module, params, batch["encoder_input_tokens"], max_decode_len=3,
                                 return_num_steps=True)
    np.testing.assert_array_equal(np.asarray(ids), MEMORISED_TARGETS[:, :3])
    assert int(steps) == 3


def _eos_with_spread_lengths(ids: np.ndarray) -> int:
    """A token id whose first occurrence differs most across rows: used as EOS, rows stop at different steps."""
    def first(token):
        hits = [np.flatnonzero(row == token) for row in ids]
        return [h[0] if len(h) else ids.shape[1] for h in hits]
    return max(range(2, int(ids.max()) + 1), key=lambda t: len(set(first(t))))


@pytest.mark.parametrize("first_len", [3, 8, 64])
def test_compacting_greedy_equals_decode_token_for_token(first_len):
    """Rows that stop at many different steps (finished rows dropped, the cache grown 3 -> 6 -> 12 -> ...): every
    row's ids equal `decode`'s on the full batch with the full-length cache."""
    config = tiny_config(vocab_size=48, num_decoder_layers=2)
    module = network.Transformer(config)
    params = jax.jit(models.ContinuousInputsEncoderDecoderModel(module).init_params)(jax.random.PRNGKey(3))
    enc = jnp.asarray(np.random.default_rng(4).normal(size=(11, 6, 24)), jnp.float32)
    free = np.asarray(decoding.decode(module, params, enc, max_decode_len=40, eos_id=-5))
    eos = _eos_with_spread_lengths(free)
    reference, ref_steps = decoding.decode(module, params, enc, max_decode_len=40, eos_id=eos, return_num_steps=True)
    reference = np.asarray(reference)
    lengths = [(np.flatnonzero(r == eos)[:1].tolist() or [40])[0] for r in reference]
    assert len(set(lengths)) >= 4, lengths  # the rows really end at different steps
    ids, steps = decoding.greedy_decode_compacting(module, params, enc, max_decode_len=40, eos_id=eos,
                                                   first_len=first_len)
    np.testing.assert_array_equal(ids, reference)
    assert steps == int(ref_steps)


def test_cache_built_in_row_groups_equals_the_whole_batch_cache(monkeypatch):
    """`_encode_and_init_cache` encodes a large batch ENCODE_ROWS rows at a time (peak memory): the cache has the
    whole-batch layout (one scalar cache index), the values of encoding all rows at once, and the compacting decoder
    on it gives `decode`'s ids."""
    config = tiny_config(vocab_size=48, num_decoder_layers=2)
    module = network.Transformer(config)
    params = jax.jit(models.ContinuousInputsEncoderDecoderModel(module).init_params)(jax.random.PRNGKey(5))
    enc = jnp.asarray(np.random.default_rng(6).normal(size=(12, 7, 24)), jnp.float32)  # a shape no other test uses
    monkeypatch.setattr(decoding, "ENCODE_ROWS", 4)
    grouped = decoding._encode_and_init_cache(module, params, enc, cache_len=5)
    encoded = module.apply({"params": params}, enc, enable_dropout=False, method=module.encode)
    whole = decoding.init_cache(module, params, encoded, 5)
    assert jax.tree.structure(grouped) == jax.tree.structure(whole)
    for a, b in zip(jax.tree.leaves(grouped), jax.tree.leaves(whole), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    reference = np.asarray(decoding.decode(module, params, enc, max_decode_len=20))
    ids, _ = decoding.greedy_decode_compacting(module, params, enc, max_decode_len=20, first_len=5)
    np.testing.assert_array_equal(ids, reference)


def test_compacting_greedy_stops_at_eos_and_respects_the_logit_mask(memorised_model):
    model, params, batch = memorised_model
    frames = batch["encoder_input_tokens"]
    ids, steps = decoding.greedy_decode_compacting(model.module, params, frames, max_decode_len=8, first_len=2)
    np.testing.assert_array_equal(ids, MEMORISED_TARGETS)
    assert steps == 5
    allowed = np.ones((3, 16), bool)
    allowed[0, 9] = False  # row 0 may not emit its memorised second token
    masked, _ = decoding.greedy_decode_compacting(model.module, params, frames, max_decode_len=8,
                                                  allowed=jnp.asarray(allowed))
    assert masked[0, 0] == 5 and masked[0, 1] != 9
    np.testing.assert_array_equal(masked[1:], MEMORISED_TARGETS[1:])
    with pytest.raises(ValueError, match="allowed"):
        decoding.greedy_decode_compacting(model.module, params, frames, max_decode_len=8, allowed=allowed[:2])


@pytest.mark.parametrize("first_len", [3, 64])
def test_compacting_greedy_log_probs_are_the_chosen_tokens_and_change_no_token(first_len):
    """return_log_probs: the same ids token for token (rows ending at many steps, cache grown, rows dropped), and each
    log-probability is log_softmax of the teacher-forced logits at the chosen id (0 after EOS)."""
    config = tiny_config(vocab_size=48, num_decoder_layers=2)
    module = network.Transformer(config)
    params = jax.jit(models.ContinuousInputsEncoderDecoderModel(module).init_params)(jax.random.PRNGKey(3))
    enc = jnp.asarray(np.random.default_rng(4).normal(size=(11, 6, 24)), jnp.float32)
    eos = _eos_with_spread_lengths(np.asarray(decoding.decode(module, params, enc, max_decode_len=40, eos_id=-5)))
    allowed = np.ones((11, 48), bool)
    allowed[:, decoding.PAD_ID] = False  # a PAD mid-row would read as padding to the teacher-forced reference
    ids, steps = decoding.greedy_decode_compacting(module, params, enc, max_decode_len=40, eos_id=eos,
                                                   first_len=first_len, allowed=allowed)
    scored_ids, scored_steps, log_probs = decoding.greedy_decode_compacting(
        module, params, enc, max_decode_len=40, eos_id=eos, first_len=first_len, allowed=allowed,
        return_log_probs=True)
    np.testing.assert_array_equal(scored_ids, ids)
    assert scored_steps == steps and log_probs.shape == ids.shape and log_probs.dtype == np.float32
    inputs = jnp.concatenate([jnp.zeros((11, 1), jnp.int32), jnp.asarray(ids[:, :-1])], axis=1)
    logits = module.apply({"params": params}, enc, inputs, jnp.asarray(ids), enable_dropout=False)
    logits = jnp.where(allowed[:, None, :], logits, -jnp.inf)  # the mask renormalises the softmax, as decoding does
    expected = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, axis=-1)), ids[..., None], axis=-1)[..., 0]
    for row in range(11):
        end = (np.flatnonzero(ids[row] == eos)[:1].tolist() or [40])[0] + 1  # EOS included
        np.testing.assert_allclose(log_probs[row, :end], expected[row, :end], atol=1e-4)
        assert np.all(log_probs[row, end:] == 0.0) and np.all(log_probs[row, :end] <= 0.0)


@pytest.mark.parametrize("first_len", [4, 16])
def test_fast_decoders_equal_the_uncached_reference_on_mt3_shape_ratios(first_len):
    """MT3's head layout at toy size (6 heads, head_dim = emb / 8, mlp = 2 x emb, 32 rows): the heads-first KV caches
    change no token. The reference reruns the decoder on the whole prefix every step, so it shares no cache code with
    the paths under test; rows end at many steps (rows dropped, cache grown)."""
    config = tiny_config(vocab_size=128, emb_dim=48, num_heads=6, head_dim=8, mlp_dim=96, num_encoder_layers=2,
                         num_decoder_layers=3)
    module = network.Transformer(config)
    params = jax.jit(models.ContinuousInputsEncoderDecoderModel(module).init_params)(jax.random.PRNGKey(5))
    enc = jnp.asarray(np.random.default_rng(6).normal(size=(32, 10, 24)), jnp.float32)
    eos = _eos_with_spread_lengths(np.asarray(decoding.decode_uncached(module, params, enc, max_decode_len=40,
                                                                       eos_id=-5)))
    reference = np.asarray(decoding.decode_uncached(module, params, enc, max_decode_len=40, eos_id=eos))
    lengths = [(np.flatnonzero(r == eos)[:1].tolist() or [40])[0] for r in reference]
    assert len(set(lengths)) >= 4, lengths
    np.testing.assert_array_equal(np.asarray(decoding.decode(module, params, enc, max_decode_len=40, eos_id=eos)),
                                  reference)
    ids, _ = decoding.greedy_decode_compacting(module, params, enc, max_decode_len=40, eos_id=eos, first_len=first_len)
    np.testing.assert_array_equal(ids, reference)
    encoded = module.apply({"params": params}, enc, enable_dropout=False, method=module.encode)
    layer = decoding.init_cache(module, params, encoded, 40)["decoder"]["layers_0"]
    assert layer["self_attention"]["cached_key"].shape == (32, 6, 40, 8)  # [B, H, T, D]: heads first
    assert layer["encoder_decoder_attention"]["cross_key"].shape == (32, 6, 10, 8)  # [B, H, S, D]
