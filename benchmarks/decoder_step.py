"""Benchmark: one greedy decoder step of MT3's network (45.9M params) on the CPU, and where its time goes.

Times, at --batch rows and a --cache-len-slot self-attention cache (cross-attention over --frames encoder frames):

  step        `decoding._greedy_chunk` running --cache-len steps (every slot filled once, as the compacting decoder
              does between cache growths), per step
  dense       the step's weight matmuls alone (8 layers x self q/k/v/out, cross q/out, MLP wi_0/wi_1/wo, + logits)
  self-attn   attention of one query over the whole self cache, 8 layers (heads-first [B, H, T, D] layout)
  cross-attn  the same over the cross-attention keys/values [B, H, S, D], 8 layers

each in wall ms and CPU ms (process CPU time: all threads) per step, median of --repeats, the pieces alternated in one
process. It also prints the step's floor: bytes it must read (weights + caches, float32) and FLOPs, over the machine's
measured memory bandwidth (a numpy copy of 256 MB) and fp32 matmul rate. Random weights: the time of a step does not
depend on what the weights learned (the loop runs a fixed number of steps; EOS is never matched).

Usage: .venv/bin/python -m benchmarks.decoder_step [--batch 32] [--cache-len 256] [--frames 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

MT3 = dict(vocab_size=1536, emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024, num_encoder_layers=8,
           num_decoder_layers=8, dropout_rate=0.0, input_frontend="features", input_depth=512)


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median wall s, median CPU s) of fn() over `repeats` calls (after one warm-up call)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def floor(batch: int, cache_len: int, frames: int) -> dict:
    e, h, d, m, v, n = MT3["emb_dim"], MT3["num_heads"], MT3["head_dim"], MT3["mlp_dim"], MT3["vocab_size"], \
        MT3["num_decoder_layers"]
    hd = h * d
    weights = n * (4 * e * hd + 2 * e * hd + 3 * e * m) + e * v  # self qkv+out, cross q+out, MLP; logits
    kv = n * batch * h * d * 2  # keys + values per slot
    return {"weight_bytes": 4 * weights, "self_kv_bytes": 4 * kv * cache_len, "cross_kv_bytes": 4 * kv * frames,
            "flops": 2 * batch * weights + n * 2 * 2 * batch * hd * (cache_len + frames)}


def machine_rates() -> tuple[float, float]:
    """(bytes/s of a large numpy copy counting read + write, fp32 FLOP/s of a 1024^3 matmul), best of 3."""
    a = np.ones(64 << 20, np.float32)
    b = np.empty_like(a)
    x = np.ones((1024, 1024), np.float32)
    copy = min(timed(lambda: np.copyto(b, a), 1)[0] for _ in range(3))
    mm = min(timed(lambda: x @ x, 1)[0] for _ in range(3))
    return 2 * a.nbytes / copy, 2 * 1024 ** 3 / mm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cache-len", type=int, default=256)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    from flax.core import meta

    from mt3.models import decoding, layers, network

    config = network.T5Config(**MT3)
    module = network.Transformer(config)
    B, T, S = args.batch, args.cache_len, args.frames
    key = jax.random.PRNGKey(0)
    params = meta.unbox(jax.jit(lambda r: module.init(r, jnp.zeros((1, 8, 512)), jnp.zeros((1, 8), jnp.int32),
                                                      enable_dropout=False))(key)["params"])
    cache0 = decoding._encode_and_init_cache(module, params, jax.random.normal(key, (B, S, 512)), cache_len=T)

    def full_steps():
        cache = jax.tree.map(jnp.copy, cache0)
        out = decoding._greedy_chunk(module, params, cache, jnp.zeros((B,), jnp.int32), jnp.zeros((B, T), jnp.int32),
                                     jnp.zeros((B, T), jnp.float32), jnp.zeros((B,), bool), jnp.ones((B, 1536), bool),
                                     jnp.zeros((), jnp.int32), jnp.asarray(0, jnp.int32), eos_id=-1)
        jax.block_until_ready(out)

    dec = params["decoder"]
    names = [("self_attention", k) for k in ("query", "key", "value", "out")] + \
        [("encoder_decoder_attention", k) for k in ("query", "out")] + [("mlp", k) for k in ("wi_0", "wi_1", "wo")]

    @jax.jit
    def dense(xs):  # xs: {input width: [B, width]}; every kernel's matmul, as one step runs them
        outs = [xs[w.shape[0]] @ w for i in range(config.num_decoder_layers) for block, name in names
                for w in [dec[f"layers_{i}"][block][name]["kernel"]]]
        return outs + [xs[512] @ dec["logits_dense"]["kernel"]]

    def attention(kind):
        kvs = [(cache0["decoder"][f"layers_{i}"][kind]["cached_key" if kind == "self_attention" else "cross_key"],
                cache0["decoder"][f"layers_{i}"][kind]["cached_value" if kind == "self_attention" else "cross_value"])
               for i in range(config.num_decoder_layers)]

        @jax.jit
        def run(q_Bx1xHxD):
            for k, v in kvs:
                q_Bx1xHxD = q_Bx1xHxD + layers.dot_product_attention(
                    q_Bx1xHxD, k, v, None, dropout_rate=0.0, deterministic=True, dropout_rng=None,
                    dtype=jnp.float32, heads_first_kv=True)
            return q_Bx1xHxD
        return run

    x = {w: jnp.ones((B, w), jnp.float32) for w in (384, 512, 1024)}
    q = jnp.ones((B, 1, 6, 64), jnp.float32)
    self_att, cross_att = attention("self_attention"), attention("encoder_decoder_attention")
    pieces = {"step": (full_steps, T),
              "dense": (lambda: jax.block_until_ready(dense(x)), 1),
              "self-attn": (lambda: jax.block_until_ready(self_att(q)), 1),
              "cross-attn": (lambda: jax.block_until_ready(cross_att(q)), 1)}
    results = {name: [] for name in pieces}
    for _ in range(args.repeats):  # alternate the pieces, so load changes hit all of them
        for name, (fn, steps) in pieces.items():
            wall, cpu = timed(fn, 1)
            results[name].append((wall / steps, cpu / steps))
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    bw, flops = machine_rates()
    fl = floor(B, T, S)
    print(f"\nMT3-size decoder step, batch {B}, self cache {T} slots, {S} encoder frames; load average {load}\n")
    print(f"{'piece':<12}{'wall ms':>10}{'CPU ms':>10}")
    for name, vals in results.items():
        print(f"{name:<12}{statistics.median(v[0] for v in vals) * 1e3:>10.1f}"
              f"{statistics.median(v[1] for v in vals) * 1e3:>10.1f}")
    total = fl["weight_bytes"] + fl["self_kv_bytes"] + fl["cross_kv_bytes"]
    print(f"\nfloor: weights {fl['weight_bytes'] / 1e6:.1f} MB + self K/V {fl['self_kv_bytes'] / 1e6:.1f} MB + cross "
          f"K/V {fl['cross_kv_bytes'] / 1e6:.1f} MB = {total / 1e6:.1f} MB read, {fl['flops'] / 1e9:.2f} GFLOP")
    print(f"machine: copy {bw / 1e9:.1f} GB/s, matmul {flops / 1e9:.1f} GFLOP/s -> memory floor "
          f"{total / bw * 1e3:.1f} ms, compute floor {fl['flops'] / flops * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
