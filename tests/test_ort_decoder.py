"""mt3.models.ort_decoder: the ONNX Runtime decoder step gives the Flax decoder's logits, and its greedy compacting
loop gives `decoding.greedy_decode_compacting`'s tokens, steps and log-probs on the bundled model's real audio."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mt3 import model_loading, pretrained
from mt3.models import decoding, models, network, ort_decoder

MAX_DECODE_LEN = 256  # the bundled model's InferenceConfig default
FIRST_LEN = 16  # small, so every batch grows its cache several times (16 -> 256)


def small_config(**overrides) -> network.T5Config:
    kwargs = dict(vocab_size=96, emb_dim=64, num_heads=2, head_dim=32, mlp_dim=128, num_encoder_layers=2,
                  num_decoder_layers=2, dropout_rate=0.0, input_depth=24, input_frontend="features")
    kwargs.update(overrides)
    return network.T5Config(**kwargs)


@pytest.fixture(scope="module")
def small():
    module = network.Transformer(small_config())
    params = jax.jit(models.ContinuousInputsEncoderDecoderModel(module).init_params)(jax.random.PRNGKey(0))
    enc = jnp.asarray(np.random.default_rng(0).normal(size=(5, 7, 24)), jnp.float32)
    return module, params, enc


@pytest.fixture(scope="module")
def bundled():
    """The model shipped in the package and 16 consecutive segments of a real piece (a string
    quartet from music21's corpus, synthesised): rows end at different steps, so the batch compacts."""
    from conftest import music21_note_sequence
    from data_fixtures import synth

    im = model_loading.load_inference_model(pretrained.BUNDLED_DIR / pretrained.DEFAULT_MODEL_NAME)
    audio = synth(music21_note_sequence("string_quartet"))
    frames = im.segment_audio(audio[: int(17 * im.segment_seconds * im.sample_rate)]).frames[:16]
    assert frames.shape == (16, im.input_frames, im.hop_width)
    return im, frames


def _check_step_logits(module, params, encoder_inputs, steps: int) -> None:
    """`steps` decode steps on random tokens: ORT logits == Flax decode-mode logits (as `_greedy_chunk` calls it),
    and the keys/values ORT hands back land where Flax's cache writes them."""
    batch, layers_n = encoder_inputs.shape[0], module.config.num_decoder_layers
    cache = decoding._encode_and_init_cache(module, params, encoder_inputs, cache_len=steps)
    allowed = np.ones((batch, module.config.vocab_size), bool)
    rows = ort_decoder._initial_rows(cache, layers_n, allowed, steps)
    dec = ort_decoder.OrtDecoder(module, params)
    tokens = np.random.default_rng(1).integers(0, module.config.vocab_size, size=(batch, steps)).astype(np.int32)
    encoded = jnp.zeros((batch, 1, module.config.emb_dim))
    for step in range(steps):
        token_Bx1 = jnp.asarray(tokens[:, step:step + 1])
        want, variables = module.apply({"params": params, "cache": cache}, encoded, token_Bx1,
                                       decoder_positions=jnp.full((batch, 1), step, jnp.int32), enable_dropout=False,
                                       decode=True, mutable=["cache"], method=module.decode)
        cache = variables["cache"]
        rows.token_B[:] = tokens[:, step]
        got = dec.step_logits(rows, step)
        want = np.asarray(want[:, 0])
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale, err_msg=f"step {step}")
    for i in range(layers_n):
        flax_self = cache["decoder"][f"layers_{i}"]["self_attention"]
        np.testing.assert_allclose(rows.self_keys[i], np.asarray(flax_self["cached_key"]), atol=1e-5)
        np.testing.assert_allclose(rows.self_values[i], np.asarray(flax_self["cached_value"]), atol=1e-5)


def test_step_logits_equal_flax_on_a_random_model(small):
    module, params, enc = small
    _check_step_logits(module, params, enc, steps=6)


def test_step_logits_equal_flax_on_the_bundled_model(bundled):
    im, frames = bundled
    _check_step_logits(im.model.module, im.params, frames[:4], steps=8)


@pytest.fixture(scope="module")
def xla_free(bundled):
    im, frames = bundled
    return decoding.greedy_decode_compacting(im.model.module, im.params, frames, max_decode_len=MAX_DECODE_LEN,
                                             first_len=FIRST_LEN, return_log_probs=True)


def _program_mask(im, batch: int) -> np.ndarray:
    """Rows alternately limited to violin (40) and to cello + flute (42, 73): a real `program_consistency` mask."""
    masks = [im.program_mask([40]), im.program_mask([42, 73])]
    return np.stack([masks[i % 2] for i in range(batch)])


@pytest.mark.parametrize("masked", [False, True], ids=["free", "program_mask"])
def test_greedy_compacting_gives_the_xla_decoders_tokens_on_real_audio(bundled, xla_free, masked, monkeypatch):
    im, frames = bundled
    module, params = im.model.module, im.params
    allowed = _program_mask(im, len(frames)) if masked else None
    if masked:
        want = decoding.greedy_decode_compacting(module, params, frames, max_decode_len=MAX_DECODE_LEN,
                                                 first_len=FIRST_LEN, allowed=allowed, return_log_probs=True)
    else:
        want = xla_free
    calls = {"grow": [], "take": []}
    grow, take = ort_decoder._grow, ort_decoder._take_rows
    monkeypatch.setattr(ort_decoder, "_grow", lambda rows, length: calls["grow"].append(length) or grow(rows, length))
    monkeypatch.setattr(ort_decoder, "_take_rows",
                        lambda rows, keep: calls["take"].append(len(keep)) or take(rows, keep))
    ids, steps, log_probs = ort_decoder.OrtDecoder(module, params).greedy_decode_compacting(
        frames, max_decode_len=MAX_DECODE_LEN, first_len=FIRST_LEN, allowed=allowed, return_log_probs=True)
    want_ids, want_steps, want_log_probs = want
    assert ids.dtype == np.int32 and ids.shape == (16, MAX_DECODE_LEN) and isinstance(steps, int)
    np.testing.assert_array_equal(ids, want_ids)
    assert steps == want_steps
    np.testing.assert_allclose(log_probs, want_log_probs, rtol=0, atol=1e-4)
    # the run really grew and compacted: cache 16 -> 32 -> ..., batch 16 -> 8 -> ...
    assert calls["grow"][:3] == [32, 64, 128] and calls["take"] and calls["take"][0] <= 8, calls
    ends = [int(np.flatnonzero(row == decoding.EOS_ID)[0]) for row in ids if decoding.EOS_ID in row]
    assert len(ends) >= 8 and max(ends) > 4 * FIRST_LEN
    if masked:
        assert all(allowed[r, ids[r]].all() for r in range(len(ids)))
        assert not np.array_equal(ids, xla_free[0])  # the mask changed what was decoded


