"""T5.1.1 building blocks in Flax: RMS norm, dense and embedding with logical axes, attention with a KV cache,
gated-GELU MLP and fixed sinusoidal position embeddings.

Why these shapes: kernels are stored 2-D (e.g. attention query `[embed, joined_kv]`) exactly as T5X stores them, so
parameter counts, initialiser fan-in and logical partitioning match MT3's network. Every parameter carries T5X logical
axis names through `nn.with_logical_partitioning`; `mt3.training.partitioning` maps them onto the device mesh. No
TensorFlow.

Tensor names carry their shape (nanodo's habit), where cache and attention shape bugs live: B batch, L length (Q
queries, K keys; T the decode cache's max_decode_length), E embedding features, H heads, D head dim, M mlp dim,
F mel bins, C conv channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

# T5X defaults: attention kernels N(0, 1/fan_in); MLP and projections truncated normal with the same variance.
ATTENTION_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
MLP_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
EMBEDDING_INIT = nn.initializers.normal(stddev=1.0)
# Additive attention bias for masked positions (large but finite, so fully masked rows stay NaN-free).
MASK_BIAS = -1e10


def canonical_dtype(name: str | jnp.dtype) -> jnp.dtype:
    """'float32' / 'bfloat16' (or a dtype) -> jnp dtype; the config stays a plain hashable string."""
    allowed = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if isinstance(name, str):
        if name not in allowed:
            raise ValueError(f"dtype must be one of {sorted(allowed)}, got {name!r}")
        return allowed[name]
    return jnp.dtype(name)


def _normalize_axes(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return tuple(a % ndim for a in axes)


class DenseGeneral(nn.Module):
    """Bias-free dense layer over arbitrary input axes, producing arbitrary output feature axes.

    The kernel parameter is 2-D `[prod(in), prod(features)]` (as T5X), so `fan_in` for the initialiser is the flattened
    input size and `kernel_axes` names exactly two logical axes. Compute happens in `dtype`; params stay float32.
    """

    features: int | Sequence[int]
    kernel_axes: tuple[str, str]
    axis: int | Sequence[int] = -1
    dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = MLP_KERNEL_INIT

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        # kernel [prod(in), prod(features)] as stored, reshaped to in_shape + features to contract `axis`
        axis = _normalize_axes(self.axis, inputs.ndim)
        in_shape = tuple(inputs.shape[a] for a in axis)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (int(np.prod(in_shape)), int(np.prod(features))),
            jnp.float32,
        )
        kernel = jnp.asarray(kernel, self.dtype).reshape(in_shape + features)
        inputs = jnp.asarray(inputs, self.dtype)
        contract = (axis, tuple(range(len(axis))))
        return jax.lax.dot_general(inputs, kernel, (contract, ((), ())))


class Embed(nn.Module):
    """Token embedding table `[num_embeddings, features]` with N(0, 1) init (T5X `Embed`)."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: Array) -> Array:
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(EMBEDDING_INIT, ("vocab", "embed")),
            (self.num_embeddings, self.features),
            jnp.float32,
        )
        return jnp.take(jnp.asarray(table, self.dtype), ids, axis=0)


def sinusoid_table(max_length: int, features: int) -> np.ndarray:
    """Fixed position table `[max_length, features]`: first half sin, second half cos (concatenated, as MT3).

    Inverse timescales are exp(-i * ln(10000) / (features/2 - 1)) for i = 0 .. features/2 - 1.
    """
    if features % 2 or features < 4:
        raise ValueError(f"sinusoidal embeddings need an even feature size >= 4, got {features}")
    half = features // 2
    inv_timescales = np.exp(-np.arange(half, dtype=np.float64) * math.log(10000.0) / (half - 1))
    scaled = np.arange(max_length, dtype=np.float64)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


class FixedEmbed(nn.Module):
    """Look up fixed sinusoidal position embeddings (no parameters)."""

    features: int
    max_length: int = 2048

    def __call__(self, positions: Array) -> Array:
        table = jnp.asarray(sinusoid_table(self.max_length, self.features))
        return jnp.take(table, positions, axis=0)


