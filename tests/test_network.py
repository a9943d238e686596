"""Tests for mt3.models.network / layers: MT3's exact parameter counts, logical axes, masks, frontends, dtypes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mt3.models import layers, models, network

REPO = Path(__file__).resolve().parents[1]
LOGICAL_NAMES = {"vocab", "embed", "mlp", "heads", "kv", "joined_kv", "mel"}


def tiny_config(**overrides) -> network.T5Config:
    kwargs = dict(vocab_size=40, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48, num_encoder_layers=1,
                  num_decoder_layers=1, dropout_rate=0.0, input_depth=24, input_frontend="features")
    kwargs.update(overrides)
    return network.T5Config(**kwargs)


def random_batch(config: network.T5Config, batch: int = 2, length: int = 6, targets: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    enc = jnp.asarray(rng.normal(size=(batch, length, config.encoder_input_depth)), jnp.float32)
    tgt = jnp.asarray(rng.integers(2, config.vocab_size, size=(batch, targets)), jnp.int32)
    inp = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), tgt[:, :-1]], axis=1)
    return enc, inp, tgt


def test_mt3_small_parameter_counts_are_exact():
    """REFERENCE §5.2: 45,896,704 params with 1536 rows, 46,027,776 with 1664; per-layer counts as published."""
    model = models.ContinuousInputsEncoderDecoderModel(network.Transformer(network.T5Config()))
    shapes = model.abstract_params()  # jax.eval_shape: nothing materialised
    assert models.count_params(shapes) == 45_896_704
    assert models.count_params(shapes["encoder"]["layers_0"]) == 2_360_320
    assert models.count_params(shapes["decoder"]["layers_0"]) == 3_147_264
    assert models.count_params(shapes["encoder"]["continuous_inputs_projection"]) == 262_144
    assert shapes["decoder"]["token_embedder"]["embedding"].shape == (1536, 512)
    assert shapes["decoder"]["logits_dense"]["kernel"].shape == (512, 1536)  # untied from the embedding
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
    ismir = network.T5Config(vocab_size=1664, input_frontend="features")
    assert models.expected_param_count(ismir) == 46_027_776


def _preset_configs() -> dict[str, dict]:
    """T5Config kwargs bound by each model preset, parsed by gin in a fresh interpreter (no registry clashes).

    model_tiny.gin / model_base.gin only override sizes after model_small.gin (which train.gin includes); 'tiny_1664'
    checks that a preset's NUM_EMBEDDINGS survives the size override, 'tiny_vb127' that NUM_EMBEDDINGS follows the
    vocabulary (MT3's model.gin derives it from the codec: 1536 rows for 1 velocity bin, 1664 for 127)."""
    code = """
import dataclasses, json, sys, gin
from mt3 import configurables
configurables.register([configurables.MODEL])
out = {}
for name, files, bindings in [('small', ['model_small'], []), ('tiny', ['model_small', 'model_tiny'], []),
                              ('base', ['model_small', 'model_base'], []),
                              ('tiny_1664', ['model_small', 'model_tiny'], ['NUM_EMBEDDINGS = 1664']),
                              ('tiny_vb127', ['model_small', 'model_tiny'], ['NUM_VELOCITY_BINS = 127'])]:
    gin.clear_config()
    gin.parse_config_file(f'gin/{files[0]}.gin')
    gin.parse_config(bindings)
    for f in files[1:]:
        gin.parse_config_file(f'gin/{f}.gin')
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
    cfg = model.module.config
    out[name] = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    out[name]['z_loss'] = model.z_loss
json.dump(out, sys.stdout)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_gin_presets_parse_and_counts_agree_with_config_arithmetic():
    presets = _preset_configs()
    assert presets["small"]["emb_dim"] == 512 and presets["small"]["num_heads"] == 6
    assert presets["base"]["emb_dim"] == 768 and presets["base"]["num_encoder_layers"] == 12
    assert presets["tiny"]["vocab_size"] == 1536 and presets["tiny_1664"]["vocab_size"] == 1664
    assert presets["tiny_vb127"]["vocab_size"] == 1664  # derived, not typed
    counts = {}
    for name, kwargs in presets.items():
        assert kwargs.pop("z_loss") == pytest.approx(1e-4)
        config = network.T5Config(**kwargs)
        model = models.ContinuousInputsEncoderDecoderModel(network.Transformer(config))
        counts[name] = models.count_params(model.abstract_params())
        assert counts[name] == models.expected_param_count(config), name
    assert counts["small"] == 45_896_704
    assert counts["tiny"] < 3_000_000 < counts["small"] < counts["base"]


def test_every_parameter_has_logical_axes():
    model = models.ContinuousInputsEncoderDecoderModel(network.Transformer(tiny_config()))
    specs = model.params_logical_axes()
    shapes = model.abstract_params()
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
    flat_specs = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0]
    flat_shapes = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])
    assert len(flat_specs) == len(flat_shapes)
    for path, spec in flat_specs:
        assert len(spec) == flat_shapes[path].ndim, path
        assert set(spec) <= LOGICAL_NAMES, (path, spec)
    assert tuple(specs["decoder"]["token_embedder"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["decoder"]["logits_dense"]["kernel"]) == ("embed", "vocab")
    assert tuple(specs["encoder"]["continuous_inputs_projection"]["kernel"]) == ("mel", "embed")
    attention = specs["decoder"]["layers_0"]["encoder_decoder_attention"]
    assert tuple(attention["query"]["kernel"]) == ("embed", "joined_kv")
    assert tuple(attention["out"]["kernel"]) == ("joined_kv", "embed")
    assert tuple(specs["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]) == ("mlp", "embed")


def test_forward_under_mesh_and_logical_rules_matches_plain_forward():
    """Activation constraints resolve against a ('data', 'model') mesh with T5X-style rules."""
    import flax.linen as nn
    from jax.sharding import Mesh

    config = tiny_config()
    module = network.Transformer(config)
    model = models.ContinuousInputsEncoderDecoderModel(module)
    params = jax.jit(model.init_params)(jax.random.PRNGKey(0))
    enc, inp, tgt = random_batch(config)
    rules = [("batch", "data"), ("vocab", "model"), ("mlp", "model"), ("heads", "model"), ("joined_kv", "model"),
             ("embed", None), ("length", None), ("kv", None), ("mel", None)]
    forward = jax.jit(lambda p: module.apply({"params": p}, enc, inp, tgt, enable_dropout=False))
    plain = forward(params)
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    with mesh, nn.logical_axis_rules(rules):
        sharded = jax.jit(lambda p: module.apply({"params": p}, enc, inp, tgt, enable_dropout=False))(params)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(plain), atol=1e-6)


def test_sinusoid_table_layout():
    d, length = 8, 50
    table = layers.sinusoid_table(length, d)
    for pos in (0, 1, 17, 49):
        for i in range(d // 2):
            rate = 10000.0 ** (-i / (d // 2 - 1))
            assert table[pos, i] == pytest.approx(math.sin(pos * rate), abs=1e-6)
            assert table[pos, d // 2 + i] == pytest.approx(math.cos(pos * rate), abs=1e-6)
    assert table[3, d // 2 - 1] == pytest.approx(math.sin(3 * 1e-4), abs=1e-7)  # slowest timescale is 1/10000


def test_rms_norm_matches_formula():
    x = np.random.default_rng(1).normal(size=(3, 5, 16)).astype(np.float32)
    norm = layers.RMSNorm()
    scale = np.linspace(0.5, 2.0, 16).astype(np.float32)
    params = {"params": {"scale": scale}}
    expected = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(np.asarray(norm.apply(params, x)), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config(dropout_rate=0.2)
    module = network.Transformer(config)
    params = jax.jit(models.ContinuousInputsEncoderDecoderModel(module).init_params)(jax.random.PRNGKey(0))
    return config, module, params


def test_decoder_is_causal_and_encoder_sees_every_frame(tiny):
    config, module, params = tiny
    enc, inp, tgt = random_batch(config)
    forward = jax.jit(lambda e, i, t: module.apply({"params": params}, e, i, t, enable_dropout=False))
    base = np.asarray(forward(enc, inp, tgt))
    assert base.shape == (2, 7, config.vocab_size) and base.dtype == np.float32
    changed = np.asarray(forward(enc, inp.at[:, 4].set(3), tgt))
    np.testing.assert_allclose(changed[:, :4], base[:, :4], atol=1e-6)
    assert np.abs(changed[:, 4:] - base[:, 4:]).max() > 1e-4
    # No encoder padding mask: the last frame influences every output position.
    changed_enc = np.asarray(forward(enc.at[:, -1].set(0.0), inp, tgt))
    assert np.abs(changed_enc[:, 0] - base[:, 0]).max() > 1e-5


def test_dropout_off_is_deterministic_and_on_is_random(tiny):
    config, module, params = tiny
    enc, inp, tgt = random_batch(config)
    run = jax.jit(lambda key, on: module.apply({"params": params}, enc, inp, tgt, enable_dropout=on,
                                               rngs={"dropout": key}), static_argnums=1)
    off_a, off_b = run(jax.random.PRNGKey(1), False), run(jax.random.PRNGKey(2), False)
    np.testing.assert_array_equal(np.asarray(off_a), np.asarray(off_b))
    on_a, on_b = run(jax.random.PRNGKey(1), True), run(jax.random.PRNGKey(2), True)
    assert np.abs(np.asarray(on_a) - np.asarray(on_b)).max() > 1e-4
    np.testing.assert_array_equal(np.asarray(on_a), np.asarray(run(jax.random.PRNGKey(1), True)))


def test_bfloat16_forward_is_close_to_float32(tiny):
    config, module, params = tiny
    bf16 = network.Transformer(tiny_config(dropout_rate=0.2, dtype="bfloat16"))
    enc, inp, tgt = random_batch(config)
    forward = lambda net: jax.jit(lambda p: net.apply({"params": p}, enc, inp, tgt, enable_dropout=False))(params)
    f32_logits = np.asarray(forward(module))
    bf16_logits = forward(bf16)
    encoded = jax.jit(lambda p: bf16.apply({"params": p}, enc, enable_dropout=False, method=bf16.encode))(params)
    assert encoded.dtype == jnp.bfloat16 and bf16_logits.dtype == jnp.float32
    err = np.abs(np.asarray(bf16_logits) - f32_logits)
    assert err.max() < 0.05 * np.abs(f32_logits).max() + 0.05
    assert (np.argmax(np.asarray(bf16_logits), -1) == np.argmax(f32_logits, -1)).mean() > 0.8


def test_frames_frontend_equals_features_on_its_log_mel():
    """The default frontend computes MT3's log-mel from raw frames inside the network (mt3.spectrograms)."""
    from mt3 import spectrograms

    frames_cfg = tiny_config(input_depth=512, input_frontend="frames")
    features_cfg = tiny_config(input_depth=512, input_frontend="features")
    frames_net, features_net = network.Transformer(frames_cfg), network.Transformer(features_cfg)
    t = np.arange(16 * 128) / 16000.0
    audio = np.stack([0.3 * np.sin(2 * np.pi * 440.0 * t), 0.2 * np.sin(2 * np.pi * 131.0 * t) * np.exp(-t)])
    frames = jnp.asarray(audio.reshape(2, 16, 128), jnp.float32)  # [B, L=16, 128]
    params = jax.jit(models.ContinuousInputsEncoderDecoderModel(frames_net).init_params)(jax.random.PRNGKey(3))
    log_mel = spectrograms.compute_spectrogram(jnp.asarray(audio, jnp.float32))
    assert log_mel.shape == (2, 16, 512)
    encode = lambda net, x: jax.jit(lambda p: net.apply({"params": p}, x, enable_dropout=False, method=net.encode))(
        params)
    encoded_frames, encoded_mel = encode(frames_net, frames), encode(features_net, log_mel)
    assert encoded_frames.shape == (2, 16, 32)
    np.testing.assert_allclose(np.asarray(encoded_frames), np.asarray(encoded_mel), atol=1e-4)
    with pytest.raises(ValueError, match="encoder_input_tokens"):
        frames_net.apply({"params": params}, log_mel, enable_dropout=False, method=frames_net.encode)


def test_config_validation_names_allowed_values():
    with pytest.raises(ValueError, match="bfloat16"):
        tiny_config(dtype="float16")
    with pytest.raises(ValueError, match="features"):
        tiny_config(input_frontend="mel")
    with pytest.raises(ValueError, match="emb_dim"):
        tiny_config(emb_dim=0)
    with pytest.raises(ValueError, match="dropout_rate"):
        tiny_config(dropout_rate=1.0)


def test_conv_frontend_counts_axes_and_default_tree():
    """'conv' adds the conv stack and widens the projection; 'dense' (the default) is MT3's tree, untouched."""
    config = tiny_config(encoder_frontend="conv", conv_channels=4, conv_freq_pool=4)
    model = models.ContinuousInputsEncoderDecoderModel(network.Transformer(config))
    shapes = model.abstract_params()
    assert models.count_params(shapes) == models.expected_param_count(config)
    conv = shapes["encoder"]["conv_frontend"]
    assert conv["conv_0_kernel"].shape == (3, 7, 1, 4) and conv["conv_1_kernel"].shape == (3, 5, 4, 4)
    assert shapes["encoder"]["continuous_inputs_projection"]["kernel"].shape == (24 // 4 * 4, 32)
    specs = model.params_logical_axes()["encoder"]["conv_frontend"]
    assert tuple(specs["conv_1_kernel"]) == layers.CONV_KERNEL_AXES and tuple(specs["conv_0_bias"]) == ("conv_out",)
    dense = models.ContinuousInputsEncoderDecoderModel(network.Transformer(tiny_config())).abstract_params()
    assert "conv_frontend" not in dense["encoder"]
    assert network.T5Config().encoder_frontend == "dense"
    with pytest.raises(ValueError, match="conv_freq_pool"):
        tiny_config(encoder_frontend="conv", conv_freq_pool=5)
    with pytest.raises(ValueError, match="dense"):
        tiny_config(encoder_frontend="cqt")


def test_conv_frontend_is_local_in_frequency_and_time():
    """The pitch prior: a change in one mel bin of one frame reaches only nearby pooled bins and frames (3x7 conv,
    pool 4, 3x5 conv: +-3 bins then +-2 pooled bins; +-1 frame twice)."""
    frontend = layers.ConvFrontend(channels=4, freq_pool=4)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 12, 64)), jnp.float32)
    params = frontend.init(jax.random.PRNGKey(0), x)
    base = np.asarray(frontend.apply(params, x)).reshape(12, 16, 4)
    moved = np.asarray(frontend.apply(params, x.at[0, 6, 30].add(5.0))).reshape(12, 16, 4)
    changed = np.argwhere(np.abs(moved - base).max(-1) > 0)
    assert len(changed) > 0
    assert changed[:, 0].min() >= 4 and changed[:, 0].max() <= 8  # frames 6 +- 2
    assert changed[:, 1].min() >= (30 - 3) // 4 - 2 and changed[:, 1].max() <= (30 + 3) // 4 + 2