def test_one_session_decodes_every_batch(small):
    module, params, enc = small
    decoder = ort_decoder.OrtDecoder(module, params)
    session = decoder.session
    first = decoder.greedy_decode_compacting(enc, max_decode_len=12, first_len=4)
    again = decoder.greedy_decode_compacting(enc[:3], max_decode_len=12, first_len=4)
    assert decoder.session is session
    want = decoding.greedy_decode_compacting(module, params, enc, max_decode_len=12, first_len=4)
    want_3 = decoding.greedy_decode_compacting(module, params, enc[:3], max_decode_len=12, first_len=4)
    for got, expected in ((first, want), (again, want_3)):
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[1] == expected[1]


def test_refuses_bfloat16_step_masks_and_bad_arguments(small):
    module, params, enc = small
    with pytest.raises(ValueError, match="float32 only"):
        ort_decoder.decoder_step_model(params, small_config(dtype="bfloat16"))
    dec = ort_decoder.OrtDecoder(module, params)
    with pytest.raises(NotImplementedError, match="step_mask"):
        dec.greedy_decode_compacting(enc, max_decode_len=8, step_mask=object())
    with pytest.raises(ValueError, match="allowed must be"):
        dec.greedy_decode_compacting(enc, max_decode_len=8, allowed=np.ones((2, 96), bool))
    with pytest.raises(ValueError, match="max_decode_len"):
        dec.greedy_decode_compacting(enc, max_decode_len=0)


def test_importing_the_module_needs_no_onnx():
    code = ("import sys; sys.modules['onnx'] = sys.modules['onnxruntime'] = None; "
            "import mt3.models.ort_decoder as m; print(m.OPSET)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == str(ort_decoder.OPSET), result.stderr[-2000:]


def test_transcribe_with_the_onnxruntime_runtime_gives_the_same_midi(tmp_path):
    """`mt3 transcribe --decoder-runtime onnxruntime` through the whole CLI (segmenting, batching, stitching): the
    same notes as the default XLA decoder on a real piece (a synthesised Bach chorale, 20 s)."""
    import soundfile as sf
    from conftest import music21_note_sequence
    from data_fixtures import synth

    from mt3.cli import main

    audio = synth(music21_note_sequence("bach_chorale"))[: 20 * 16000]
    sf.write(tmp_path / "chorale.wav", audio, 16000)
    outputs = {}
    for runtime in ("xla", "onnxruntime"):
        out = tmp_path / runtime
        assert main(["transcribe", str(tmp_path / "chorale.wav"), "-o", str(out), "--no-progress", "--csv",
                     "--decoder-runtime", runtime]) == 0
        outputs[runtime] = (out / "chorale.notes.csv").read_text()
    assert outputs["xla"].count("\n") > 20 and outputs["onnxruntime"] == outputs["xla"]


def test_the_runtime_is_checked_where_it_is_configured():
    from mt3.inference import InferenceConfig

    assert InferenceConfig(decoder_runtime="onnxruntime").decoder_runtime == "onnxruntime"
    with pytest.raises(ValueError, match="decoder_runtime must be one of"):
        InferenceConfig(decoder_runtime="tensorrt")
    for bad in (dict(temperature=0.5), dict(compact_decoding=False), dict(decode_mask="invalid")):
        with pytest.raises(ValueError, match="runs greedy compacting decoding"):
            InferenceConfig(decoder_runtime="onnxruntime", **bad)


def test_auto_takes_onnxruntime_where_it_applies_and_xla_elsewhere(bundled, monkeypatch):
    """The default `decoder_runtime = 'auto'`: the bundled (float32) model on JAX's CPU decodes greedily with ONNX
    Runtime; sampling, a decode mask, a bfloat16 model or a missing onnxruntime keep XLA."""
    import dataclasses
    import importlib.util

    from mt3.inference import InferenceConfig, InferenceModel

    im, _ = bundled
    assert InferenceConfig().decoder_runtime == "auto" and im.decoder_runtime == "onnxruntime"
    runtime = lambda **kw: InferenceModel(im.model, im.params, spec=im.spec,
                                          config=dataclasses.replace(im.config, **kw)).decoder_runtime
    assert runtime(temperature=0.5) == runtime(decode_mask="note_state") == runtime(compact_decoding=False) == "xla"
    assert runtime(decoder_runtime="xla") == "xla"
    assert "float32 only" in ort_decoder.unusable_reason(small_config(dtype="bfloat16"))
    assert ort_decoder.unusable_reason(small_config()) is None
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else
                        find_spec(name, *a))
    assert "onnxruntime not installed" in ort_decoder.unusable_reason(small_config())
    assert runtime() == "xla"
