"""Greedy compacting decoding with MT3's decoder step run by ONNX Runtime (opt-in; issue 29).

Why: at the decoder's small matmul row counts (batch 8..32) ONNX Runtime's CPU kernels spent 2.1-3x less CPU than
XLA:CPU on the same weight matmuls (`benchmarks/matmul_runtimes.py`), and an ONNX graph with symbolic batch and
cache dims is built once per model: no retracing per (batch, cache length) as JAX does in every process.

What stays in JAX: the encoder and the cross-attention keys/values (`decoding._encode_and_init_cache`, run once per
batch). What moves: one decoder step (`decoder_step_model`, float32 only), run by `OrtDecoder` from a numpy host loop
that keeps exactly the policy of `decoding.greedy_decode_compacting` (same greedy rule, positions, compaction into
power-of-two batches, cache doubling, log-probs and `steps_run`), so the ids are the XLA decoder's token for token
unless two logits are within float32 rounding of each other (the kernels sum in different orders).

The graph never writes the self-attention caches: it attends over the cache slots < step plus this step's own key
and value, and returns those (new_key_i / new_value_i [B, H, 1, D]); the host writes them into slot `step` of its
numpy caches [B, H, T, D] in place. All buffers are bound to ONNX Runtime by pointer (io_binding): nothing the size
of a cache is copied per step. onnx / onnxruntime are imported inside functions, so importing this module never
needs them (`pip install onnxruntime onnx`).

Tensor names carry their shape: B rows, H heads, D head dim, T self cache slots, S encoder frames, E emb, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mt3.models import decoding, layers

OPSET = 17
_GELU_SQRT_2_OVER_PI = np.sqrt(2 / np.pi).astype(np.float32)  # as jax.nn.gelu(approximate=True) rounds it


# ---------------------------------------------------------------------------------------------------------------------
# The ONNX graph of one decoder step


class _Graph:
    """Collects nodes and initializers; each `op` gets one fresh output name, so the step reads like the Flax code."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []

    def const(self, name: str, value: Any) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs) -> str:
        return self.ops(op_type, *inputs, outputs=[output or f"{op_type.lower()}_{len(self.nodes)}"], **attrs)[0]

    def ops(self, op_type: str, *inputs: str, outputs: list[str], **attrs) -> list[str]:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, **attrs))
        return outputs


def _kernel(tree: Any, *path: str) -> np.ndarray:
    for key in path:
        tree = tree[key]
    return np.asarray(tree, np.float32)


def _rms_norm(g: _Graph, x: str, scale_name: str, scale: np.ndarray) -> str:
    """layers.RMSNorm: x / sqrt(mean(x^2) + 1e-6) * scale, all float32 (rsqrt as 1/sqrt, as XLA:CPU computes it)."""
    var = g.op("ReduceMean", g.op("Mul", x, x), axes=[-1], keepdims=1)
    inv = g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, "eps")))
    return g.op("Mul", g.op("Mul", x, inv), g.const(scale_name, scale))


def _softmax(g: _Graph, x: str) -> str:
    """exp(x - max) / sum, written out as jax.nn.softmax computes it (ORT's Softmax multiplies by 1/sum)."""
    e = g.op("Exp", g.op("Sub", x, g.op("ReduceMax", x, axes=[-1], keepdims=1)))
    return g.op("Div", e, g.op("ReduceSum", e, "last_axis", keepdims=1))


def _projections(g: _Graph, x: str, name: str, kernels: list[np.ndarray]) -> list[str]:
    """x @ each kernel, as one MatMul over the kernels side by side and a Split: one weight pass and one kernel
    launch instead of several (each output element is still the same dot product)."""
    joined = g.op("MatMul", x, g.const(name, np.concatenate(kernels, axis=1)))
    sizes = g.const(f"{name}/sizes", np.asarray([k.shape[1] for k in kernels], np.int64))
    return g.ops("Split", joined, sizes, axis=1, outputs=[f"{name}_{i}" for i in range(len(kernels))])


