"""Autoregressive decoding for `network.Transformer`: greedy (MT3's default) or temperature / top-k sampling.

`decode` encodes once, builds the KV cache (decoder self-attention keys/values, and the encoder output projected to
cross-attention keys/values once), then feeds one token per step inside a single jitted `lax.while_loop` with static
shapes. The loop stops as soon as every row has emitted EOS, or at max_decode_len; after its EOS a row emits PAD.
`decode_uncached` recomputes the whole prefix every step: the reference for tests and the cache speed benchmark.

Tensor names carry their shape (nanodo's habit): B batch rows, S encoder frames, E embedding features, T decoder
steps (max_decode_len, or the compacting loop's current cache length), V vocabulary ids.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

PAD_ID = 0
EOS_ID = 1
DECODER_START_ID = 0  # MT3 starts decoding from id 0 (PAD) as BOS


def select_next(logits_BxV: Array, *, greedy: bool, temperature: Array | float, top_k: int, rng: Array) -> Array:
    """Next ids [B] from logits [B, V]: argmax when greedy, else a sample from softmax(logits / temperature),
    restricted to the top_k ids when top_k > 0."""
    if greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV.astype(jnp.float32) / temperature
    if top_k > 0:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


def init_cache(module, params: Any, encoded_BxSxE: Array, max_decode_len: int) -> Any:
    """The 'cache' collection for `max_decode_len` steps: zero self-attention caches at index 0 and the encoder
    output projected to cross-attention keys/values (one cache-creating decoder pass on a dummy token)."""
    batch = encoded_BxSxE.shape[0]
    dummy_Bx1 = jnp.full((batch, 1), DECODER_START_ID, jnp.int32)
    _, variables = module.apply({"params": params}, encoded_BxSxE, dummy_Bx1,
                                decoder_positions=jnp.zeros((batch, 1), jnp.int32),
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
    out_BxT = jnp.full((batch, max_decode_len), PAD_ID, jnp.int32)
    token_B = jnp.full((batch,), DECODER_START_ID, jnp.int32)
    done_B = jnp.zeros((batch,), bool)

    def cond(carry):
        step, _, _, done_B, _, _ = carry
        return jnp.logical_and(step < max_decode_len, jnp.logical_not(jnp.all(done_B)))

    def body(carry):
        step, token_B, out_BxT, done_B, state, rng = carry
        rng, step_rng = jax.random.split(rng)
        logits_BxV, state = step_logits(state, step, token_B, out_BxT)
        next_B = select_next(logits_BxV, greedy=greedy, temperature=temperature, top_k=top_k, rng=step_rng)
        next_B = jnp.where(done_B, PAD_ID, next_B)
        out_BxT = jax.lax.dynamic_update_slice(out_BxT, next_B[:, None], (0, step))
        done_B = jnp.logical_or(done_B, next_B == eos_id)
        return step + 1, next_B, out_BxT, done_B, state, rng

    carry = (jnp.zeros((), jnp.int32), token_B, out_BxT, done_B, state, rng)
    steps, _, out_BxT, _, _, _ = jax.lax.while_loop(cond, body, carry)
    return out_BxT, steps


@functools.partial(jax.jit, static_argnames=("module", "max_decode_len", "greedy", "top_k", "eos_id", "cached"))
def _decode_jit(module, params: Any, encoder_inputs: Array, temperature: Array, rng: Array, *, max_decode_len: int,
                greedy: bool, top_k: int, eos_id: int, cached: bool) -> tuple[Array, Array]:
    """One compiled program per (module, shapes, max_decode_len, greedy, top_k): the temperature is traced, so
    sweeping it does not recompile."""
    encoded_BxSxE = module.apply({"params": params}, encoder_inputs, enable_dropout=False, method=module.encode)
    batch = encoded_BxSxE.shape[0]

    def cached_step(cache, step, token_B, out_BxT):
        del out_BxT
        positions_Bx1 = jnp.full((batch, 1), step, jnp.int32)
        logits_Bx1xV, variables = module.apply({"params": params, "cache": cache}, encoded_BxSxE, token_B[:, None],
                                               decoder_positions=positions_Bx1, enable_dropout=False, decode=True,
                                               mutable=["cache"], method=module.decode)
        return logits_Bx1xV[:, 0], variables["cache"]

    def uncached_step(state, step, token_B, out_BxT):
        del token_B
        start_Bx1 = jnp.full((batch, 1), DECODER_START_ID, jnp.int32)
        inputs_BxT = jnp.concatenate([start_Bx1, out_BxT[:, :-1]], axis=1)
        logits_BxTxV = module.apply({"params": params}, encoded_BxSxE, inputs_BxT, enable_dropout=False,
                                    method=module.decode)
        return jax.lax.dynamic_index_in_dim(logits_BxTxV, step, axis=1, keepdims=False), state

    if cached:
        step_fn, state = cached_step, init_cache(module, params, encoded_BxSxE, max_decode_len)
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


# ---------------------------------------------------------------------------------------------------------------------
# Greedy decoding that stops paying for finished rows and unused cache (`greedy_decode_compacting`).
#
# Why: profiling MT3's network on the CPU (docs/instrument_consistency.md, "Decoding speed") showed the per-step cost
# grows with the batch rows AND with the self-attention cache length, even for rows that already emitted EOS and for
# cache positions not written yet. `decode` keeps all B rows and a max_decode_len-long cache for every step, so a batch
# whose longest segment needs 130 tokens pays 130 steps x 32 rows x 1,024 cache positions. Here the loop leaves the
# compiled program whenever half the rows are done (they are then dropped: the live rows are gathered into the next
# power-of-two batch) or the cache is full (it is then doubled, up to max_decode_len). Shapes come from a small set
# (batch: powers of two; cache: first_len * 2^k), so each compiles once per process and is reused across batches.
# Every row computes what `decode` computes for it (same greedy rule, same positions, masked cache slots add exact
# zeros), which tests check token for token.

FIRST_CACHE_LEN = 128  # cache slots of the first chunk; MT3's segments mostly end within 64-256 tokens


def next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# Rows encoded at once when a batch's cache is built. Why: the encoder's activations for a whole batch are the
# largest buffer inference allocates (XLA's temp for MT3's encoder at batch 32: 269 MB, beside a 302 MB cache), and
# every row is encoded independently, so groups of 16 rows (one `lax.map` step each) need half that buffer at the
# same speed. 16, not fewer: on XLA:CPU MT3's encoder gave bit-identical rows at batch 16 and 32 but not at 8
# (cross K/V off by up to 7e-5; measured on 32 segments of a render, cause not traced), and greedy tokens must not
# change (docs/decoding_speed.md, "Peak memory").
ENCODE_ROWS = 16


@functools.partial(jax.jit, static_argnames=("module", "cache_len"))
def _encode_and_init_cache(module, params: Any, encoder_inputs: Array, *, cache_len: int) -> Any:
    def encode_rows(inputs):
        encoded_BxSxE = module.apply({"params": params}, inputs, enable_dropout=False, method=module.encode)
        return init_cache(module, params, encoded_BxSxE, cache_len)

    batch = encoder_inputs.shape[0]
    if batch <= ENCODE_ROWS or batch % ENCODE_ROWS:
        return encode_rows(encoder_inputs)
    groups = encoder_inputs.reshape(batch // ENCODE_ROWS, ENCODE_ROWS, *encoder_inputs.shape[1:])
    cache_G = jax.lax.map(encode_rows, groups)  # every leaf gains a leading group axis
    # batched leaves [G, rows, ...] -> [B, ...]; the scalar cache index (equal in every group) -> one scalar
    return jax.tree.map(lambda x: x[0] if x.ndim == 1 else x.reshape(batch, *x.shape[2:]), cache_G)


@functools.partial(jax.jit, static_argnames=("module", "eos_id", "step_mask"),
                   donate_argnames=("cache", "out_BxT", "logp_BxT"))
def _greedy_chunk(module, params: Any, cache: Any, token_B: Array, out_BxT: Array, logp_BxT: Array, done_B: Array,
                  allowed_BxV: Array, step: Array, min_live: Array, mask_state: Any = (), *, eos_id: int,
                  step_mask: Any = None):
    """Greedy steps until every row is done, the cache (= out's length T) is full, or at most `min_live` rows are
    still running. `allowed_BxV` masks ids a row may emit (all True: plain greedy). `logp_BxT` receives each chosen
    id's log-probability under the (masked) softmax: read off the logits the argmax already has, so the ids are
    exactly those of a loop without it. `step_mask` (e.g. `event_mask.NoteStateMask`; None: none) adds a mask that
    follows the emitted ids: `step_mask.apply(mask_state, logits)` before each argmax, `step_mask.update` after it."""
    batch, length = out_BxT.shape
    # cross-attention keys/values live in the cache, so the decoder never reads the encoder output again
    encoded_Bx1xE = jnp.zeros((batch, 1, module.config.emb_dim), module.config.activation_dtype)

    def cond(carry):
        step, _, _, _, done_B, _, _ = carry
        live = jnp.sum(jnp.logical_not(done_B))
        return jnp.logical_and(step < length, jnp.logical_and(live > 0, live > min_live))

    def body(carry):
        step, token_B, out_BxT, logp_BxT, done_B, cache, mask_state = carry
        logits_Bx1xV, variables = module.apply({"params": params, "cache": cache}, encoded_Bx1xE, token_B[:, None],
                                               decoder_positions=jnp.full((batch, 1), step, jnp.int32),
                                               enable_dropout=False, decode=True, mutable=["cache"],
                                               method=module.decode)
        logits_BxV = jnp.where(allowed_BxV, logits_Bx1xV[:, 0], -jnp.inf)
        if step_mask is not None:
            logits_BxV = step_mask.apply(mask_state, logits_BxV)
        next_B = jnp.where(done_B, PAD_ID, jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32))
        out_BxT = jax.lax.dynamic_update_slice(out_BxT, next_B[:, None], (0, step))
        logp_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
        logp_B = jnp.where(done_B, 0.0, jnp.take_along_axis(logp_BxV, next_B[:, None], axis=-1)[:, 0])
        logp_BxT = jax.lax.dynamic_update_slice(logp_BxT, logp_B[:, None], (0, step))
        mask_state = mask_state if step_mask is None else step_mask.update(mask_state, next_B)
        return (step + 1, next_B, out_BxT, logp_BxT, jnp.logical_or(done_B, next_B == eos_id), variables["cache"],
                mask_state)

    return jax.lax.while_loop(cond, body, (step, token_B, out_BxT, logp_BxT, done_B, cache, mask_state))


def _is_self_cache(path) -> bool:
    return getattr(path[-1], "key", None) in ("cached_key", "cached_value")


@functools.partial(jax.jit, static_argnames=("length",))
def _grow(cache: Any, out_BxT: Array, logp_BxT: Array, *, length: int) -> tuple[Any, Array, Array]:
    """Self-attention caches [B, H, T, D], `out_BxT` and `logp_BxT` padded with zeros (never attended: masked by the
    cache index) along T to `length`."""
    def pad(x, axis=1):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return jnp.pad(x, widths)

    cache = jax.tree_util.tree_map_with_path(lambda p, x: pad(x, axis=2) if _is_self_cache(p) else x, cache)
    return cache, pad(out_BxT), pad(logp_BxT)


@jax.jit
def _take_rows(tree: Any, rows: Array) -> Any:
    """Rows `rows` of every batched leaf (the shared scalar cache index stays)."""
    return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.take(x, rows, axis=0), tree)


def greedy_decode_compacting(module, params: Any, encoder_inputs: Array, *, max_decode_len: int,
                             allowed: Array | None = None, first_len: int = FIRST_CACHE_LEN,
                             eos_id: int = EOS_ID, return_log_probs: bool = False, step_mask: Any = None):
    """Greedy decoding, token for token `decode`'s, that drops finished rows and grows the KV cache on demand.

    Returns (ids int32 numpy [B, max_decode_len], decoder steps run), and with `return_log_probs` also float32
    [B, max_decode_len]: each chosen id's log-probability (0 after EOS) -- what per-note confidence is built from
    (`mt3.note_confidence`). `allowed` (bool [B, vocab_size]) restricts
    what each row may emit (a decoder logit mask; `mt3.program_consistency` builds it); None allows everything.
    `step_mask` (`mt3.models.event_mask.NoteStateMask`; None: off) also masks by the note state each row's own
    ids have built. Host-driven between compiled chunks, so call it outside `jit`.
    """
    _check_args(max_decode_len, 0.0, 0, None)
    batch = encoder_inputs.shape[0]
    vocab = module.config.vocab_size
    allowed_BxV = jnp.ones((batch, vocab), bool) if allowed is None else jnp.asarray(allowed, bool)
    if allowed_BxV.shape != (batch, vocab):
        raise ValueError(f"allowed must be bool [{batch}, {vocab}], got {allowed_BxV.shape}")
    length = min(int(first_len), max_decode_len)
    cache = _encode_and_init_cache(module, params, encoder_inputs, cache_len=length)
    # From here B is the number of slots in the current chunk (a power of two after the first compaction).
    result_BxT = np.zeros((batch, max_decode_len), np.int32)  # original rows, full length
    result_logp_BxT = np.zeros((batch, max_decode_len), np.float32)
    rows_B = np.arange(batch)  # original row of each live slot (-1: a finished filler)
    token_B = jnp.full((batch,), DECODER_START_ID, jnp.int32)
    out_BxT = jnp.zeros((batch, length), jnp.int32)
    logp_BxT = jnp.zeros((batch, length), jnp.float32)
    done_B = jnp.zeros((batch,), bool)
    step = jnp.zeros((), jnp.int32)
    mask_state = () if step_mask is None else step_mask.init(batch)
    while True:
        slots = len(rows_B)
        min_live = slots // 2 if slots > 1 else 0
        step, token_B, out_BxT, logp_BxT, done_B, cache, mask_state = _greedy_chunk(
            module, params, cache, token_B, out_BxT, logp_BxT, done_B, allowed_BxV, step,
            jnp.asarray(min_live, jnp.int32), mask_state, eos_id=eos_id, step_mask=step_mask)
        steps_run, done_host_B = int(step), np.asarray(done_B)
        live = np.flatnonzero(~done_host_B & (rows_B >= 0))
        if len(live) == 0 or steps_run >= max_decode_len:
            real_B = rows_B >= 0
            result_BxT[rows_B[real_B], :out_BxT.shape[1]] = np.asarray(out_BxT)[real_B]
            result_logp_BxT[rows_B[real_B], :out_BxT.shape[1]] = np.asarray(logp_BxT)[real_B]
            return (result_BxT, steps_run, result_logp_BxT) if return_log_probs else (result_BxT, steps_run)
        if steps_run == out_BxT.shape[1]:
            cache, out_BxT, logp_BxT = _grow(cache, out_BxT, logp_BxT, length=min(2 * out_BxT.shape[1],
                                                                                  max_decode_len))
        if len(live) <= min_live:
            finished = np.flatnonzero(done_host_B & (rows_B >= 0))
            result_BxT[rows_B[finished], :out_BxT.shape[1]] = np.asarray(out_BxT)[finished]
            result_logp_BxT[rows_B[finished], :out_BxT.shape[1]] = np.asarray(logp_BxT)[finished]
            new_slots = next_power_of_two(len(live))
            filler = np.flatnonzero(done_host_B)[: new_slots - len(live)]  # done rows only emit PAD
            keep = np.concatenate([live, filler]).astype(np.int32)
            cache, token_B, out_BxT, logp_BxT, done_B, allowed_BxV, mask_state = _take_rows(
                (cache, token_B, out_BxT, logp_BxT, done_B, allowed_BxV, mask_state), jnp.asarray(keep))
            rows_B = np.concatenate([rows_B[live], np.full(len(filler), -1)])
