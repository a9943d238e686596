"""Benchmark: MT3's weight matmuls in XLA:CPU beside ONNX Runtime (issue 29: "if XLA:CPU cannot get near the floor,
measure an alternative runtime a user could install from PyPI").

What it times: the dense work of MT3's network as one chain of float32 matmuls with MT3's shapes (emb 512, 6 heads x
64, gated MLP 1024, 8 layers, vocab 1536): per layer the self-attention q/k/v/out, cross-attention q/out and MLP
wi_0/wi_1/wo projections (residual adds and the gating product keep the chain honest), then the logits. With
`--rows 32` that is one decoder step at batch 32 (1.46 GFLOP, `benchmarks.decoder_step`'s `dense` piece); with
`--rows 4096` it is the shape of the encoder's matmuls for 16 segments of 256 frames (without attention, norms, the
logits' vocabulary size aside). Attention, the KV caches and the loop are not in it: this measures only whether
another runtime's matmul kernels are faster on this CPU.

Each runtime prints one line: median wall ms and CPU ms per chain (process CPU time, all threads), GFLOP per wall
second and per CPU second, and the largest error relative to a float64 NumPy chain. ONNX Runtime is pinned in
requirements.txt since `decoder_runtime = 'onnxruntime'` (this measurement is why); the script imports JAX only for
`--runtime xla`, so its ORT side also runs where only onnxruntime, onnx and numpy are installed.

Usage: python -m benchmarks.matmul_runtimes --runtime xla|ort [--rows 32] [--threads N] [--seconds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

LAYERS = 8
# (name, in, out) of one layer's projections, as in MT3's T5 layers
PROJECTIONS = (("q", 512, 384), ("k", 512, 384), ("v", 512, 384), ("out", 384, 512), ("cross_q", 512, 384),
               ("cross_out", 384, 512), ("wi_0", 512, 1024), ("wi_1", 512, 1024), ("wo", 1024, 512))
VOCAB = 1536


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights, scaled so that the chain's activations stay O(1) over 8 residual layers."""
    rng = np.random.default_rng(seed)
    out = {f"{name}{layer}": (0.3 * rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
           for layer in range(LAYERS) for name, n_in, n_out in PROJECTIONS}
    out["logits"] = (rng.normal(size=(512, VOCAB)) / np.sqrt(512)).astype(np.float32)
    return out


def chain(w: dict, x, matmul=lambda a, b: a @ b):
    """The chain in any array library (NumPy, jax.numpy): the definition every runtime reproduces."""
    for layer in range(LAYERS):
        p = {name: w[f"{name}{layer}"] for name, _, _ in PROJECTIONS}
        x = x + matmul(matmul(x, p["q"]) + matmul(x, p["k"]) + matmul(x, p["v"]), p["out"])
        x = x + matmul(matmul(x, p["cross_q"]), p["cross_out"])
        x = x + matmul(matmul(x, p["wi_0"]) * matmul(x, p["wi_1"]), p["wo"])
    return matmul(x, w["logits"])


def flops(rows: int) -> int:
    return 2 * rows * (LAYERS * sum(n_in * n_out for _, n_in, n_out in PROJECTIONS) + 512 * VOCAB)


def xla_runner(w: dict, x: np.ndarray, threads: int):
    if threads:
        raise SystemExit("--threads: XLA:CPU takes its thread count from the machine (taskset to limit it)")
    import jax
    import jax.numpy as jnp

    wj = {k: jnp.asarray(v) for k, v in w.items()}
    xj = jnp.asarray(x)
    fn = jax.jit(chain)
    return lambda: np.asarray(fn(wj, xj).block_until_ready())


def ort_runner(w: dict, x: np.ndarray, threads: int):
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise SystemExit("ONNX Runtime is not installed here: pip install -r requirements.txt (or onnxruntime "
                         "onnx numpy)") from None
    nodes, counter = [], [0]

    def node(op: str, *inputs: str) -> str:
        counter[0] += 1
        out = f"t{counter[0]}"
        nodes.append(helper.make_node(op, list(inputs), [out]))
        return out

    class Name(str):  # lets `chain` build the graph: a @ b -> MatMul, a + b -> Add, a * b -> Mul
        def __add__(self, other):
            return Name(node("Add", self, other))

        def __mul__(self, other):
            return Name(node("Mul", self, other))

    y = chain({k: Name(k) for k in w}, Name("x"), matmul=lambda a, b: Name(node("MatMul", a, b)))
    graph = helper.make_graph(
        nodes, "mt3_matmul_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [x.shape[0], VOCAB])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=("xla", "ort"), required=True)
    parser.add_argument("--rows", type=int, default=32, help="matmul rows M (decoder batch; 4096: encoder, 16 x 256)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent repeating the chain")
    args = parser.parse_args(argv)
    w = weights()
    x = np.random.default_rng(1).normal(size=(args.rows, 512)).astype(np.float32)
    run = (xla_runner if args.runtime == "xla" else ort_runner)(w, x, args.threads)
    got = run()
    run()
    walls, cpus = [], []
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline or len(walls) < 5:
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    reference = chain({k: v.astype(np.float64) for k, v in w.items()}, x.astype(np.float64))
    error = float(np.abs(got - reference).max() / np.abs(reference).max())
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    threads = args.threads or "default"
    print(f"{args.runtime} rows={args.rows} threads={threads}: {wall * 1e3:.2f} ms wall, {cpu * 1e3:.2f} ms CPU, "
          f"{flops(args.rows) / wall / 1e9:.1f} GFLOP/s wall, {flops(args.rows) / max(cpu, 1e-9) / 1e9:.1f} GFLOP "
          f"per CPU-s, max relative error {error:.1e} ({len(walls)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
