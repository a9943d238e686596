"""Autoregressive decoding for `network.Transformer`: greedy (MT3's default) or temperature / top-k sampling.

`decode` encodes once, builds the KV cache (decoder self-attention keys/values, and the encoder output projected to
cross-attention keys/values once), then feeds one token per step inside a single jitted `lax.while_loop` with static
shapes. The loop stops as soon as every row has emitted EOS, or at max_decode_len; after its EOS a row emits PAD.
`decode_uncached` recomputes the whole prefix every step: the reference for tests and the cache speed benchmark.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

PAD_ID = 0
EOS_ID = 1
DECODER_START_ID = 0  # MT3 starts decoding from id 0 (PAD) as BOS


def select_next(logits: Array, *, greedy: bool, temperature: Array | float, top_k: int, rng: Array) -> Array:
    """Next ids [B] from logits [B, V]: argmax when greedy, else a sample from softmax(logits / temperature),
    restricted to the top_k ids when top_k > 0."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def init_cache(module, params: Any, encoded: Array, max_decode_len: int) -> Any:
    """The 'cache' collection for `max_decode_len` steps: zero self-attention caches at index 0 and the encoder
    output projected to cross-attention keys/values (one cache-creating decoder pass on a dummy token)."""
    batch = encoded.shape[0]
    dummy = jnp.full((batch, 1), DECODER_START_ID, jnp.int32)
    _, variables = module.apply({"params": params}, encoded, dummy, decoder_positions=jnp.zeros((batch, 1), jnp.int32),
                                enable_dropout=False, decode=True, max_decode_length=max_decode_len,
                                mutable=["cache"], method=module.decode)
    return variables["cache"]


def _check_args(max_decode_len: int, temperature: float, top_k: int, rng: Array | None) -> None:
    if max_decode_len <= 0:
        raise ValueError(f"max_decode_len must be positive, got {max_decode_len}")
    if temperature < 0.0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if temperature > 0.0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs an rng")


def _decode_loop(step_logits: Callable[[Any, Array, Array, Array], tuple[Array, Any]], state: Any, batch: int,
                 max_decode_len: int, *, greedy: bool, temperature: Array, top_k: int, rng: Array,
                 eos_id: int) -> tuple[Array, Array]:
    """Shared while_loop: step_logits(state, step, token [B], out [B, T]) -> (logits [B, V], state).
    Returns (ids [B, T], number of decoder steps run)."""
    out = jnp.full((batch, max_decode_len), PAD_ID, jnp.int32)
    token = jnp.full((batch,), DECODER_START_ID, jnp.int32)
    done = jnp.zeros((batch,), bool)

    def cond(carry):
        step, _, _, done, _, _ = carry
        return jnp.logical_and(step < max_decode_len, jnp.logical_not(jnp.all(done)))

    def body(carry):
        step, token, out, done, state, rng = carry
        rng, step_rng = jax.random.split(rng)
        logits, state = step_logits(state, step, token, out)
        next_token = select_next(logits, greedy=greedy, temperature=temperature, top_k=top_k, rng=step_rng)
        next_token = jnp.where(done, PAD_ID, next_token)
        out = jax.lax.dynamic_update_slice(out, next_token[:, None], (0, step))
        done = jnp.logical_or(done, next_token == eos_id)
        return step + 1, next_token, out, done, state, rng

    carry = (jnp.zeros((), jnp.int32), token, out, done, state, rng)
    steps, _, out, _, _, _ = jax.lax.while_loop(cond, body, carry)
    return out, steps


@functools.partial(jax.jit, static_argnames=("module", "max_decode_len", "greedy", "top_k", "eos_id", "cached"))
def _decode_jit(module, params: Any, encoder_inputs: Array, temperature: Array, rng: Array, *, max_decode_len: int,
                greedy: bool, top_k: int, eos_id: int, cached: bool) -> tuple[Array, Array]:
    """One compiled program per (module, shapes, max_decode_len, greedy, top_k): the temperature is traced, so
    sweeping it does not recompile."""
    encoded = module.apply({"params": params}, encoder_inputs, enable_dropout=False, method=module.encode)
    batch = encoded.shape[0]

    def cached_step(cache, step, token, out):
        del out
        positions = jnp.full((batch, 1), step, jnp.int32)
        logits, variables = module.apply({"params": params, "cache": cache}, encoded, token[:, None],
                                         decoder_positions=positions, enable_dropout=False, decode=True,
                                         mutable=["cache"], method=module.decode)
        return logits[:, 0], variables["cache"]

    def uncached_step(state, step, token, out):
        del token
        inputs = jnp.concatenate([jnp.full((batch, 1), DECODER_START_ID, jnp.int32), out[:, :-1]], axis=1)
        logits = module.apply({"params": params}, encoded, inputs, enable_dropout=False, method=module.decode)
        return jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False), state

    if cached:
        step_fn, state = cached_step, init_cache(module, params, encoded, max_decode_len)
    else:
        step_fn, state = uncached_step, None
    return _decode_loop(step_fn, state, batch, max_decode_len, greedy=greedy, temperature=temperature, top_k=top_k,
                        rng=rng, eos_id=eos_id)


def _run(module, params, encoder_inputs, *, cached: bool, max_decode_len: int, temperature: float, top_k: int,
         rng: Array | None, eos_id: int, return_num_steps: bool):
    _check_args(max_decode_len, temperature, top_k, rng)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    out, steps = _decode_jit(module, params, encoder_inputs, jnp.asarray(temperature, jnp.float32), rng,
                             max_decode_len=max_decode_len, greedy=temperature == 0.0, top_k=top_k, eos_id=eos_id,
                             cached=cached)
    return (out, steps) if return_num_steps else out


def decode(module, params: Any, encoder_inputs: Array, *, max_decode_len: int, temperature: float = 0.0,
           top_k: int = 0, rng: Array | None = None, eos_id: int = EOS_ID, return_num_steps: bool = False):
    """KV-cached decoding -> int32 [B, max_decode_len] target ids (EOS included, PAD after it); with
    return_num_steps also the number of decoder steps run (< max_decode_len when every row stopped early).

    temperature and top_k are Python numbers (0 = greedy, MT3's default); sampling needs `rng`. Callable inside an
    outer `jit` (params, inputs and rng may be traced)."""
    return _run(module, params, encoder_inputs, cached=True, max_decode_len=max_decode_len, temperature=temperature,
                top_k=top_k, rng=rng, eos_id=eos_id, return_num_steps=return_num_steps)


def decode_uncached(module, params: Any, encoder_inputs: Array, *, max_decode_len: int, temperature: float = 0.0,
                    top_k: int = 0, rng: Array | None = None, eos_id: int = EOS_ID,
                    return_num_steps: bool = False):
    """Reference decoding without a KV cache: every step reruns the decoder on the whole (causally masked) prefix.
    Same outputs as `decode` (same rng stream), O(T^2) decoder work; for tests and the cache speed benchmark."""
    return _run(module, params, encoder_inputs, cached=False, max_decode_len=max_decode_len, temperature=temperature,
                top_k=top_k, rng=rng, eos_id=eos_id, return_num_steps=return_num_steps)