def _heads(g: _Graph, x_BxHD: str, output: str | None = None) -> str:
    """[B, H*D] -> [B, H, 1, D] (one query position, heads-first like the caches)."""
    return g.op("Reshape", x_BxHD, "heads_shape", output=output)


def _attention_out(g: _Graph, o_BxHx1xD: str, name: str, kernel: np.ndarray) -> str:
    return g.op("MatMul", g.op("Reshape", o_BxHx1xD, "joined_shape"), g.const(name, kernel))


def _self_attention(g: _Graph, x: str, p: dict, prefix: str, layer: int) -> str:
    """Attention over cache slots < step (`self_bias` masks the rest with MASK_BIAS) and this step's own key/value,
    which become the outputs new_key_i / new_value_i [B, H, 1, D]. The same terms as Flax's attention over slots
    <= step; only the own slot is summed last (a float32 rounding difference, ~1e-6 in the logits)."""
    q, k, v = _projections(g, x, f"{prefix}/qkv", [_kernel(p, name, "kernel") for name in ("query", "key", "value")])
    q, k_new, v_new = _heads(g, q), _heads(g, k, f"new_key_{layer}"), _heads(g, v, f"new_value_{layer}")
    cached = g.op("Add", g.op("MatMul", q, g.op("Transpose", f"self_key_{layer}", perm=[0, 1, 3, 2])), "self_bias")
    own = g.op("MatMul", q, g.op("Transpose", k_new, perm=[0, 1, 3, 2]))
    w = _softmax(g, g.op("Concat", cached, own, axis=-1))  # [B, H, 1, T + 1]
    w_cached = g.op("Slice", w, "zero", "minus_one", "last_axis")
    w_own = g.op("Slice", w, "minus_one", "int_max", "last_axis")
    o = g.op("Add", g.op("MatMul", w_cached, f"self_value_{layer}"), g.op("Mul", w_own, v_new))
    return _attention_out(g, o, f"{prefix}/out", _kernel(p, "out", "kernel"))


def _cross_attention(g: _Graph, x: str, p: dict, prefix: str, layer: int) -> str:
    q = _heads(g, g.op("MatMul", x, g.const(f"{prefix}/query", _kernel(p, "query", "kernel"))))
    logits = g.op("MatMul", q, g.op("Transpose", f"cross_key_{layer}", perm=[0, 1, 3, 2]))
    o = g.op("MatMul", _softmax(g, logits), f"cross_value_{layer}")
    return _attention_out(g, o, f"{prefix}/out", _kernel(p, "out", "kernel"))


def _mlp(g: _Graph, x: str, p: dict, prefix: str, layer: int) -> str:
    """layers.MlpBlock: gelu_tanh(x W_0) * (x W_1) @ W_o, the GELU in jax.nn.gelu's own order of operations
    (`layer` unused: the attention blocks' signature)."""
    gate, linear = _projections(g, x, f"{prefix}/wi", [_kernel(p, "wi_0", "kernel"), _kernel(p, "wi_1", "kernel")])
    cube = g.op("Mul", g.op("Mul", gate, gate), gate)
    inner = g.op("Mul", "gelu_c", g.op("Add", gate, g.op("Mul", "gelu_a", cube)))
    cdf = g.op("Mul", "half", g.op("Add", "one", g.op("Tanh", inner)))
    hidden = g.op("Mul", g.op("Mul", gate, cdf), linear)
    return g.op("MatMul", hidden, g.const(f"{prefix}/wo", _kernel(p, "wo", "kernel")))


