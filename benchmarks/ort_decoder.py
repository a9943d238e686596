"""Benchmark: MT3's greedy decoder step in XLA:CPU beside ONNX Runtime (`mt3.models.ort_decoder`, issue 29).

Step mode (default): MT3's shape with random weights (`benchmarks.decoder_step.MT3`), --batch rows, a --cache-len
slot self-attention cache and --frames encoder frames. Each side runs --steps greedy steps ending at the last cache
slot (a step's cost does not depend on which slot it writes: both attend over all T slots, masked) with the same
per-step work: the step, the argmax and the chosen id's log-probability. XLA is `decoding._greedy_chunk` (as
`benchmarks.decoder_step` times it); ORT is `OrtDecoder`'s host loop. Prints wall ms and CPU ms (process time, all
threads) per step, median of --repeats, the two sides alternated so load changes hit both, and the largest logit
difference of one step.

Checkpoint mode (--checkpoint DIR --audio FILE): decodes the first --segments segments of the file with both greedy
compacting decoders (the model's max_decode_len), twice each (the first run includes JAX's tracing and compiling of
the decoder, or ORT's session build; the encoder both share is compiled and run once before), and prints whether the
tokens are equal and the CPU seconds of each run (encoding included).

Usage:
  .venv/bin/python -m benchmarks.ort_decoder [--batch 32] [--cache-len 256] [--frames 256] [--steps 32] [--repeats 5]
                                             [--threads 1]
  .venv/bin/python -m benchmarks.ort_decoder --checkpoint mt3/pretrained/local_cpu --audio song.wav [--segments 32]
Writes no files.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.decoder_step import MT3


def timed(prepare, run) -> tuple[float, float]:
    """(wall s, CPU s) of one run(prepare()) call, not counting prepare (fresh copies of the caches)."""
    state = prepare()
    wall, cpu = time.perf_counter(), time.process_time()
    run(state)
    return time.perf_counter() - wall, time.process_time() - cpu


def step_benchmark(args) -> None:
    import jax
    import jax.numpy as jnp
    from flax.core import meta

    from mt3.models import decoding, network, ort_decoder

    config = network.T5Config(**MT3)
    module = network.Transformer(config)
    B, T, S, V, n = args.batch, args.cache_len, args.frames, config.vocab_size, args.steps
    key = jax.random.PRNGKey(0)
    params = meta.unbox(jax.jit(lambda r: module.init(r, jnp.zeros((1, 8, 512)), jnp.zeros((1, 8), jnp.int32),
                                                      enable_dropout=False))(key)["params"])
    cache0 = decoding._encode_and_init_cache(module, params, jax.random.normal(key, (B, S, 512)), cache_len=T)
    allowed = np.ones((B, V), bool)
    ort_dec = ort_decoder.OrtDecoder(module, params, threads=args.threads)
    rows0 = ort_decoder._initial_rows(cache0, config.num_decoder_layers, allowed, T)

    def xla_copy():
        return jax.block_until_ready(jax.tree.map(jnp.copy, cache0))

    def xla_steps(cache):
        out = decoding._greedy_chunk(module, params, cache, jnp.zeros((B,), jnp.int32), jnp.zeros((B, T), jnp.int32),
                                     jnp.zeros((B, T), jnp.float32), jnp.zeros((B,), bool), jnp.asarray(allowed),
                                     jnp.asarray(T - n, jnp.int32), jnp.asarray(0, jnp.int32), eos_id=-1)
        jax.block_until_ready(out)

    def ort_copy():
        return ort_decoder._map_rows(rows0, lambda x: x.copy())

    def ort_steps(rows):
        ort_dec._run_chunk(rows, T - n, 0, eos_id=-1)

    sides = {"xla": (xla_copy, xla_steps), "ort": (ort_copy, ort_steps)}
    results = {name: [] for name in sides}
    for prepare, run in sides.values():  # warm-up: compile, first session run
        timed(prepare, run)
    for _ in range(args.repeats):
        for name, (prepare, run) in sides.items():
            results[name].append(timed(prepare, run))
    rows = ort_decoder._map_rows(rows0, lambda x: x.copy())
    got = ort_dec.step_logits(rows, 0)
    want, _ = module.apply({"params": params, "cache": cache0}, jnp.zeros((B, 1, config.emb_dim)),
                           jnp.zeros((B, 1), jnp.int32), decoder_positions=jnp.zeros((B, 1), jnp.int32),
                           enable_dropout=False, decode=True, mutable=["cache"], method=module.decode)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"\nMT3-size greedy decoder step, batch {B}, self cache {T} slots, {S} encoder frames, {n} steps x "
          f"{args.repeats} repeats; ORT intra-op threads {args.threads}; load average {load}\n")
    print(f"{'runtime':<10}{'wall ms':>10}{'CPU ms':>10}")
    for name, vals in results.items():
        print(f"{name:<10}{statistics.median(v[0] for v in vals) / n * 1e3:>10.2f}"
              f"{statistics.median(v[1] for v in vals) / n * 1e3:>10.2f}")
    err = np.abs(got - np.asarray(want[:, 0])).max()
    print(f"\nstep-0 logits: max |ORT - Flax| {err:.2e} (logits up to {np.abs(got).max():.2f})")


def checkpoint_benchmark(args) -> None:
    import jax

    from mt3 import audio, model_loading
    from mt3.models import decoding, ort_decoder

    im = model_loading.load_inference_model(args.checkpoint)
    frames = im.segment_audio(audio.load_audio(args.audio, allow_silence=True)).frames[: args.segments]
    module, params, max_len = im.model.module, im.params, im.config.max_decode_len
    print(f"{len(frames)} segments of {args.audio}, model {args.checkpoint} (emb {module.config.emb_dim}, "
          f"{module.config.num_decoder_layers} decoder layers), max_decode_len {max_len}")
    built: list = []  # the ORT session is built on the first run (counted in it), reused by the second

    def ort() -> ort_decoder.OrtDecoder:
        if not built:
            built.append(ort_decoder.OrtDecoder(module, params, threads=args.threads))
        return built[0]

    runs = {"xla": lambda: decoding.greedy_decode_compacting(module, params, frames, max_decode_len=max_len,
                                                             return_log_probs=True),
            "ort": lambda: ort().greedy_decode_compacting(frames, max_decode_len=max_len, return_log_probs=True)}
    cpu = time.process_time()
    jax.block_until_ready(decoding._encode_and_init_cache(module, params, frames,
                                                          cache_len=min(decoding.FIRST_CACHE_LEN, max_len)))
    print(f"encoder + cross K/V, shared by both (traced and compiled here): {time.process_time() - cpu:.2f} CPU s")
    outputs = {}
    for attempt in ("first", "second"):
        for name, fn in runs.items():
            cpu = time.process_time()
            outputs[name] = fn()
            print(f"{name} {attempt} run: {time.process_time() - cpu:.2f} CPU s, {outputs[name][1]} steps")
    (ids_x, steps_x, logp_x), (ids_o, steps_o, logp_o) = outputs["xla"], outputs["ort"]
    equal = np.array_equal(ids_x, ids_o) and steps_x == steps_o
    print(f"tokens equal: {'yes' if equal else 'no'}; largest log-prob difference {np.abs(logp_x - logp_o).max():.1e}")
    if not equal and ids_x.shape == ids_o.shape:
        row, step = np.argwhere(ids_x != ids_o)[0]
        print(f"first difference: segment {row}, step {step}: xla {ids_x[row, step]} vs ort {ids_o[row, step]}")
    print(f"decoded ids: {int(np.count_nonzero(ids_x))} non-PAD over {len(frames)} segments "
          f"(PAD {decoding.PAD_ID})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cache-len", type=int, default=256)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--steps", type=int, default=32, help="steps per timed run (at most --cache-len)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--checkpoint", help="model dir or bundle: decode real segments with both decoders")
    parser.add_argument("--audio", help="audio file for --checkpoint")
    parser.add_argument("--segments", type=int, default=32)
    args = parser.parse_args()
    if args.checkpoint:
        if not args.audio:
            parser.error("--checkpoint needs --audio")
        checkpoint_benchmark(args)
    else:
        if not 0 < args.steps <= args.cache_len:
            parser.error("--steps must be in 1..--cache-len")
        step_benchmark(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
