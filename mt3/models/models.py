"""ContinuousInputsEncoderDecoderModel: T5X-style loss (cross entropy + z-loss + label smoothing), eval metrics,
parameter init with logical axes, and batched prediction through `mt3.models.decoding`.

The loss is summed over target tokens by default (MT3's `loss_normalizing_factor=None`): with Adafactor the update
does not depend on the loss scale, so normalise (e.g. 'NUM_REAL_TARGET_TOKENS') when switching optimizer.

Optional dense auxiliary supervision (off by default, as MT3): with `aux_frame_loss_weight > 0` linear onset/frame
heads (`network.FrameHeads`, parameters under 'aux_frame_heads') read the encoder output and a binary cross entropy
against the batch's piano rolls (`mt3.data.frame_targets`) is added to the token loss. They are training-only:
prediction
and decoding ignore them, and with the weight at 0 the parameters, the loss and the step are exactly MT3's.
No TensorFlow is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mt3.models import decoding, network

Array = jax.Array
Batch = Mapping[str, Any]

LOSS_NORMALIZING_FACTORS = ("NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS")
AUX_HEADS = "aux_frame_heads"  # top-level parameter key of the auxiliary heads (present only when they are on)
AUX_ONSETS, AUX_FRAMES = "aux_onsets", "aux_frames"  # batch features, as mt3.data.frame_targets.FEATURES


def cross_entropy_with_logits(logits: Array, soft_targets: Array, z_loss: float) -> tuple[Array, Array]:
    """Per-token -sum(targets * log_softmax(logits)) + z_loss * logsumexp(logits)^2, and that z-loss term alone.

    The z-loss keeps the softmax normaliser log Z near 0, which stabilises large-logit training (T5X).
    """
    log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    loss = -jnp.sum(soft_targets * (logits - log_z), axis=-1)
    total_z_loss = z_loss * jnp.square(jnp.squeeze(log_z, -1))
    return loss + total_z_loss, total_z_loss


def compute_weighted_cross_entropy(logits: Array, targets: Array, weights: Array | None = None, *,
                                   label_smoothing: float = 0.0, z_loss: float = 0.0,
                                   loss_normalizing_factor: float | Array | None = None
                                   ) -> tuple[Array, Array, Array]:
    """(summed loss incl. z-loss, summed z-loss, weight sum) as T5X's `compute_weighted_cross_entropy`.

    Label smoothing puts 1 - s on the target and s / (V - 1) on every other id; the entropy of that distribution is
    subtracted so a perfect prediction scores 0.
    """
    vocab = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low_confidence = label_smoothing / (vocab - 1)
    normalizing_constant = 0.0
    if label_smoothing:
        normalizing_constant = -(confidence * np.log(confidence)
                                 + (vocab - 1) * low_confidence * np.log(low_confidence + 1e-20))
    soft_targets = jax.nn.one_hot(targets, vocab, dtype=jnp.float32) * (confidence - low_confidence) + low_confidence
    loss, z = cross_entropy_with_logits(jnp.asarray(logits, jnp.float32), soft_targets, z_loss)
    loss = loss - normalizing_constant
    weight_sum = jnp.asarray(np.prod(targets.shape), jnp.float32)
    if weights is not None:
        loss = loss * weights
        z = z * weights
        weight_sum = jnp.sum(weights)
    if loss_normalizing_factor is not None:
        loss = loss / loss_normalizing_factor
        z = z / loss_normalizing_factor
    return jnp.sum(loss), jnp.sum(z), weight_sum


def frame_bce(logits: Array, targets: Array) -> Array:
    """Binary cross entropy of [B, L, P] logits against 0/1 rolls: mean over pitches, summed over frames and batch.

    Why this scale: it sums over frames as the token loss sums over tokens, so the ratio of the two does not depend on
    the batch size. Measured on gin/local_cpu.gin (steps 50-250 from scratch, batch 8): onset + frame terms are
    45-100 per batch against a token cross entropy of 1,100-2,600, i.e. ~4 % of it at weight 1."""
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(targets, jnp.float32)
    per_cell = jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.sum(jnp.mean(per_cell, axis=-1))


def count_params(params: Any) -> int:
    """Total number of parameter scalars in a (possibly boxed, possibly abstract) parameter tree."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(params))
    return int(sum(int(np.prod(leaf.shape)) for leaf in leaves))