class RMSNorm(nn.Module):
    """T5 layer norm: scale * x / sqrt(mean(x^2) + eps), no mean subtraction, no bias; statistics in float32."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],),
                           jnp.float32)
        x32 = jnp.asarray(x, jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = jnp.asarray(x32 * jax.lax.rsqrt(var + self.epsilon), self.dtype)
        return y * jnp.asarray(scale, self.dtype)


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the given (broadcastable) masks; None entries are ignored."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


def make_attention_mask(query_valid_BxQ: Array, key_valid_BxK: Array) -> Array:
    """[B, Q] x [B, K] booleans -> [B, 1, Q, K] mask (True = may attend)."""
    return jnp.logical_and(query_valid_BxQ[:, None, :, None], key_valid_BxK[:, None, None, :])


def make_causal_mask(length: int) -> Array:
    """[1, 1, L, L] lower-triangular mask."""
    idx_L = jnp.arange(length)
    return (idx_L[None, :] <= idx_L[:, None])[None, None]


def dot_product_attention(query_BxQxHxD: Array, key_BxKxHxD: Array, value_BxKxHxD: Array, mask: Array | None, *,
                          dropout_rate: float, deterministic: bool, dropout_rng: Array | None,
                          dtype: jnp.dtype, heads_first_kv: bool = False) -> Array:
    """softmax(q k^T + bias) v -> [B, Q, H, D]; logits and softmax in float32. `mask` broadcasts to [B, H, Q, K].

    There is no 1/sqrt(D) factor here: T5 folds it into the query kernel init. Attention-probability dropout shares
    its mask across the query axis (T5X `broadcast_dropout`). heads_first_kv: keys and values come as [B, H, K, D]
    (the decode caches' layout, already what the batched matmuls read, so XLA copies nothing per step).
    """
    if query_BxQxHxD.shape[1] > 1:
        # Whole sequences (encoder, teacher forcing): every operand heads-first, so both batched matmuls have their
        # batch axes leading. With [B, Q, H, D] operands XLA:CPU ran them on one thread at ~15 GFLOP/s, 36 % of
        # MT3's encoder time for 8 % of its FLOPs; heads-first the same attention took 5.6x less wall time
        # (docs/decoding_speed.md, "The encoder's attention"). One decode step (Q = 1) keeps its layout.
        query_BxHxQxD = query_BxQxHxD.transpose(0, 2, 1, 3)
        key_BxHxKxD = key_BxKxHxD if heads_first_kv else key_BxKxHxD.transpose(0, 2, 1, 3)
        value_BxHxKxD = value_BxKxHxD if heads_first_kv else value_BxKxHxD.transpose(0, 2, 1, 3)
        logits_BxHxQxK = jnp.einsum("bhqd,bhkd->bhqk", query_BxHxQxD, key_BxHxKxD,
                                    preferred_element_type=jnp.float32)
        weights_BxHxQxK = _attention_weights(logits_BxHxQxK, mask, dropout_rate=dropout_rate,
                                             deterministic=deterministic, dropout_rng=dropout_rng, dtype=dtype)
        return jnp.einsum("bhqk,bhkd->bhqd", weights_BxHxQxK, value_BxHxKxD.astype(dtype)).transpose(0, 2, 1, 3)
    kv = "bhkd" if heads_first_kv else "bkhd"
    logits_BxHxQxK = jnp.einsum(f"bqhd,{kv}->bhqk", query_BxQxHxD, key_BxKxHxD, preferred_element_type=jnp.float32)
    weights_BxHxQxK = _attention_weights(logits_BxHxQxK, mask, dropout_rate=dropout_rate, deterministic=deterministic,
                                         dropout_rng=dropout_rng, dtype=dtype)
    return jnp.einsum(f"bhqk,{kv}->bqhd", weights_BxHxQxK, value_BxKxHxD.astype(dtype))


def _attention_weights(logits_BxHxQxK: Array, mask: Array | None, *, dropout_rate: float, deterministic: bool,
                       dropout_rng: Array | None, dtype: jnp.dtype) -> Array:
    """softmax(logits + mask bias) in float32, attention-probability dropout, cast to `dtype`."""
    if mask is not None:
        logits_BxHxQxK = logits_BxHxQxK + jnp.where(mask, 0.0, MASK_BIAS).astype(jnp.float32)
    weights_BxHxQxK = jax.nn.softmax(logits_BxHxQxK, axis=-1)
    if not deterministic and dropout_rate > 0.0:
        keep_shape = list(weights_BxHxQxK.shape)
        keep_shape[-2] = 1  # broadcast over queries
        keep_BxHx1xK = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, keep_shape)
        weights_BxHxQxK = weights_BxHxQxK * keep_BxHx1xK / (1.0 - dropout_rate)
    return weights_BxHxQxK.astype(dtype)


class MultiHeadDotProductAttention(nn.Module):
    """Bias-free multi-head attention with T5X parameter layout (query/key/value/out, 2-D kernels).

    `decode=True` switches to autoregressive mode and uses the 'cache' collection:
    - self-attention (`is_cross_attention=False`): keys/values `[B, H, max_decode_length, D]` plus `cache_index`.
      When the cache does not exist yet, it is created (zeros) and the call runs uncached without writing, which is
      how `decoding.init_cache` builds it; later calls take one token, write it at `cache_index` and attend to
      positions <= cache_index.
    - cross-attention (`is_cross_attention=True`): the projected encoder keys/values are computed on the first
      (cache-creating) call and reused afterwards (as `[B, H, S, D]`), so the encoder output is projected once.
    Both caches are heads-first: the batched matmuls of one decode step read them as they lie. The older
    `[B, T, H, D]` layout made XLA:CPU transpose every cache (and copy the self-attention ones) on every step, ~0.8 GB
    of memory traffic per step at MT3's size (docs/decoding_speed.md).
    """

    num_heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    dropout_rate: float = 0.0
    is_cross_attention: bool = False
    kernel_init: Initializer = ATTENTION_KERNEL_INIT

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None = None, *, deterministic: bool = True,
                 decode: bool = False, max_decode_length: int | None = None) -> Array:
        heads = (self.num_heads, self.head_dim)
        depth_scaling = math.sqrt(self.head_dim)

        def query_init(*args):
            return self.kernel_init(*args) / depth_scaling

        dense = lambda name, init: DenseGeneral(heads, ("embed", "joined_kv"), dtype=self.dtype, kernel_init=init,
                                                name=name)
        query_BxQxHxD = dense("query", query_init)(inputs_q)
        query_BxQxHxD = nn.with_logical_constraint(query_BxQxHxD, ("batch", "length", "heads", "kv"))

        heads_first = False  # True: key/value below are [B, H, K, D] (the caches' layout)
        if decode and self.is_cross_attention:
            key_BxKxHxD, value_BxKxHxD = self._cached_cross_kv(dense, inputs_kv)
            heads_first = True
        else:
            key_BxKxHxD = dense("key", self.kernel_init)(inputs_kv)
            value_BxKxHxD = dense("value", self.kernel_init)(inputs_kv)
        key_BxKxHxD = nn.with_logical_constraint(key_BxKxHxD, ("batch", "length", "heads", "kv"))
        value_BxKxHxD = nn.with_logical_constraint(value_BxKxHxD, ("batch", "length", "heads", "kv"))

        if decode and not self.is_cross_attention:
            # K becomes the cache length T
            key_BxKxHxD, value_BxKxHxD, mask, heads_first = self._update_self_cache(key_BxKxHxD, value_BxKxHxD,
                                                                                    mask, max_decode_length)

        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out_BxQxHxD = dot_product_attention(query_BxQxHxD, key_BxKxHxD, value_BxKxHxD, mask,
                                            dropout_rate=self.dropout_rate, deterministic=deterministic,
                                            dropout_rng=dropout_rng, dtype=self.dtype, heads_first_kv=heads_first)
        out_BxQxE = DenseGeneral(inputs_q.shape[-1], ("joined_kv", "embed"), axis=(-2, -1), dtype=self.dtype,
                                 kernel_init=self.kernel_init, name="out")(out_BxQxHxD)
        return nn.with_logical_constraint(out_BxQxE, ("batch", "length", "embed"))

    def _cached_cross_kv(self, dense, inputs_kv_BxSxE: Array) -> tuple[Array, Array]:
        """Encoder keys/values [B, H, S, D], projected (and laid out heads-first) on the cache-creating call and
        read from the cache after."""
        if self.has_variable("cache", "cross_key"):
            return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")
        key_BxHxSxD = dense("key", self.kernel_init)(inputs_kv_BxSxE).transpose(0, 2, 1, 3)
        value_BxHxSxD = dense("value", self.kernel_init)(inputs_kv_BxSxE).transpose(0, 2, 1, 3)
        self.put_variable("cache", "cross_key", key_BxHxSxD)
        self.put_variable("cache", "cross_value", value_BxHxSxD)
        return key_BxHxSxD, value_BxHxSxD

    def _update_self_cache(self, key_Bx1xHxD: Array, value_Bx1xHxD: Array, mask: Array | None,
                           max_decode_length: int | None) -> tuple[Array, Array, Array | None, bool]:
        """Write this step's key/value at `cache_index`; return the whole cache [B, H, T, D], a mask that hides
        the slots not written yet and True (heads first). (On the cache-creating pass the inputs are [B, L, H, D]
        and pass through, with False.)"""
        batch = key_Bx1xHxD.shape[0]
        if not self.has_variable("cache", "cached_key"):
            if max_decode_length is None:
                raise ValueError("max_decode_length is required to create the decoder self-attention cache")
            shape_BxHxTxD = (batch, self.num_heads, max_decode_length, self.head_dim)
            self.variable("cache", "cached_key", jnp.zeros, shape_BxHxTxD, key_Bx1xHxD.dtype)
            self.variable("cache", "cached_value", jnp.zeros, shape_BxHxTxD, value_Bx1xHxD.dtype)
            self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
            return key_Bx1xHxD, value_Bx1xHxD, mask, False  # cache-creating pass: plain attention, nothing written
        if key_Bx1xHxD.shape[1] != 1:
            raise ValueError(f"cached decoding takes one token per call, got length {key_Bx1xHxD.shape[1]}")
        cache_key_BxHxTxD = self.variable("cache", "cached_key")
        cache_value_BxHxTxD = self.variable("cache", "cached_value")
        cache_index = self.variable("cache", "cache_index")
        index = cache_index.value
        cache_key_BxHxTxD.value = jax.lax.dynamic_update_slice(
            cache_key_BxHxTxD.value, key_Bx1xHxD.transpose(0, 2, 1, 3).astype(cache_key_BxHxTxD.value.dtype),
            (0, 0, index, 0))
        cache_value_BxHxTxD.value = jax.lax.dynamic_update_slice(
            cache_value_BxHxTxD.value, value_Bx1xHxD.transpose(0, 2, 1, 3).astype(cache_value_BxHxTxD.value.dtype),
            (0, 0, index, 0))
        cache_index.value = index + 1
        length = cache_key_BxHxTxD.value.shape[2]
        step_mask_1x1x1xT = (jnp.arange(length) <= index)[None, None, None, :]
        return (cache_key_BxHxTxD.value, cache_value_BxHxTxD.value, combine_masks(step_mask_1x1x1xT, mask), True)


class MlpBlock(nn.Module):
    """Gated-GELU MLP: (gelu(x W_0) * (x W_1)) -> dropout -> W_o. GELU is JAX's default tanh approximation."""

    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x_BxLxE: Array, *, deterministic: bool = True) -> Array:
        emb_dim = x_BxLxE.shape[-1]
        gate_BxLxM = DenseGeneral(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="wi_0")(x_BxLxE)
        linear_BxLxM = DenseGeneral(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="wi_1")(x_BxLxE)
        h_BxLxM = jax.nn.gelu(gate_BxLxM, approximate=True) * linear_BxLxM
        h_BxLxM = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h_BxLxM, deterministic=deterministic)
        h_BxLxM = nn.with_logical_constraint(h_BxLxM, ("batch", "length", "mlp"))
        out_BxLxE = DenseGeneral(emb_dim, ("mlp", "embed"), dtype=self.dtype, name="wo")(h_BxLxM)
        return nn.with_logical_constraint(out_BxLxE, ("batch", "length", "embed"))