def test_conv_frontend_trains_end_to_end_from_frames():
    config = tiny_config(encoder_frontend="conv", input_depth=512, input_frontend="frames")
    model = models.ContinuousInputsEncoderDecoderModel(network.Transformer(config))
    params = jax.jit(model.init_params)(jax.random.PRNGKey(0))
    enc = jnp.asarray(np.random.default_rng(1).normal(scale=0.1, size=(2, 8, 128)), jnp.float32)
    _, inp, tgt = random_batch(config, length=8)
    batch = {"encoder_input_tokens": enc, "decoder_input_tokens": inp, "decoder_target_tokens": tgt}
    grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, None)[0]))(params)
    for g in jax.tree.leaves(grads["encoder"]["conv_frontend"]):
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0


def test_lever_presets_only_set_their_knobs():
    """gin/levers/*.gin read after a preset turn on exactly their lever (and include nothing)."""
    code = """
import json, sys, gin
from mt3 import configurables
configurables.register([configurables.MODEL])
out = {}
for lever in ('', 'levers/aux_loss.gin', 'levers/conv_frontend.gin'):
    gin.clear_config()
    for f in ['model_small.gin', 'model_tiny.gin'] + ([lever] if lever else []):
        gin.parse_config_file('gin/' + f)
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
    cfg = model.module.config
    out[lever or 'base'] = [model.aux_frame_loss_weight, cfg.encoder_frontend, cfg.conv_channels, cfg.emb_dim]
json.dump(out, sys.stdout)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout)
    assert out["base"] == [0.0, "dense", 8, 128]
    assert out["levers/aux_loss.gin"] == [10.0, "dense", 8, 128]
    assert out["levers/conv_frontend.gin"] == [0.0, "conv", 8, 128]
    for name in ("aux_loss", "conv_frontend"):
        lines = (REPO / "gin" / "levers" / f"{name}.gin").read_text().splitlines()
        assert not [line for line in lines if line.startswith(("include", "import"))]