def expected_param_count(config: network.T5Config) -> int:
    """Parameter count from the config alone (T5.1.1 layout, no biases, untied logits).

    MT3 small (emb 512, 6x64 heads, mlp 1024, 8+8 layers, 1536 rows) gives 45,896,704.
    """
    e, inner, m, v = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim, config.vocab_size
    attention = 4 * e * inner
    mlp = 3 * e * m
    encoder_layer = attention + mlp + 2 * e
    decoder_layer = 2 * attention + mlp + 3 * e
    input_projection = config.input_depth * e
    if config.encoder_frontend == "conv":
        c = config.conv_channels
        input_projection = (config.input_depth // config.conv_freq_pool) * c * e + (7 * 3 * c + c) + (5 * 3 * c * c + c)
    return (config.num_encoder_layers * encoder_layer + config.num_decoder_layers * decoder_layer + input_projection
            + 2 * v * e + 2 * e)


def default_batch_shapes(config: network.T5Config, batch_size: int = 1, input_length: int = 1,
                         target_length: int = 1) -> dict[str, tuple[int, ...]]:
    """Smallest batch shapes that determine every parameter shape (params do not depend on lengths)."""
    return {"encoder_input_tokens": (batch_size, input_length, config.encoder_input_depth),
            "decoder_input_tokens": (batch_size, target_length)}


class ContinuousInputsEncoderDecoderModel:
    """Loss, eval and prediction around a `network.Transformer` whose encoder takes continuous inputs."""

    def __init__(self, module: network.Transformer, *, z_loss: float = 1e-4, label_smoothing: float = 0.0,
                 loss_normalizing_factor: float | str | None = None, aux_frame_loss_weight: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if z_loss < 0.0:
            raise ValueError(f"z_loss must be >= 0, got {z_loss}")
        if isinstance(loss_normalizing_factor, str) and loss_normalizing_factor not in LOSS_NORMALIZING_FACTORS:
            raise ValueError(f"loss_normalizing_factor must be None, a number or one of {LOSS_NORMALIZING_FACTORS}, "
                             f"got {loss_normalizing_factor!r}")
        if isinstance(loss_normalizing_factor, int | float) and loss_normalizing_factor <= 0:
            raise ValueError(f"loss_normalizing_factor must be positive, got {loss_normalizing_factor}")
        if not aux_frame_loss_weight >= 0.0:
            raise ValueError(f"aux_frame_loss_weight must be >= 0, got {aux_frame_loss_weight}")
        self.module = module
        self.aux_frame_loss_weight = float(aux_frame_loss_weight)
        self.z_loss = float(z_loss)
        self.label_smoothing = float(label_smoothing)
        self.loss_normalizing_factor = loss_normalizing_factor

    @property
    def config(self) -> network.T5Config:
        return self.module.config

    # ----- parameters -----
    def _init_boxed(self, rng: Array, batch_shapes: Mapping[str, tuple[int, ...]] | None) -> Any:
        shapes = dict(default_batch_shapes(self.config))
        shapes.update(batch_shapes or {})
        encoder_inputs = jnp.zeros(shapes["encoder_input_tokens"], jnp.float32)
        decoder_inputs = jnp.zeros(shapes["decoder_input_tokens"], jnp.int32)
        params = self.module.init({"params": rng}, encoder_inputs, decoder_inputs, decoder_inputs,
                                  enable_dropout=False)["params"]
        if not self.aux_enabled:
            return params
        encoded = jnp.zeros(shapes["encoder_input_tokens"][:2] + (self.config.emb_dim,), jnp.float32)
        heads = network.FrameHeads().init({"params": jax.random.fold_in(rng, 1)}, encoded)["params"]
        return {**params, AUX_HEADS: heads}

    def init_params(self, rng: Array, batch_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Any:
        """Fresh float32 parameters (plain arrays). batch_shapes: {'encoder_input_tokens': (B, L, D),
        'decoder_input_tokens': (B, T)}; None uses 1-length shapes (parameter shapes do not depend on lengths).
        Jit this with `out_shardings` from `params_logical_axes` to create parameters directly sharded."""
        return nn.unbox(self._init_boxed(rng, batch_shapes))

    def params_logical_axes(self, batch_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Any:
        """PartitionSpec tree of logical axis names, same structure as `init_params` (nothing is materialised).

        Map onto a mesh with `nn.logical_to_mesh_sharding(specs, mesh, rules)`."""
        boxed = jax.eval_shape(lambda: self._init_boxed(jax.random.PRNGKey(0), batch_shapes))
        return nn.get_partition_spec(boxed)

    def abstract_params(self, batch_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Any:
        """ShapeDtypeStruct tree of the parameters (for checkpoint restore targets and counting without memory)."""
        return nn.unbox(jax.eval_shape(lambda: self._init_boxed(jax.random.PRNGKey(0), batch_shapes)))

    @property
    def aux_enabled(self) -> bool:
        """Whether the auxiliary frame heads exist (and the loss needs the batch's frame targets)."""
        return self.aux_frame_loss_weight > 0.0

    # ----- loss and metrics -----
    def _logits(self, params: Any, batch: Batch, dropout_rng: Array | None) -> Array:
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        return self.module.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                                 batch["decoder_target_tokens"], enable_dropout=dropout_rng is not None, rngs=rngs)

    def _logits_and_aux(self, params: Any, batch: Batch, dropout_rng: Array | None
                        ) -> tuple[Array, dict[str, Array] | None]:
        """Token logits, and the auxiliary metrics when the heads are on and the batch has frame targets (training
        batches; eval-split batches have none, so teacher-forced eval stays the token loss alone)."""
        if not (self.aux_enabled and AUX_ONSETS in batch):
            return self._logits(params, batch, dropout_rng), None
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        net_params = {k: v for k, v in params.items() if k != AUX_HEADS}
        encoded, logits = self.module.apply(
            {"params": net_params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
            batch["decoder_target_tokens"], enable_dropout=dropout_rng is not None, rngs=rngs,
            method=network.Transformer.encode_and_decode)
        onset_logits, frame_logits = network.FrameHeads().apply({"params": params[AUX_HEADS]}, encoded)
        return logits, {"aux_onset_loss": frame_bce(onset_logits, batch[AUX_ONSETS]),
                        "aux_frame_loss": frame_bce(frame_logits, batch[AUX_FRAMES])}

    def _normalizing_factor(self, targets: Array, weights: Array) -> float | Array | None:
        factor = self.loss_normalizing_factor
        if factor == "NUM_REAL_TARGET_TOKENS":
            return jnp.maximum(jnp.sum(weights), 1.0)
        if factor == "NUM_TOTAL_TARGET_TOKENS":
            return float(np.prod(targets.shape))
        return factor

    def _loss_and_metrics(self, logits: Array, batch: Batch, aux: dict[str, Array] | None = None
                          ) -> tuple[Array, dict[str, Array]]:
        targets = batch["decoder_target_tokens"]
        weights = batch.get("decoder_loss_weights")
        weights = (targets > 0).astype(jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
        loss, z_loss, weight_sum = compute_weighted_cross_entropy(
            logits, targets, weights, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
            loss_normalizing_factor=self._normalizing_factor(targets, weights))
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights
        metrics = {"loss": loss, "z_loss": z_loss, "cross_ent_loss": loss - z_loss,
                   "accuracy": jnp.sum(correct) / jnp.maximum(weight_sum, 1.0), "num_tokens": weight_sum}
        if aux is not None:
            factor = self._normalizing_factor(targets, weights)
            aux = {k: v if factor is None else v / factor for k, v in aux.items()}
            loss = loss + self.aux_frame_loss_weight * (aux["aux_onset_loss"] + aux["aux_frame_loss"])
            metrics.update(aux, loss=loss)
        return loss, metrics

    def loss_fn(self, params: Any, batch: Batch, dropout_rng: Array | None) -> tuple[Array, dict[str, Array]]:
        """(loss, metrics{loss, z_loss, cross_ent_loss, accuracy, num_tokens}); dropout on iff dropout_rng is given.

        loss is summed over weighted target tokens (divided by loss_normalizing_factor when set). With the auxiliary
        heads on, loss also holds aux_frame_loss_weight * (aux_onset_loss + aux_frame_loss), both in the metrics."""
        if self.aux_enabled and AUX_ONSETS not in batch:
            raise ValueError(f"aux_frame_loss_weight={self.aux_frame_loss_weight} needs frame targets "
                             f"({AUX_ONSETS!r}, {AUX_FRAMES!r}) in the training batch: set the gin macro "
                             "AUX_FRAME_LOSS_WEIGHT (the data pipeline makes them when it is > 0)")
        logits, aux = self._logits_and_aux(params, batch, dropout_rng)
        return self._loss_and_metrics(logits, batch, aux)

    def eval_fn(self, params: Any, batch: Batch) -> dict[str, Array]:
        """Deterministic metrics (same keys as loss_fn; aux_* only for batches with frame targets)."""
        logits, aux = self._logits_and_aux(params, batch, None)
        return self._loss_and_metrics(logits, batch, aux)[1]

    def score_batch(self, params: Any, batch: Batch) -> Array:
        """Per-example summed log-likelihood of the targets [B] (no z-loss, no smoothing)."""
        logits = self._logits(params, batch, None)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        token_ll = jnp.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
        weights = batch.get("decoder_loss_weights")
        weights = (batch["decoder_target_tokens"] > 0) if weights is None else weights
        return jnp.sum(token_ll * weights, axis=-1)

    # ----- prediction -----
    def predict_batch(self, params: Any, batch: Batch, *, max_decode_len: int, temperature: float = 0.0,
                      top_k: int = 0, rng: Array | None = None) -> Array:
        """Decoded target ids int32 [B, max_decode_len]: greedy by default, sampling when temperature > 0.

        Encodes once, then runs the KV-cached decoder in a jitted `lax.while_loop` that stops when every row has
        emitted EOS (=1); positions after a row's EOS hold PAD (=0)."""
        return decoding.decode(self.module, params, batch["encoder_input_tokens"], max_decode_len=max_decode_len,
                               temperature=temperature, top_k=top_k, rng=rng)
