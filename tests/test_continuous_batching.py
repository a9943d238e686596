"""Tests for mt3.models.continuous_batching: many segments through refilled slots give, row for row, the ids and
log-probabilities of the per-batch decoders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mt3.models import continuous_batching, decoding, models, network
from tests.test_decoding import _eos_with_spread_lengths, tiny_config


@pytest.fixture(scope="module")
def spread_model():
    """A random tiny network, 29 segments and an EOS id at which its rows end at many different steps."""
    module = network.Transformer(tiny_config(vocab_size=48, num_decoder_layers=2))
    params = jax.jit(models.ContinuousInputsEncoderDecoderModel(module).init_params)(jax.random.PRNGKey(3))
    enc = np.random.default_rng(7).normal(size=(29, 6, 24)).astype(np.float32)
    eos = _eos_with_spread_lengths(np.asarray(decoding.decode(module, params, jnp.asarray(enc), max_decode_len=40,
                                                              eos_id=-5)))
    return module, params, enc, eos


@pytest.mark.parametrize("first_len,refill_rows", [(3, 2), (8, 1), (64, 8)])
def test_continuous_batching_equals_the_compacting_decoder_row_for_row(spread_model, monkeypatch, first_len,
                                                                       refill_rows):
    """29 segments through 8 slots (refilled 1, 2 or 8 at a time; caches grown from 3 slots and cut back; encoded
    ahead in groups of 4), each with its own logit mask: ids and log-probs equal the compacting decoder's, batch by
    batch, and `decode`'s."""
    module, params, enc, eos = spread_model
    monkeypatch.setattr(decoding, "ENCODE_ROWS", 4)
    allowed = np.random.default_rng(8).random((29, 48)) > 0.15
    allowed[:, eos] = True
    done: list[int] = []
    ids, log_probs = continuous_batching.greedy_decode_continuous(
        module, params, enc, batch_size=8, max_decode_len=40, allowed=allowed, first_len=first_len,
        refill_rows=refill_rows, eos_id=eos, on_done=lambda segs: done.extend(segs.tolist()))
    assert sorted(done) == list(range(29))  # every segment reported once
    lengths = set()
    for start in range(0, 29, 8):
        rows = slice(start, start + 8)
        ref_ids, _, ref_logp = decoding.greedy_decode_compacting(
            module, params, jnp.asarray(enc[rows]), max_decode_len=40, eos_id=eos, allowed=allowed[rows],
            first_len=first_len, return_log_probs=True)
        np.testing.assert_array_equal(ids[rows], ref_ids)
        np.testing.assert_allclose(log_probs[rows], ref_logp, atol=1e-6)
        lengths |= {(np.flatnonzero(r == eos)[:1].tolist() or [40])[0] for r in ref_ids}
    assert len(lengths) >= 5, lengths  # rows really end at many different steps
    reference = np.asarray(decoding.decode(module, params, jnp.asarray(enc), max_decode_len=40, eos_id=eos))
    unmasked, _ = continuous_batching.greedy_decode_continuous(module, params, enc, batch_size=8, max_decode_len=40,
                                                               first_len=first_len, refill_rows=refill_rows,
                                                               eos_id=eos)
    np.testing.assert_array_equal(unmasked, reference)


def test_rows_without_eos_stop_at_max_decode_len(spread_model, monkeypatch):
    module, params, enc, _ = spread_model
    monkeypatch.setattr(decoding, "ENCODE_ROWS", 4)
    reference = np.asarray(decoding.decode(module, params, jnp.asarray(enc[:11]), max_decode_len=9, eos_id=-5))
    ids, _ = continuous_batching.greedy_decode_continuous(module, params, enc[:11], batch_size=4, max_decode_len=9,
                                                          first_len=4, eos_id=-5)
    np.testing.assert_array_equal(ids, reference)


def test_bad_arguments_are_named(spread_model):
    module, params, enc, _ = spread_model
    with pytest.raises(ValueError, match="multiple of"):
        continuous_batching.greedy_decode_continuous(module, params, enc, batch_size=decoding.ENCODE_ROWS + 1,
                                                     max_decode_len=8)
    with pytest.raises(ValueError, match="allowed"):
        continuous_batching.greedy_decode_continuous(module, params, enc, batch_size=decoding.ENCODE_ROWS,
                                                     max_decode_len=8, allowed=np.ones((3, 48), bool))
