"""Train-step benchmark: steps/s, examples/s, FLOPs per step, achieved FLOP/s and MFU against a measured matmul peak.

    .venv/bin/python benchmarks/train_step.py --gin_file=gin/train.gin --gin_file=model_small.gin \
        --batch_size 4 --steps 5 [--gin.ACTIVATION_DTYPE="'bfloat16'"] [--json out.json]

The model, optimizer and mesh come from the gin files exactly as `mt3 train` builds them; batches are synthetic (the
contract's features and shapes), placed on the devices once, so the number is the step itself, not the input pipeline.
Model FLOPs are counted from the config (matmuls only: 2*m*n*k forward, x3 for forward + backward, as MFU is
usually defined); XLA's own count for the compiled step (`compiled.cost_analysis()`) is reported beside it. The peak
is measured in the same run on the same devices: the best time of a large square `jnp.dot` in the activation dtype.
No TensorFlow is imported, so this runs on GPU hosts as is.
"""

from __future__ import annotations

import os
import sys

# Scripts in benchmarks/ put this folder first on sys.path, where a sibling benchmark (tokenize.py) would shadow the
# standard library's `tokenize` module that numpy and gin import.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def model_flops_per_example(config, input_length: int, target_length: int) -> float:
    """Training FLOPs of one example from the T5Config: matmuls only, forward x3 (forward + backward)."""
    e, inner, m, v = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim, config.vocab_size
    L, T = input_length, target_length  # noqa: N806 (sequence lengths, as in the papers)
    mm = lambda rows, k, n: 2.0 * rows * k * n
    encoder_layer = mm(L, e, 4 * inner) + 2 * mm(L, inner, L) + mm(L, e, 3 * m)
    decoder_layer = (mm(T, e, 4 * inner) + 2 * mm(T, inner, T)  # self-attention
                     + mm(T, e, 2 * inner) + mm(L, e, 2 * inner) + 2 * mm(T, inner, L)  # cross-attention
                     + mm(T, e, 3 * m))
    forward = (mm(L, config.input_depth, e) + config.num_encoder_layers * encoder_layer
               + config.num_decoder_layers * decoder_layer + mm(T, e, v))
    return 3.0 * forward


def measure_peak_flops(dtype, size: int, repeats: int = 5) -> float:
    """Best FLOP/s of a size x size x size matmul on the default device, in `dtype`."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32).astype(dtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=dtype))
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def xla_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


def run(args, gin_bindings: list[str]) -> dict:
    from mt3 import gin_utils
    from mt3.training import input_pipeline, train

    gin_utils.parse_gin_flags(args.gin_file, gin_bindings, model_dir=tempfile.mkdtemp(prefix="mt3_bench_"))
    import gin
    import jax

    from mt3.training import partitioning, trainer

    model = gin.get_configurable("models.ContinuousInputsEncoderDecoderModel")()
    config = model.config
    lengths = gin_utils.query_macro("TASK_FEATURE_LENGTHS", {"inputs": 256, "targets": 1024})
    batch_size = args.batch_size or gin_utils.query_macro("BATCH_SIZE", 8)
    partitioner = partitioning.Partitioner(gin.get_configurable("partitioning.PartitionConfig")())
    tr = trainer.Trainer(model, gin.get_configurable("trainer.OptimizerConfig")(), partitioner,
                         num_microbatches=gin_utils.query_macro("NUM_MICROBATCHES", 1))
    data_cfg = train.DatasetConfig(task_feature_lengths=lengths, batch_size=batch_size, source="synthetic")
    host_batch = next(input_pipeline.synthetic_batches(
        data_cfg, host_batch_size=partitioner.host_batch_size(batch_size), shard_id=partitioner.data_layout()[0],
        vocab_size=config.vocab_size, input_depth=config.encoder_input_depth))
    batch = partitioner.make_global_batch(host_batch, batch_size)
    state = tr.init_state(seed=0)

    start = time.perf_counter()
    compiled = tr.lower_train_step(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    for _ in range(args.warmup):
        state, metrics = tr.train_step(state, batch)
    jax.block_until_ready(state)
    dtype = config.activation_dtype
    peak_before = measure_peak_flops(dtype, args.peak_size)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = tr.train_step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    step_seconds = float(np.median(times))

    # The peak is measured right before and right after the timed steps; the higher one is used (conservative MFU
    # when other work shares the machine).
    peak_per_device = max(peak_before, measure_peak_flops(dtype, args.peak_size))
    num_devices = jax.device_count()
    model_flops = model_flops_per_example(config, lengths["inputs"], lengths["targets"]) * batch_size
    achieved = model_flops / step_seconds
    xla = xla_flops(compiled)
    return {
        "device": f"{num_devices} x {jax.devices()[0].device_kind}", "platform": jax.devices()[0].platform,
        "dtype": str(np.dtype(dtype)), "params": trainer.count_params(state.params), "batch_size": batch_size,
        "lengths": dict(lengths), "mesh": dict(partitioner.mesh.shape), "compile_seconds": round(compile_seconds, 2),
        "step_seconds": step_seconds, "steps_per_sec": 1.0 / step_seconds,
        "examples_per_sec": batch_size / step_seconds,
        "model_flops_per_step": model_flops, "xla_flops_per_step": xla,
        "achieved_model_flops_per_sec": achieved,
        "measured_peak_flops_per_sec": peak_per_device * num_devices, "peak_matmul_size": args.peak_size,
        "mfu": achieved / (peak_per_device * num_devices),
        "xla_flops_utilization": (xla / step_seconds) / (peak_per_device * num_devices) if xla else None,
        "loss": float(metrics["loss"]),
    }


def main(argv: list[str] | None = None) -> int:
    from mt3.cli import split_gin_bindings

    argv, gin_bindings = split_gin_bindings(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gin_file", action="append", default=[], help="gin files (as `mt3 train`)")
    parser.add_argument("--batch_size", type=int, default=None, help="global batch (default: BATCH_SIZE from gin)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--peak_size", type=int, default=2048, help="matmul size for the measured peak (GPU: 8192)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if not args.gin_file:
        args.gin_file = ["gin/train.gin"]
    result = run(args, gin_bindings)
    print(json.dumps(result, indent=2))
    print(f"{result['device']} {result['dtype']}: {result['steps_per_sec']:.3f} steps/s, "
          f"{result['examples_per_sec']:.2f} examples/s, {result['achieved_model_flops_per_sec'] / 1e9:.1f} GFLOP/s "
          f"model, peak {result['measured_peak_flops_per_sec'] / 1e9:.1f} GFLOP/s -> MFU {100 * result['mfu']:.1f}%")
    if args.json:
        from mt3.data.records import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
