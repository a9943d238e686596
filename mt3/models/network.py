"""MT3's T5.1.1-style encoder-decoder on spectrogram inputs (Flax), with a KV-cached decode path.

Encoder: raw 128-sample frames -> log-mel (`mt3.spectrograms.spectrogram_from_frames`, so training, eval, inference
and serving share one frontend) -> bias-free projection to emb_dim + fixed sinusoidal positions -> pre-norm layers.
There is no encoder padding mask (MT3 attends over padded frames too).
Decoder: token embedding + fixed sinusoidal positions -> causal self-attention, cross-attention, gated-GELU MLP ->
final RMS norm -> separate float32 `logits_dense`. No TensorFlow is imported here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mt3.models import layers

Array = jax.Array

INPUT_FRONTENDS = ("frames", "features")
# How the log-mel (or features) reach emb_dim: 'dense' is MT3's bias-free projection; 'conv' a small 2-D conv stack
# over (time, frequency) first, a pitch prior (layers.ConvFrontend), then the same projection of its feature maps.
ENCODER_FRONTENDS = ("dense", "conv")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Network hyperparameters. Defaults are MT3's `model.gin` size with the mt3 vocabulary (45,896,704 params).

    vocab_size is the number of embedding rows (the vocabulary size rounded up to a multiple of 128, e.g. 1536).
    input_frontend 'frames': encoder inputs are float32 [B, L, 128] raw samples turned into log-mel inside the
    network; 'features': encoder inputs are already [B, L, input_depth] features (tests, precomputed spectrograms).
    spectrogram_config is an `mt3.spectrograms.SpectrogramConfig` (None = its defaults).
    encoder_frontend 'dense' (MT3: log-mel -> projection) or 'conv' (log-mel -> `layers.ConvFrontend` with
    conv_channels channels and frequency pooling conv_freq_pool -> projection); 'dense' keeps MT3's parameter tree.
    dtype is the activation dtype ('float32' or 'bfloat16'); parameters, logits and softmax stay float32.
    """

    vocab_size: int = 1536
    emb_dim: int = 512
    num_heads: int = 6
    head_dim: int = 64
    mlp_dim: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    dropout_rate: float = 0.1
    dtype: str = "float32"
    input_depth: int = 512
    max_length: int = 2048
    input_frontend: str = "frames"
    spectrogram_config: Any = None
    encoder_frontend: str = "dense"
    conv_channels: int = 8
    conv_freq_pool: int = 4

    def __post_init__(self):
        for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
                     "num_decoder_layers", "input_depth", "max_length", "conv_channels", "conv_freq_pool"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"T5Config.{name} must be a positive int, got {value!r}")
        if self.emb_dim % 2 or self.emb_dim < 4:
            raise ValueError(f"T5Config.emb_dim must be even and >= 4 (sinusoidal positions), got {self.emb_dim}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        layers.canonical_dtype(self.dtype)  # validates
        if self.input_frontend not in INPUT_FRONTENDS:
            raise ValueError(f"T5Config.input_frontend must be one of {INPUT_FRONTENDS}, got {self.input_frontend!r}")
        if self.encoder_frontend not in ENCODER_FRONTENDS:
            raise ValueError(f"T5Config.encoder_frontend must be one of {ENCODER_FRONTENDS}, "
                             f"got {self.encoder_frontend!r}")
        if self.encoder_frontend == "conv" and self.input_depth % self.conv_freq_pool:
            raise ValueError(f"T5Config.conv_freq_pool ({self.conv_freq_pool}) must divide input_depth "
                             f"({self.input_depth})")

    @property
    def activation_dtype(self) -> jnp.dtype:
        return layers.canonical_dtype(self.dtype)

    @property
    def encoder_input_depth(self) -> int:
        """Last dimension of `encoder_input_tokens` the network expects."""
        return _spectrogram_config(self).hop_width if self.input_frontend == "frames" else self.input_depth


def _spectrogram_config(config: T5Config):
    from mt3 import spectrograms  # lazy: the frontend module is JAX/numpy only

    return config.spectrogram_config if config.spectrogram_config is not None else spectrograms.SpectrogramConfig()


class EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        cfg = self.config
        dtype = cfg.activation_dtype
        drop = lambda y: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
        y = layers.RMSNorm(dtype=dtype, name="pre_attention_layer_norm")(x)
        y = layers.MultiHeadDotProductAttention(cfg.num_heads, cfg.head_dim, dtype=dtype, dropout_rate=cfg.dropout_rate,
                                                name="attention")(y, y, None, deterministic=deterministic)
        x = x + drop(y)
        y = layers.RMSNorm(dtype=dtype, name="pre_mlp_layer_norm")(x)
        y = layers.MlpBlock(cfg.mlp_dim, dtype=dtype, dropout_rate=cfg.dropout_rate, name="mlp")(
            y, deterministic=deterministic)
        x = x + drop(y)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x: Array, encoded: Array, self_mask: Array | None, cross_mask: Array | None, *,
                 deterministic: bool, decode: bool, max_decode_length: int | None) -> Array:
        cfg = self.config
        dtype = cfg.activation_dtype
        drop = lambda y: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
        attention = lambda name, cross: layers.MultiHeadDotProductAttention(
            cfg.num_heads, cfg.head_dim, dtype=dtype, dropout_rate=cfg.dropout_rate, is_cross_attention=cross,
            name=name)
        y = layers.RMSNorm(dtype=dtype, name="pre_self_attention_layer_norm")(x)
        y = attention("self_attention", False)(y, y, self_mask, deterministic=deterministic, decode=decode,
                                               max_decode_length=max_decode_length)
        x = x + drop(y)
        y = layers.RMSNorm(dtype=dtype, name="pre_cross_attention_layer_norm")(x)
        y = attention("encoder_decoder_attention", True)(y, encoded, cross_mask, deterministic=deterministic,
                                                         decode=decode)
        x = x + drop(y)
        y = layers.RMSNorm(dtype=dtype, name="pre_mlp_layer_norm")(x)
        y = layers.MlpBlock(cfg.mlp_dim, dtype=dtype, dropout_rate=cfg.dropout_rate, name="mlp")(
            y, deterministic=deterministic)
        x = x + drop(y)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Encoder(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, encoder_input_tokens: Array, *, deterministic: bool) -> Array:
        cfg = self.config
        if encoder_input_tokens.ndim != 3 or encoder_input_tokens.shape[-1] != cfg.encoder_input_depth:
            raise ValueError(f"encoder_input_tokens must be [B, L, {cfg.encoder_input_depth}] for input_frontend="
                             f"{cfg.input_frontend!r}, got shape {encoder_input_tokens.shape}")
        length = encoder_input_tokens.shape[1]
        if length > cfg.max_length:
            raise ValueError(f"encoder length {length} exceeds max_length {cfg.max_length}")
        x = jnp.asarray(encoder_input_tokens, jnp.float32)
        if cfg.input_frontend == "frames":
            from mt3 import spectrograms

            spec_config = _spectrogram_config(cfg)
            if spec_config.num_mel_bins != cfg.input_depth:
                raise ValueError(f"T5Config.input_depth ({cfg.input_depth}) must equal the spectrogram's num_mel_bins "
                                 f"({spec_config.num_mel_bins})")
            x = spectrograms.spectrogram_from_frames(x, spec_config)
        x = nn.with_logical_constraint(x, ("batch", "length", "mel"))
        if cfg.encoder_frontend == "conv":  # [B, L, mel] -> [B, L, mel / pool * channels]
            x = layers.ConvFrontend(cfg.conv_channels, cfg.conv_freq_pool, dtype=cfg.activation_dtype,
                                    name="conv_frontend")(x)
        x = layers.DenseGeneral(cfg.emb_dim, ("mel", "embed"), dtype=cfg.activation_dtype,
                                kernel_init=layers.MLP_KERNEL_INIT, name="continuous_inputs_projection")(x)
        x = x + layers.FixedEmbed(cfg.emb_dim, cfg.max_length)(jnp.arange(length))[None]
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x.astype(cfg.activation_dtype), ("batch", "length", "embed"))
        for i in range(cfg.num_encoder_layers):
            x = EncoderLayer(cfg, name=f"layers_{i}")(x, deterministic=deterministic)
        x = layers.RMSNorm(dtype=cfg.activation_dtype, name="encoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Decoder(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, encoded: Array, decoder_input_tokens: Array, decoder_positions: Array, self_mask: Array | None,
                 cross_mask: Array | None, *, deterministic: bool, decode: bool,
                 max_decode_length: int | None) -> Array:
        cfg = self.config
        dtype = cfg.activation_dtype
        y = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=dtype, name="token_embedder")(decoder_input_tokens)
        y = y + layers.FixedEmbed(cfg.emb_dim, cfg.max_length)(decoder_positions)
        y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
        y = nn.with_logical_constraint(y.astype(dtype), ("batch", "length", "embed"))
        for i in range(cfg.num_decoder_layers):
            y = DecoderLayer(cfg, name=f"layers_{i}")(y, encoded, self_mask, cross_mask, deterministic=deterministic,
                                                      decode=decode, max_decode_length=max_decode_length)
        y = layers.RMSNorm(dtype=dtype, name="decoder_norm")(y)
        y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
        logits = layers.DenseGeneral(cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32,
                                     kernel_init=layers.MLP_KERNEL_INIT, name="logits_dense")(y)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
    """The MT3 encoder-decoder. `__call__` is teacher-forced; `encode` / `decode` serve cached decoding.

    Methods take `enable_dropout` (T5X's name); dropout needs a 'dropout' rng when it is on and dropout_rate > 0.
    """

    config: T5Config

    def setup(self):
        self.encoder = Encoder(self.config, name="encoder")
        self.decoder = Decoder(self.config, name="decoder")

    def encode(self, encoder_input_tokens: Array, *, enable_dropout: bool = True) -> Array:
        """[B, L, 128] frames (or [B, L, input_depth] features) -> encoded [B, L, emb_dim]."""
        return self.encoder(encoder_input_tokens, deterministic=not enable_dropout)

    def decode(self, encoded: Array, decoder_input_tokens: Array, decoder_target_tokens: Array | None = None, *,
               decoder_positions: Array | None = None, enable_dropout: bool = True, decode: bool = False,
               max_decode_length: int | None = None) -> Array:
        """Decoder logits float32 [B, T, vocab_size].

        Teacher-forced (decode=False): causal self-attention, plus the padding mask from `decoder_target_tokens > 0`
        for self- and cross-attention when targets are given (T5X masks). decode=True: one token per call with the
        'cache' collection mutable; `decoder_positions` [B, 1] are required, masks come from the cache index. The
        first decode=True call without a cache creates it (needs max_decode_length; see `decoding.init_cache`).
        """
        batch, length = decoder_input_tokens.shape
        if decode:
            if decoder_positions is None:
                raise ValueError("decoder_positions are required when decode=True")
            self_mask = cross_mask = None
        else:
            if length > self.config.max_length:
                raise ValueError(f"decoder length {length} exceeds max_length {self.config.max_length}")
            if decoder_positions is None:
                decoder_positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
            self_mask, cross_mask = layers.make_causal_mask(length), None
            if decoder_target_tokens is not None:
                valid = decoder_target_tokens > 0
                self_mask = layers.combine_masks(self_mask, layers.make_attention_mask(valid, valid))
                cross_mask = layers.make_attention_mask(valid, jnp.ones(encoded.shape[:2], bool))
        return self.decoder(encoded, decoder_input_tokens, decoder_positions, self_mask, cross_mask,
                            deterministic=not enable_dropout, decode=decode, max_decode_length=max_decode_length)

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 decoder_target_tokens: Array | None = None, *, enable_dropout: bool = True) -> Array:
        """Teacher-forced logits float32 [B, T, vocab_size]."""
        return self.encode_and_decode(encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                                      enable_dropout=enable_dropout)[1]

    def encode_and_decode(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                          decoder_target_tokens: Array | None = None, *, enable_dropout: bool = True
                          ) -> tuple[Array, Array]:
        """(encoded [B, L, emb_dim], teacher-forced logits): the auxiliary frame heads read the encoder output."""
        encoded = self.encode(encoder_input_tokens, enable_dropout=enable_dropout)
        return encoded, self.decode(encoded, decoder_input_tokens, decoder_target_tokens,
                                    enable_dropout=enable_dropout)


class FrameHeads(nn.Module):
    """Auxiliary onset and frame (pitch activity) logits float32 [B, L, 128] from the encoder output.

    Linear on purpose: the point is to make the encoder's own features carry pitch activity (dense supervision), not
    to learn a separate transcriber. Biases start at -4 (sigmoid ~0.02, about the share of active pitch cells), so the
    first steps do not spend themselves on learning sparsity. Training-only: inference and decoding never call them.
    """

    num_pitches: int = 128

    @nn.compact
    def __call__(self, encoded: Array) -> tuple[Array, Array]:
        def head(name: str) -> Array:
            logits = layers.DenseGeneral(self.num_pitches, ("embed", "mlp"), dtype=jnp.float32,
                                         kernel_init=layers.MLP_KERNEL_INIT, name=f"{name}_dense")(encoded)
            bias = self.param(f"{name}_bias", nn.with_logical_partitioning(nn.initializers.constant(-4.0), ("mlp",)),
                              (self.num_pitches,), jnp.float32)
            return logits + bias

        return head("onset"), head("frame")
