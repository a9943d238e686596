"""Tests for mt3.models.layers: attention in both operand layouts equals a NumPy reference."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mt3.models import layers


def reference_attention(q_BxQxHxD, k_BxKxHxD, v_BxKxHxD, mask_BxHxQxK):
    logits = np.einsum("bqhd,bkhd->bhqk", q_BxQxHxD, k_BxKxHxD).astype(np.float64)
    logits = np.where(mask_BxHxQxK, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v_BxKxHxD)


@pytest.mark.parametrize("queries", [1, 7])
@pytest.mark.parametrize("heads_first_kv", [False, True])
def test_attention_equals_reference_in_both_layouts(queries, heads_first_kv):
    """Whole sequences (Q > 1: every operand transposed heads-first for XLA:CPU's batched matmuls) and one decode
    step (Q = 1) give softmax(q k^T) v with masked keys ignored, as [B, Q, H, D], whatever the key/value layout."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, n, 3, 4)).astype(np.float32) for n in (queries, 5, 5))
    mask = rng.random((2, 1, queries, 5)) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    expected = reference_attention(q, k, v, np.broadcast_to(mask, (2, 3, queries, 5)))
    kv = (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)) if heads_first_kv else (k, v)
    out = layers.dot_product_attention(jnp.asarray(q), *map(jnp.asarray, kv), jnp.asarray(mask), dropout_rate=0.0,
                                       deterministic=True, dropout_rng=None, dtype=jnp.float32,
                                       heads_first_kv=heads_first_kv)
    assert out.shape == (2, queries, 3, 4)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