# Logical names of the conv frontend's kernel dimensions: small, never sharded (no rule maps them, so replicated).
CONV_KERNEL_AXES = ("conv_time", "conv_freq", "conv_in", "conv_out")


class ConvFrontend(nn.Module):
    """A pitch prior before the encoder's projection: two small 2-D convolutions over (time, frequency) of the log-mel.

    [B, L, F] -> conv 3x7 (time x frequency), 1 -> `channels`, GELU -> max-pool frequency by `freq_pool` -> conv 3x5,
    `channels` -> `channels`, GELU -> [B, L, F / freq_pool * channels]. Why: frequency-local kernels shared across the
    spectrum see a partial and its neighbours the same way at every pitch (a harmonic pattern moves along the mel axis
    as pitch changes), which a dense projection has to learn separately for every bin. 3 frames of context in time
    each side pick up onsets. Cheap in parameters: 1,144 for the convolutions at 8 channels; the projection after it
    reads F / freq_pool * channels features (1,024 for MT3's 512 bins at pool 4 and 8 channels, twice MT3's).
    """

    channels: int = 8
    freq_pool: int = 4
    dtype: jnp.dtype = jnp.float32

    def _conv(self, x: Array, features: int, kernel: tuple[int, int], name: str) -> Array:
        shape = (*kernel, x.shape[-1], features)
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        w = self.param(f"{name}_kernel", nn.with_logical_partitioning(init, CONV_KERNEL_AXES), shape, jnp.float32)
        b = self.param(f"{name}_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                       (features,), jnp.float32)
        y = jax.lax.conv_general_dilated(jnp.asarray(x, self.dtype), jnp.asarray(w, self.dtype), (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.gelu(y + jnp.asarray(b, self.dtype), approximate=True)

    @nn.compact
    def __call__(self, x_BxLxF: Array) -> Array:
        batch, length, freq = x_BxLxF.shape
        if freq % self.freq_pool:
            raise ValueError(f"ConvFrontend: freq_pool {self.freq_pool} must divide the {freq} input bins")
        pooled = freq // self.freq_pool
        y_BxLxFxC = self._conv(x_BxLxF[..., None], self.channels, (3, 7), "conv_0")
        y_BxLxPxC = y_BxLxFxC.reshape(batch, length, pooled, self.freq_pool, self.channels).max(axis=3)  # P = F/pool
        y_BxLxPxC = self._conv(y_BxLxPxC, self.channels, (3, 5), "conv_1")
        return y_BxLxPxC.reshape(batch, length, pooled * self.channels)
