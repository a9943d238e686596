"""Pure train/eval step functions and a thin Trainer that owns jit, shardings and donation.

`train_step(state, batch, rng)` is a top-level pure function (testable on CPU in isolation); the model's `loss_fn`,
the optax transformation and the number of microbatches are static keyword arguments bound by the Trainer. The
optimizer is MT3's: T5X Adafactor (decay_rate 0.8, factored second moments, update clipping at RMS 1.0, LR scaled by
parameter RMS with floor 1e-3, no momentum, eps 1e-30) at a constant 1e-3 learning rate. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

Array = jax.Array
Batch = Mapping[str, Array]
LossFn = Callable[[Any, Batch, Array | None], tuple[Array, dict[str, Array]]]

LR_FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay", "linear_cooldown",
              "cosine_cooldown")
OPTIMIZERS = ("adafactor", "adamw")
# Metrics that add up over microbatches; 'accuracy' is re-weighted by num_tokens; anything else is averaged.
SUMMED_METRICS = ("loss", "z_loss", "cross_ent_loss", "num_tokens", "aux_onset_loss", "aux_frame_loss")


# ---------------------------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and learning-rate schedule. Defaults are MT3's (REFERENCE §5.3 / T5X Adafactor defaults).

    schedule: T5X `create_learning_rate_scheduler` factors joined by '*', e.g. 'constant' (MT3),
    'constant * linear_warmup', 'constant * rsqrt_decay' (value base * 1/sqrt(max(step, warmup_steps))).
    'linear_cooldown' / 'cosine_cooldown' (not in T5X; the "decay" tail of a warmup-stable-decay schedule): 1 until
    `cooldown_start`, then down to 0 over `cooldown_steps` (linearly / as half a cosine), 0 after. A budgeted run
    (a CPU run of N hours) ends on a cooled-down checkpoint instead of one taken at full learning rate.
    global_norm_clip: optional gradient clipping by global norm before the optimizer (off in MT3).
    """

    name: str = "adafactor"
    base_learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 1000
    decay_rate: float = 0.8
    step_offset: int = 0
    cooldown_start: int = 0
    cooldown_steps: int = 0
    factored: bool = True
    min_dim_size_to_factor: int = 128
    multiply_by_parameter_scale: bool = True
    clipping_threshold: float | None = 1.0
    momentum: float | None = None
    epsilon1: float = 1e-30
    epsilon2: float = 1e-3
    weight_decay: float | None = None
    global_norm_clip: float | None = None

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"OptimizerConfig.name must be one of {OPTIMIZERS}, got {self.name!r}")
        unknown = [f for f in self.factors if f not in LR_FACTORS]
        if unknown:
            raise ValueError(f"unknown learning-rate factors {unknown} in {self.schedule!r}; allowed: {LR_FACTORS}")
        if self.base_learning_rate <= 0 or self.warmup_steps < 0:
            raise ValueError("base_learning_rate must be > 0 and warmup_steps >= 0")
        if any(f.endswith("_cooldown") for f in self.factors) and (self.cooldown_steps <= 0 or self.cooldown_start < 0):
            raise ValueError(f"schedule {self.schedule!r} needs cooldown_steps > 0 and cooldown_start >= 0 "
                             f"(got {self.cooldown_steps}, {self.cooldown_start})")

    @property
    def factors(self) -> list[str]:
        return [f.strip() for f in self.schedule.split("*") if f.strip()]

    def learning_rate_fn(self) -> Callable[[Array | int], Array]:
        """step -> learning rate (jit-friendly), as T5X's factor-product scheduler."""
        factors, base, warmup = self.factors, self.base_learning_rate, max(self.warmup_steps, 1)
        start, length = self.cooldown_start, max(self.cooldown_steps, 1)

        def schedule(step):
            step = jnp.asarray(step, jnp.float32)
            value = jnp.asarray(1.0, jnp.float32)
            for factor in factors:
                if factor == "constant":
                    value = value * base
                elif factor == "linear_warmup":
                    value = value * jnp.minimum(1.0, step / warmup)
                elif factor == "rsqrt_decay":
                    value = value / jnp.sqrt(jnp.maximum(step, warmup))
                elif factor == "rsqrt_normalized_decay":
                    value = value * jnp.sqrt(warmup) / jnp.sqrt(jnp.maximum(step, warmup))
                elif factor == "linear_cooldown":
                    value = value * (1.0 - jnp.clip((step - start) / length, 0.0, 1.0))
                elif factor == "cosine_cooldown":
                    value = value * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip((step - start) / length, 0.0, 1.0)))
            return value

        return schedule

    def make(self) -> optax.GradientTransformation:
        lr = self.learning_rate_fn()
        parts: list[optax.GradientTransformation] = []
        if self.global_norm_clip:
            parts.append(optax.clip_by_global_norm(self.global_norm_clip))
        if self.name == "adamw":
            parts.append(optax.adamw(lr, weight_decay=self.weight_decay or 0.0))
            return optax.chain(*parts)
        # T5X Adafactor as an optax chain: factored RMS scaling, update clipping, LR x parameter scale, no momentum.
        parts.append(optax.scale_by_factored_rms(
            factored=self.factored, decay_rate=self.decay_rate, step_offset=self.step_offset,
            min_dim_size_to_factor=self.min_dim_size_to_factor, epsilon=self.epsilon1))
        if self.clipping_threshold is not None:
            parts.append(optax.clip_by_block_rms(self.clipping_threshold))
        parts.append(optax.scale_by_learning_rate(lr, flip_sign=False))
        if self.multiply_by_parameter_scale:
            parts.append(optax.scale_by_param_block_rms(min_scale=self.epsilon2))
        if self.momentum is not None:
            parts.append(optax.ema(self.momentum, debias=False))
        if self.weight_decay:
            parts.append(optax.add_decayed_weights(self.weight_decay * self.base_learning_rate))
        parts.append(optax.scale(-1.0))
        return optax.chain(*parts)