def _add_constants(g: _Graph, config) -> None:
    f32 = lambda v: np.asarray(v, np.float32)
    i64 = lambda v: np.asarray(v, np.int64)
    for name, value in (("eps", f32(1e-6)), ("gelu_c", _GELU_SQRT_2_OVER_PI), ("gelu_a", f32(0.044715)),
                        ("half", f32(0.5)), ("one", f32(1.0)), ("zero_f", f32(0.0)),
                        ("mask_bias", f32(layers.MASK_BIAS)),
                        ("last_axis", i64([-1])), ("zero", i64([0])), ("minus_one", i64([-1])),
                        ("int_max", i64([np.iinfo(np.int64).max])), ("zero_i", i64(0)), ("one_i", i64(1)),
                        ("heads_shape", i64([-1, config.num_heads, 1, config.head_dim])),
                        ("joined_shape", i64([-1, config.num_heads * config.head_dim])),
                        ("positions", layers.sinusoid_table(config.max_length, config.emb_dim))):
        g.const(name, value)


def _self_bias(g: _Graph) -> str:
    """[T] float32: 0 for slots < step, MASK_BIAS after (slot `step` itself is this step's key, attended apart)."""
    length = g.op("Squeeze", g.op("Shape", "self_key_0", start=2, end=3))
    slots = g.op("Range", "zero_i", length, "one_i")
    return g.op("Where", g.op("Less", slots, "step"), "zero_f", "mask_bias", output="self_bias")


