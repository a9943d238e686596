"""Greedy decoding of many segments with continuous batching: a finished row's slot is refilled with the next segment.

Why: the compacting decoder (`decoding.greedy_decode_compacting`) decodes one batch at a time, so every batch ends in a
tail where a few long rows run alone: after half the rows finish the batch shrinks to 16, 8, ... 1 rows, and a
row-step at batch 4 costs ~5x one at batch 32 on a CPU (MT3's weight matmuls run at 36 GFLOP/s at M = 32, 19 at
M = 8; docs/decoding_speed.md). Here the batch stays full while segments remain: each row has its own position (its
own self-attention cache index), and whenever `refill_rows` rows are done their slots take the next segments, whose
cross-attention keys/values were encoded ahead in groups of `decoding.ENCODE_ROWS` (the group size whose encoder
output is bit-identical to a full batch's). Only the last segments of the whole job run in a shrinking tail.

Every row computes what `decoding.decode` computes for it -- the same greedy rule, its own positions, masked cache
slots adding exact zeros -- so the ids are token for token those of the per-batch loops (tests check it; the
benchmark `python -m benchmarks.inference --check-tokens` checks it on MT3's weights).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mt3.models import decoding

Array = jax.Array

# Rows that must be done before the loop leaves the compiled program to refill them: fewer means fuller batches but
# more host round trips (each ~1 ms plus a refill); 8 of 32 keeps >= 75 % of the rows live.
REFILL_ROWS = 8


def _leaf_name(path) -> str | None:
    return getattr(path[-1], "key", None)


def _with_positions(cache: Any, pos_B: Array) -> Any:
    """The cache with every self-attention layer's index set to the rows' own positions [B]."""
    return jax.tree_util.tree_map_with_path(lambda p, x: pos_B if _leaf_name(p) == "cache_index" else x, cache)


@functools.partial(jax.jit, static_argnames=("module", "eos_id"), donate_argnames=("cache", "out_BxT", "logp_BxT"))
def _refill_chunk(module, params: Any, cache: Any, token_B: Array, pos_B: Array, out_BxT: Array, logp_BxT: Array,
                  done_B: Array, allowed_BxV: Array, min_live: Array, *, eos_id: int):
    """Greedy steps, each row at its own position pos_B, until at most `min_live` rows are live, no row is live, or a
    live row has filled the cache (pos = T). Done rows (finished or empty slots) stay where they are and emit PAD."""
    batch, length = out_BxT.shape
    rows_B = jnp.arange(batch)
    encoded_Bx1xE = jnp.zeros((batch, 1, module.config.emb_dim), module.config.activation_dtype)

    def cond(carry):
        _, pos_B, _, _, done_B, _ = carry
        live_B = jnp.logical_not(done_B)
        live = jnp.sum(live_B)
        full = jnp.any(jnp.logical_and(live_B, pos_B >= length))
        return jnp.logical_and(jnp.logical_and(live > 0, live > min_live), jnp.logical_not(full))

    def body(carry):
        token_B, pos_B, out_BxT, logp_BxT, done_B, cache = carry
        logits_Bx1xV, variables = module.apply(
            {"params": params, "cache": _with_positions(cache, pos_B)}, encoded_Bx1xE, token_B[:, None],
            decoder_positions=pos_B[:, None], enable_dropout=False, decode=True, mutable=["cache"],
            method=module.decode)
        logits_BxV = jnp.where(allowed_BxV, logits_Bx1xV[:, 0], -jnp.inf)
        next_B = jnp.where(done_B, decoding.PAD_ID, jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32))
        logp_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
        logp_B = jnp.where(done_B, 0.0, jnp.take_along_axis(logp_BxV, next_B[:, None], axis=-1)[:, 0])
        out_BxT = out_BxT.at[rows_B, pos_B].set(jnp.where(done_B, out_BxT[rows_B, pos_B], next_B), mode="drop")
        logp_BxT = logp_BxT.at[rows_B, pos_B].set(jnp.where(done_B, logp_BxT[rows_B, pos_B], logp_B), mode="drop")
        pos_B = jnp.where(done_B, pos_B, pos_B + 1)
        return next_B, pos_B, out_BxT, logp_BxT, jnp.logical_or(done_B, next_B == eos_id), variables["cache"]

    return jax.lax.while_loop(cond, body, (token_B, pos_B, out_BxT, logp_BxT, done_B, _with_positions(cache, pos_B)))


def _path_key(path) -> str:
    return "/".join(str(_leaf_name((k,)) or k) for k in path)


@jax.jit
def _cross_rows(cache: Any) -> dict[str, Array]:
    """The cross-attention keys/values of a freshly encoded cache, by path (all a waiting segment needs)."""
    return {_path_key(p): x for p, x in jax.tree_util.tree_flatten_with_path(cache)[0]
            if _leaf_name(p) in ("cross_key", "cross_value")}


@functools.partial(jax.jit, donate_argnames=("cache", "out_BxT", "logp_BxT"))
def _refill(cache: Any, token_B: Array, pos_B: Array, out_BxT: Array, logp_BxT: Array, done_B: Array,
            allowed_BxV: Array, slots_R: Array, cross_R: dict, allowed_RxV: Array):
    """Slots `slots_R` start new segments: their cross-attention keys/values from `cross_R` (rows of `_cross_rows`),
    position 0, the start token, cleared outputs. Their old self-attention entries need no clearing: a row at
    position p writes slot p before attending to slots <= p, and later slots are masked."""
    def put(path, x):
        key = _path_key(path)
        return x.at[slots_R].set(cross_R[key], mode="drop") if key in cross_R else x

    cache = jax.tree_util.tree_map_with_path(put, cache)
    return (cache, token_B.at[slots_R].set(decoding.DECODER_START_ID, mode="drop"),
            pos_B.at[slots_R].set(0, mode="drop"), out_BxT.at[slots_R].set(0, mode="drop"),
            logp_BxT.at[slots_R].set(0.0, mode="drop"), done_B.at[slots_R].set(False, mode="drop"),
            allowed_BxV.at[slots_R].set(allowed_RxV, mode="drop"))


@functools.partial(jax.jit, static_argnames=("length",))
def _resize(cache: Any, out_BxT: Array, logp_BxT: Array, *, length: int) -> tuple[Any, Array, Array]:
    """Self-attention caches [B, H, T, D], `out_BxT` and `logp_BxT` cut or zero-padded along T to `length`."""
    def fit(x, axis=1):
        if x.shape[axis] >= length:
            return jax.lax.slice_in_dim(x, 0, length, axis=axis)
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return jnp.pad(x, widths)

    cache = jax.tree_util.tree_map_with_path(lambda p, x: fit(x, axis=2) if decoding._is_self_cache(p) else x, cache)
    return cache, fit(out_BxT), fit(logp_BxT)


def greedy_decode_continuous(module, params: Any, encoder_inputs: np.ndarray, *, batch_size: int,
                             max_decode_len: int, allowed: np.ndarray | None = None,
                             first_len: int = decoding.FIRST_CACHE_LEN, refill_rows: int = REFILL_ROWS,
                             eos_id: int = decoding.EOS_ID,
                             on_done: Callable[[np.ndarray], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy ids and their log-probabilities for N segments (`encoder_inputs` [N, frames, depth]), decoded
    `batch_size` rows at a time with continuous batching. Returns (ids int32 [N, max_decode_len], log-probs float32
    [N, max_decode_len]) -- the arrays `greedy_decode_compacting` gives, row for row. `allowed` (bool [N, vocab]) masks
    each segment's ids. `on_done(segment indices)` is called as segments finish (progress bars).
    Host-driven between compiled chunks, so call it outside `jit`."""
    total = encoder_inputs.shape[0]
    vocab = module.config.vocab_size
    group = decoding.ENCODE_ROWS
    if batch_size < group or batch_size % group:
        raise ValueError(f"continuous batching needs a batch size that is a multiple of {group}, got {batch_size}")
    if allowed is None:
        allowed = np.ones((total, vocab), bool)
    if allowed.shape != (total, vocab):
        raise ValueError(f"allowed must be bool [{total}, {vocab}], got {allowed.shape}")
    refill_rows = max(1, min(int(refill_rows), batch_size))
    result_NxT = np.zeros((total, max_decode_len), np.int32)
    result_logp_NxT = np.zeros((total, max_decode_len), np.float32)

    def encode(first: int, rows: int, cache_len: int):
        frames = np.asarray(encoder_inputs[first:first + rows], np.float32)
        if len(frames) < rows:  # the job's last group: silent filler rows, never decoded
            frames = np.concatenate([frames, np.zeros((rows - len(frames), *frames.shape[1:]), np.float32)])
        return decoding._encode_and_init_cache(module, params, jnp.asarray(frames), cache_len=cache_len)

    length = min(int(first_len), max_decode_len)
    start = min(batch_size, total)
    cache = encode(0, batch_size, length)
    slot_seg = np.full(batch_size, -1)  # the segment each slot decodes (-1: empty)
    slot_seg[:start] = np.arange(start)
    token_B = jnp.full((batch_size,), decoding.DECODER_START_ID, jnp.int32)
    pos_B = jnp.zeros((batch_size,), jnp.int32)
    cache = _with_positions(cache, pos_B)  # per-row cache indices from the start: one compiled chunk per shape
    out_BxT = jnp.zeros((batch_size, length), jnp.int32)
    logp_BxT = jnp.zeros((batch_size, length), jnp.float32)
    done_B = jnp.asarray(slot_seg < 0)
    allowed_BxV = jnp.asarray(np.concatenate([allowed[:start], np.ones((batch_size - start, vocab), bool)]))
    pool: list[tuple[int, dict]] = []  # encoded segments waiting for a slot: (segment, its cross K/V rows)
    next_seg = start
    while True:
        slots = len(slot_seg)
        waiting = next_seg < total or pool
        min_live = slots - refill_rows if waiting else (slots // 2 if slots > 1 else 0)
        token_B, pos_B, out_BxT, logp_BxT, done_B, cache = _refill_chunk(
            module, params, cache, token_B, pos_B, out_BxT, logp_BxT, done_B, allowed_BxV,
            jnp.asarray(max(min_live, 0), jnp.int32), eos_id=eos_id)
        pos_host, done_host = np.array(pos_B), np.asarray(done_B)
        # a row that filled max_decode_len without EOS is finished too (as in `decode`)
        done_host = done_host | (pos_host >= max_decode_len)
        finished = np.flatnonzero(done_host & (slot_seg >= 0))
        if len(finished):
            out_host, logp_host = np.asarray(out_BxT), np.asarray(logp_BxT)
            width = min(out_host.shape[1], max_decode_len)
            result_NxT[slot_seg[finished], :width] = out_host[finished, :width]
            result_logp_NxT[slot_seg[finished], :width] = logp_host[finished, :width]
            if on_done is not None:
                on_done(slot_seg[finished])
            slot_seg[finished] = -1
            if np.any(pos_host[finished] >= max_decode_len):  # cut at the limit, not done on the device yet
                done_B = jnp.asarray(slot_seg < 0)
        live = np.flatnonzero(slot_seg >= 0)
        if not len(live) and not waiting:
            return result_NxT, result_logp_NxT
        free = np.flatnonzero(slot_seg < 0)
        if waiting and len(free):
            while len(pool) < len(free) and next_seg < total:  # encode ahead, one bit-identical group at a time
                rows = _cross_rows(encode(next_seg, group, 1))
                pool += [(next_seg + i, {k: v[i] for k, v in rows.items()})
                         for i in range(min(group, total - next_seg))]
                next_seg += group
            take, pool = pool[:len(free)], pool[len(free):]
            slots_R = free[:len(take)]
            segs = np.array([s for s, _ in take])
            # padded to a power of two (few compiled shapes); padding rows name slot `slots`, out of range: dropped
            rows = decoding.next_power_of_two(len(take))
            fill = [take[-1][1]] * (rows - len(take))
            cross_R = {k: jnp.stack([c[k] for _, c in take] + [c[k] for c in fill]) for k in take[0][1]}
            slots_R_padded = np.concatenate([slots_R, np.full(rows - len(take), slots)]).astype(np.int32)
            allowed_R = allowed[np.concatenate([segs, np.full(rows - len(take), segs[-1])])]
            cache, token_B, pos_B, out_BxT, logp_BxT, done_B, allowed_BxV = _refill(
                cache, token_B, pos_B, out_BxT, logp_BxT, done_B, allowed_BxV, jnp.asarray(slots_R_padded),
                cross_R, jnp.asarray(allowed_R))
            slot_seg[slots_R] = segs
            pos_host[slots_R] = 0
        elif not waiting and len(live) <= (slots // 2 if slots > 1 else 0):
            # the job's tail: live rows gathered into the next power-of-two batch (`greedy_decode_compacting`'s rule)
            new_slots = decoding.next_power_of_two(len(live))
            keep = np.concatenate([live, free[:new_slots - len(live)]]).astype(np.int32)
            cache, token_B, pos_B, out_BxT, logp_BxT, done_B, allowed_BxV = decoding._take_rows(
                (cache, token_B, pos_B, out_BxT, logp_BxT, done_B, allowed_BxV), jnp.asarray(keep))
            slot_seg, pos_host = slot_seg[keep], pos_host[keep]
            slot_seg[len(live):] = -1
        # the cache holds the longest live row: grown when one fills it, cut when the long rows have gone
        live_pos = pos_host[slot_seg >= 0]
        needed = int(live_pos.max()) + 1 if len(live_pos) else 1
        new_length = min(int(first_len), max_decode_len)
        while new_length < needed and new_length < max_decode_len:
            new_length = min(2 * new_length, max_decode_len)
        if new_length != out_BxT.shape[1]:
            cache, out_BxT, logp_BxT = _resize(cache, out_BxT, logp_BxT, length=new_length)