# ---------------------------------------------------------------------------------------------------------------
# State and pure steps
# ---------------------------------------------------------------------------------------------------------------

class TrainState(struct.PyTreeNode):
    """Everything a checkpoint must hold to continue bit-for-bit (with the data position kept beside it)."""

    step: Array
    params: Any
    opt_state: Any
    rng: Array  # raw uint32 key data; the dropout key of step s is fold_in(rng, s)


def _split_microbatches(batch: Batch, num_microbatches: int) -> dict[str, Array]:
    """[B, ...] -> [N, B/N, ...] with microbatch i = rows i, i+N, ...: every data shard feeds every microbatch."""
    out = {}
    for key, x in batch.items():
        if x.shape[0] % num_microbatches:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by num_microbatches={num_microbatches}")
        x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
        out[key] = jnp.swapaxes(x, 0, 1)
    return out


def _combine_metrics(metrics: dict[str, Array], num_microbatches: int) -> dict[str, Array]:
    """Sums from a scan over microbatches -> batch metrics (accuracy re-weighted by token counts)."""
    out = {}
    for key, value in metrics.items():
        if key in SUMMED_METRICS:
            out[key] = value
        elif key == "accuracy" and "num_tokens" in metrics:
            out[key] = value / jnp.maximum(metrics["num_tokens"], 1.0)
        else:
            out[key] = value / num_microbatches
    return out


def compute_gradients(params: Any, batch: Batch, rng: Array, *, loss_fn: LossFn,
                      num_microbatches: int = 1) -> tuple[Any, dict[str, Array]]:
    """Gradients summed over microbatches (lax.scan), as T5X: the loss is a sum, so the sum is the batch gradient."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_microbatches <= 1:
        (_, metrics), grads = grad_fn(params, batch, rng)
        return grads, dict(metrics)
    micro = _split_microbatches(batch, num_microbatches)

    def body(carry, inputs):
        grads_acc, metrics_acc = carry
        index, mb = inputs
        (_, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, index))
        metrics = dict(metrics)
        if "accuracy" in metrics and "num_tokens" in metrics:
            metrics["accuracy"] = metrics["accuracy"] * metrics["num_tokens"]
        grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, grads)
        metrics_acc = jax.tree_util.tree_map(jnp.add, metrics_acc, metrics)
        return (grads_acc, metrics_acc), None

    first = {k: v[0] for k, v in micro.items()}
    _, metrics_shape = jax.eval_shape(grad_fn, params, first, rng)[0]
    zeros_metrics = {k: jnp.zeros(v.shape, v.dtype) for k, v in dict(metrics_shape).items()}
    zeros_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    (grads, metrics), _ = jax.lax.scan(body, (zeros_grads, zeros_metrics),
                                       (jnp.arange(num_microbatches), micro))
    return grads, _combine_metrics(metrics, num_microbatches)


def train_step(state: TrainState, batch: Batch, rng: Array, *, loss_fn: LossFn,
               tx: optax.GradientTransformation, num_microbatches: int = 1,
               learning_rate_fn: Callable | None = None) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step: gradients (with dropout key `rng`), optax update, step + 1. Pure; jit it."""
    grads, metrics = compute_gradients(state.params, batch, rng, loss_fn=loss_fn, num_microbatches=num_microbatches)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    if learning_rate_fn is not None:
        metrics["learning_rate"] = learning_rate_fn(state.step)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, batch: Batch, *, eval_fn: Callable[[Any, Batch], dict[str, Array]]) -> dict[str, Array]:
    """Teacher-forced metrics of one batch (loss, token accuracy, ...). Pure; jit it."""
    return dict(eval_fn(params, batch))