def decoder_step_model(params: Any, config) -> Any:
    """onnx.ModelProto of one decode-mode step of `network.Decoder` with float32 weights (symbolic B, T, S).

    Inputs: token int32 [B], step int64 [] (position of every row and the number of filled cache slots), and per
    layer i self_key_i / self_value_i [B, H, T, D] (slots < step filled) and cross_key_i / cross_value_i [B, H, S, D].
    Outputs: logits float32 [B, V] and per layer new_key_i / new_value_i [B, H, 1, D] (this step's, for slot step).
    `params` is the model's params or their 'decoder' subtree; a bfloat16 config is refused (float32 only).
    """
    from onnx import TensorProto, helper

    if np.dtype(config.activation_dtype) != np.float32:
        raise ValueError(f"the ONNX Runtime decoder is float32 only; this model computes in {config.dtype}")
    p = params["decoder"] if "decoder" in params else params
    g = _Graph()
    _add_constants(g, config)
    _self_bias(g)
    y = g.op("Add", g.op("Gather", g.const("token_embedder", _kernel(p, "token_embedder", "embedding")), "token"),
             g.op("Gather", "positions", "step"))
    for i in range(config.num_decoder_layers):
        lp, prefix = p[f"layers_{i}"], f"layers_{i}"
        for block, norm, fn in (("self_attention", "pre_self_attention_layer_norm", _self_attention),
                                ("encoder_decoder_attention", "pre_cross_attention_layer_norm", _cross_attention),
                                ("mlp", "pre_mlp_layer_norm", _mlp)):  # pre-norm residual blocks, as DecoderLayer
            x = _rms_norm(g, y, f"{prefix}/{norm}", _kernel(lp, norm, "scale"))
            y = g.op("Add", y, fn(g, x, lp[block], f"{prefix}/{block}", i))
    y = _rms_norm(g, y, "decoder_norm", _kernel(p, "decoder_norm", "scale"))
    g.op("MatMul", y, g.const("logits_dense", _kernel(p, "logits_dense", "kernel")), output="logits")
    h, d, f32 = config.num_heads, config.head_dim, TensorProto.FLOAT
    cache = lambda name, length: helper.make_tensor_value_info(name, f32, ["B", h, length, d])
    inputs = [helper.make_tensor_value_info("token", TensorProto.INT32, ["B"]),
              helper.make_tensor_value_info("step", TensorProto.INT64, [])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["B", config.vocab_size])]
    for i in range(config.num_decoder_layers):
        inputs += [cache(f"self_key_{i}", "T"), cache(f"self_value_{i}", "T"), cache(f"cross_key_{i}", "S"),
                   cache(f"cross_value_{i}", "S")]
        outputs += [cache(f"new_key_{i}", 1), cache(f"new_value_{i}", 1)]
    graph = helper.make_graph(g.nodes, "mt3_decoder_step", inputs, outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


# ---------------------------------------------------------------------------------------------------------------------
# The host loop: numpy state, one ONNX Runtime session per model


@dataclasses.dataclass
class _Rows:
    """Everything the decode loop keeps per slot of the current chunk, as numpy (B slots, T cache slots)."""

    self_keys: list[np.ndarray]  # per layer [B, H, T, D]; slots < step written
    self_values: list[np.ndarray]
    cross_keys: list[np.ndarray]  # per layer [B, H, S, D], from JAX once per batch
    cross_values: list[np.ndarray]
    token_B: np.ndarray  # int32: the id each slot feeds next
    out_BxT: np.ndarray  # int32 ids emitted so far
    logp_BxT: np.ndarray  # float32 log-probabilities of those ids
    done_B: np.ndarray  # bool
    allowed_BxV: np.ndarray  # bool


def _initial_rows(cache: Any, num_layers: int, allowed_BxV: np.ndarray, length: int) -> _Rows:
    """The JAX cache pytree (cross K/V filled, self caches zero) -> numpy state at step 0."""
    layer = lambda i: cache["decoder"][f"layers_{i}"]
    cross = lambda i, name: np.ascontiguousarray(layer(i)["encoder_decoder_attention"][name], np.float32)
    zeros = lambda i: np.zeros(layer(i)["self_attention"]["cached_key"].shape, np.float32)
    batch = allowed_BxV.shape[0]
    return _Rows(self_keys=[zeros(i) for i in range(num_layers)], self_values=[zeros(i) for i in range(num_layers)],
                 cross_keys=[cross(i, "cross_key") for i in range(num_layers)],
                 cross_values=[cross(i, "cross_value") for i in range(num_layers)],
                 token_B=np.full((batch,), decoding.DECODER_START_ID, np.int32),
                 out_BxT=np.zeros((batch, length), np.int32), logp_BxT=np.zeros((batch, length), np.float32),
                 done_B=np.zeros((batch,), bool), allowed_BxV=allowed_BxV)


def _map_rows(rows: _Rows, fn) -> _Rows:
    """A new _Rows with `fn` applied to every array (each layer's, for the per-layer lists)."""
    return _Rows(**{name: [fn(x) for x in value] if isinstance(value, list) else fn(value)
                    for name, value in vars(rows).items()})


def _take_rows(rows: _Rows, keep: np.ndarray) -> _Rows:
    """Slots `keep` of every array (decoding._take_rows): contiguous copies, bound to ORT by pointer after."""
    return _map_rows(rows, lambda x: np.ascontiguousarray(x[keep]))


def _grow(rows: _Rows, length: int) -> _Rows:
    """Self caches and out/logp zero-padded along T to `length` (decoding._grow); the other arrays are shared."""
    def pad(x: np.ndarray, axis: int) -> np.ndarray:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return np.pad(x, widths)

    return dataclasses.replace(rows, self_keys=[pad(x, 2) for x in rows.self_keys],
                               self_values=[pad(x, 2) for x in rows.self_values], out_BxT=pad(rows.out_BxT, 1),
                               logp_BxT=pad(rows.logp_BxT, 1))


def greedy_pick(logits_BxV: np.ndarray, allowed_BxV: np.ndarray | None, done_B: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [B], their float32 log-probabilities [B]) as `decoding._greedy_chunk` picks them: argmax of the
    allowed logits (first index on ties, as jnp.argmax), PAD and log-prob 0 for done rows, log_softmax in float32.
    allowed_BxV None: every id allowed (no masked copy of the logits per step)."""
    masked_BxV = logits_BxV if allowed_BxV is None else np.where(allowed_BxV, logits_BxV, np.float32(-np.inf))
    best_B = masked_BxV.argmax(axis=-1)
    max_Bx1 = np.take_along_axis(masked_BxV, best_B[:, None], axis=-1)
    # the argmax's own shifted logit is exactly 0, so its log-probability is -logsumexp of the shifted logits
    logsumexp_B = np.log(np.exp(masked_BxV - max_Bx1).sum(axis=-1))
    next_B = np.where(done_B, decoding.PAD_ID, best_B).astype(np.int32)
    return next_B, np.where(done_B, np.float32(0.0), -logsumexp_B).astype(np.float32)


def unusable_reason(net_config) -> str | None:
    """Why this process should not decode `net_config`'s model with ONNX Runtime, or None when it can: the
    `decoder_runtime = 'auto'` rule. The graph is float32 and runs on ONNX Runtime's CPU provider, so a bfloat16
    model keeps XLA, and so does a JAX process on a GPU/TPU (its decoder step is on the accelerator already)."""
    import importlib.util

    import jax

    if np.dtype(net_config.activation_dtype) != np.float32:
        return f"the model computes in {net_config.dtype} (the ONNX graph is float32 only)"
    if jax.default_backend() != "cpu":
        return f"JAX runs on {jax.default_backend()} (ONNX Runtime would run the step on the CPU)"
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (pip install onnx onnxruntime)"
    return None


def make_session(model: Any, threads: int = 1):
    """One CPU InferenceSession for every shape. threads=1 did the most work per CPU-second (issue 29); spinning
    is off, so waiting threads do not burn CPU between steps. ORT's default graph optimizations only turn
    Transpose + MatMul into FusedMatMul here (no GELU or norm fusion that would change the float32 math)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class OrtDecoder:
    """`decoding.greedy_decode_compacting` with the decoder step in ONNX Runtime; one session per model, reused
    for every batch and cache length (built in a second or two, never retraced)."""

    def __init__(self, module, params: Any, *, threads: int = 1):
        self.module, self.params = module, params
        self.config = module.config
        self.model = decoder_step_model(params, self.config)
        self.session = make_session(self.model, threads)

    def _bind(self, rows: _Rows, step_arr: np.ndarray):
        """io_binding of every input and output to numpy buffers (by pointer): (binding, logits, new keys,
        new values). The caller mutates rows.token_B, step_arr and the self caches in place between runs."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("token", rows.token_B)
        binding.bind_cpu_input("step", step_arr)
        batch, heads, _, dim = rows.self_keys[0].shape
        logits_BxV = np.empty((batch, self.config.vocab_size), np.float32)
        binding.bind_output("logits", "cpu", 0, np.float32, logits_BxV.shape, logits_BxV.ctypes.data)
        new_keys, new_values = [], []
        for i in range(self.config.num_decoder_layers):
            for name, arr in ((f"self_key_{i}", rows.self_keys[i]), (f"self_value_{i}", rows.self_values[i]),
                              (f"cross_key_{i}", rows.cross_keys[i]), (f"cross_value_{i}", rows.cross_values[i])):
                binding.bind_cpu_input(name, arr)
            for name, outs in ((f"new_key_{i}", new_keys), (f"new_value_{i}", new_values)):
                outs.append(np.empty((batch, heads, 1, dim), np.float32))
                binding.bind_output(name, "cpu", 0, np.float32, outs[-1].shape, outs[-1].ctypes.data)
        return binding, logits_BxV, new_keys, new_values

    def step_logits(self, rows: _Rows, step: int) -> np.ndarray:
        """One step for all slots (no bookkeeping): logits [B, V]; writes this step's K/V into slot `step`."""
        step_arr = np.asarray(step, np.int64)
        binding, logits_BxV, new_keys, new_values = self._bind(rows, step_arr)
        self.session.run_with_iobinding(binding)
        _write_slot(rows, new_keys, new_values, step)
        return logits_BxV

    def _run_chunk(self, rows: _Rows, step: int, min_live: int, eos_id: int) -> int:
        """decoding._greedy_chunk in numpy: steps until all rows are done, the cache is full or at most `min_live`
        rows still run; returns the next step."""
        step_arr = np.zeros((), np.int64)
        binding, logits_BxV, new_keys, new_values = self._bind(rows, step_arr)
        length = rows.out_BxT.shape[1]
        allowed_BxV = None if rows.allowed_BxV.all() else rows.allowed_BxV
        while step < length:
            live = int(np.count_nonzero(~rows.done_B))
            if live == 0 or live <= min_live:
                break
            step_arr[()] = step
            self.session.run_with_iobinding(binding)
            _write_slot(rows, new_keys, new_values, step)
            next_B, logp_B = greedy_pick(logits_BxV, allowed_BxV, rows.done_B)
            rows.out_BxT[:, step], rows.logp_BxT[:, step] = next_B, logp_B
            rows.token_B[:] = next_B  # in place: the binding reads this buffer
            rows.done_B |= next_B == eos_id
            step += 1
        return step

    def greedy_decode_compacting(self, encoder_inputs: Any, *, max_decode_len: int, allowed: Any = None,
                                 first_len: int = decoding.FIRST_CACHE_LEN, eos_id: int = decoding.EOS_ID,
                                 return_log_probs: bool = False, step_mask: Any = None):
        """Same arguments (less module and params) and results as `decoding.greedy_decode_compacting`."""
        if step_mask is not None:
            raise NotImplementedError("step_mask is not supported by the ONNX Runtime decoder; use the XLA one")
        decoding._check_args(max_decode_len, 0.0, 0, None)
        batch, vocab = encoder_inputs.shape[0], self.config.vocab_size
        allowed_BxV = np.ones((batch, vocab), bool) if allowed is None else np.array(allowed, bool)
        if allowed_BxV.shape != (batch, vocab):
            raise ValueError(f"allowed must be bool [{batch}, {vocab}], got {allowed_BxV.shape}")
        length = min(int(first_len), max_decode_len)
        cache = decoding._encode_and_init_cache(self.module, self.params, encoder_inputs, cache_len=length)
        rows = _initial_rows(cache, self.config.num_decoder_layers, allowed_BxV, length)
        del cache
        result_BxT = np.zeros((batch, max_decode_len), np.int32)
        result_logp_BxT = np.zeros((batch, max_decode_len), np.float32)
        rows_B = np.arange(batch)  # original row of each slot (-1: a finished filler)
        step = 0
        while True:
            slots = len(rows_B)
            min_live = slots // 2 if slots > 1 else 0
            step = self._run_chunk(rows, step, min_live, eos_id)
            live = np.flatnonzero(~rows.done_B & (rows_B >= 0))
            if len(live) == 0 or step >= max_decode_len:
                real = np.flatnonzero(rows_B >= 0)
                _store(result_BxT, result_logp_BxT, rows, real, rows_B)
                return (result_BxT, step, result_logp_BxT) if return_log_probs else (result_BxT, step)
            if step == rows.out_BxT.shape[1]:
                rows = _grow(rows, min(2 * rows.out_BxT.shape[1], max_decode_len))
            if len(live) <= min_live:
                _store(result_BxT, result_logp_BxT, rows, np.flatnonzero(rows.done_B & (rows_B >= 0)), rows_B)
                filler = np.flatnonzero(rows.done_B)[: decoding.next_power_of_two(len(live)) - len(live)]
                rows = _take_rows(rows, np.concatenate([live, filler]))
                rows_B = np.concatenate([rows_B[live], np.full(len(filler), -1)])


def _write_slot(rows: _Rows, new_keys: list[np.ndarray], new_values: list[np.ndarray], step: int) -> None:
    for cache, new in zip(rows.self_keys + rows.self_values, new_keys + new_values):
        cache[:, :, step] = new[:, :, 0]


def _store(result_BxT: np.ndarray, result_logp_BxT: np.ndarray, rows: _Rows, slots: np.ndarray,
           rows_B: np.ndarray) -> None:
    """Copy slots' ids and log-probs into the full-length results at their original rows."""
    width = rows.out_BxT.shape[1]
    result_BxT[rows_B[slots], :width] = rows.out_BxT[slots]
    result_logp_BxT[rows_B[slots], :width] = rows.logp_BxT[slots]