# ---------------------------------------------------------------------------------------------------------------
# Trainer: jit, shardings, donation
# ---------------------------------------------------------------------------------------------------------------

def params_logical_specs(model, batch_shapes: Mapping[str, tuple[int, ...]] | None = None):
    """Logical PartitionSpecs of the model's parameters, or None (replicate) for models without annotations."""
    if hasattr(model, "params_logical_axes"):
        return model.params_logical_axes(batch_shapes)
    return None


class Trainer:
    """Binds a model, an optimizer and a Partitioner into jitted, sharded, donating step functions."""

    def __init__(self, model, optimizer: OptimizerConfig, partitioner, *, num_microbatches: int = 1,
                 batch_shapes: Mapping[str, tuple[int, ...]] | None = None):
        if num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
        self.model = model
        self.optimizer = optimizer
        self.partitioner = partitioner
        self.num_microbatches = num_microbatches
        self.tx = optimizer.make()
        self.learning_rate_fn = optimizer.learning_rate_fn()
        self._batch_shapes = batch_shapes
        self._state_shardings = None
        self._train_fn = None
        self._init_fn = None
        self._eval_fn = None

    # ----- state layout -----
    def _init_state(self, rng: Array) -> TrainState:
        params = self.model.init_params(rng, self._batch_shapes)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                          rng=jax.random.key_data(jax.random.fold_in(rng, 1)))

    @property
    def state_shardings(self) -> TrainState:
        """NamedShardings of every TrainState leaf: params from their logical axes; optimizer-state leaves shaped like
        their parameter share its sharding (factored Adafactor rows/columns and counters are replicated)."""
        if self._state_shardings is None:
            shapes = jax.eval_shape(self._init_state, jax.random.PRNGKey(0))
            replicated = self.partitioner.replicated()
            specs = params_logical_specs(self.model, self._batch_shapes)
            if specs is None:
                params = jax.tree_util.tree_map(lambda _: replicated, shapes.params)
            else:
                params = self.partitioner.logical_to_sharding(specs)
            opt_state = optax.tree_map_params(
                self.tx, lambda leaf, sharding, param: sharding if leaf.shape == param.shape else replicated,
                shapes.opt_state, params, shapes.params, transform_non_params=lambda _: replicated)
            self._state_shardings = TrainState(step=replicated, params=params, opt_state=opt_state, rng=replicated)
        return self._state_shardings

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs with shardings: the restore target for checkpoints (nothing is materialised)."""
        shapes = jax.eval_shape(self._init_state, jax.random.PRNGKey(0))
        return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                      shapes, self.state_shardings)

    def init_state(self, seed: int) -> TrainState:
        """Fresh, already-sharded parameters and optimizer state (each device builds only its shards)."""
        if self._init_fn is None:
            self._init_fn = jax.jit(self._init_state, out_shardings=self.state_shardings)
        with self.partitioner.activate():
            return self._init_fn(jax.random.PRNGKey(seed))

    # ----- steps -----
    def _compiled_train(self):
        if self._train_fn is None:
            step_fn = functools.partial(train_step, loss_fn=self.model.loss_fn, tx=self.tx,
                                        num_microbatches=self.num_microbatches,
                                        learning_rate_fn=self.learning_rate_fn)

            def run(state, batch):
                rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
                return step_fn(state, batch, rng)

            batch_sharding = self.partitioner.batch_sharding()
            self._train_fn = jax.jit(run, in_shardings=(self.state_shardings, batch_sharding),
                                     out_shardings=(self.state_shardings, self.partitioner.replicated()),
                                     donate_argnums=(0,))
        return self._train_fn

    def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        """One step on a global batch (sharded over 'data'); the old state's buffers are donated."""
        with self.partitioner.activate():
            return self._compiled_train()(state, batch)

    def lower_train_step(self, state: TrainState | Any, batch: Batch):
        """`jit(...).lower(...)` of the step (for XLA cost analysis in benchmarks)."""
        with self.partitioner.activate():
            return self._compiled_train().lower(state, batch)

    def eval_step(self, params: Any, batch: Batch) -> dict[str, Array]:
        if self._eval_fn is None:
            fn = functools.partial(eval_step, eval_fn=self.model.eval_fn)
            self._eval_fn = jax.jit(fn, in_shardings=(self.state_shardings.params, self.partitioner.batch_sharding()),
                                    out_shardings=self.partitioner.replicated())
        with self.partitioner.activate():
            return self._eval_fn(params, batch)


def count_params(params: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def metrics_to_host(metrics: Mapping[str, Array]) -> dict[str, float]:
    """Device scalars -> Python floats (one transfer), plus the per-token loss when token counts are known."""
    host = {k: float(v) for k, v in jax.device_get(dict(metrics)).items() if np.ndim(v) == 0}
    if "loss" in host and host.get("num_tokens"):
        host["loss_per_token"] = host["loss"] / host["num_tokens"]
    return host
