"""The bundled-model format (mt3.pretrained): export from a trained model dir, load with its checksum, decode like the
orbax checkpoint it came from; and the model shipped in the package transcribes from any directory with no flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from test_inference import build_tiny_model

from mt3 import inference, pretrained
from mt3.commands.export_model import export_model
from mt3.errors import InputError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tiny = build_tiny_model(tmp_path_factory)
    out = tmp_path_factory.mktemp("bundled") / "tiny_bundle"
    info = export_model(tiny.model_dir, out, name="tiny_bundle", extra_info={"recipe": "test"})
    return tiny, out, info


def test_export_writes_the_bundled_format(exported):
    tiny, out, info = exported
    assert pretrained.is_bundled_model(out) and not pretrained.is_bundled_model(tiny.model_dir)
    assert info["step"] == inference.checkpoint_steps(tiny.model_dir)[-1]
    assert json.loads((out / "model.json").read_text())["params_sha256"] == pretrained.sha256_of(out / "params.npz")
    assert oct((out / "params.npz").stat().st_mode & 0o777) == "0o644"
    # bf16: two bytes per parameter plus the npz directory
    assert (out / "params.npz").stat().st_size < 2 * info["num_params"] + 64 * 1024


def test_bundled_params_are_the_checkpoint_rounded_to_bfloat16_and_decode_the_same(exported):
    tiny, out, _ = exported
    orbax_model = inference.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
    bundled = inference.load_inference_model(out, gin_bindings=tiny.bindings)
    assert bundled.info["step"] == orbax_model.info["step"]
    rounded = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), orbax_model.params)
    for a, b in zip(jax.tree.leaves(rounded), jax.tree.leaves(bundled.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    from mt3.audio import load_audio

    audio = load_audio(tiny.wav(4))
    rounded_model = inference.InferenceModel(orbax_model.model, jax.device_put(rounded), spec=orbax_model.spec,
                                             config=orbax_model.config, info=orbax_model.info)
    ours = bundled.transcribe(audio)
    reference = rounded_model.transcribe(audio)
    assert [(n.start_time, n.pitch, n.program) for n in ours.ns.notes] == \
        [(n.start_time, n.pitch, n.program) for n in reference.ns.notes]


def test_corrupt_or_mismatched_bundles_are_refused(exported, tmp_path):
    import shutil

    tiny, out, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    data = (broken / "params.npz").read_bytes()
    (broken / "params.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="checksum"):
        inference.load_inference_model(broken, gin_bindings=tiny.bindings)
    with pytest.raises(InputError, match="step"):
        inference.load_inference_model(out, gin_bindings=tiny.bindings, step=1)


def test_default_model_dir_prefers_a_bundled_model(exported, monkeypatch, tmp_path):
    _, out, _ = exported
    monkeypatch.setattr(pretrained, "BUNDLED_DIR", out.parent)
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL_NAME", out.name)
    assert pretrained.default_model_dir() == out
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL_NAME", "no_such_model")
    assert pretrained.default_model_dir() == Path(pretrained.FALLBACK_RUN_DIR)


SHIPPED = pretrained.BUNDLED_DIR / pretrained.DEFAULT_MODEL_NAME


def test_shipped_model_transcribes_from_any_directory_with_no_flags(tmp_path):
    """The package's own model: checksum holds, size within 25 MB, and `mt3 transcribe` from an unrelated working
    directory, with no --checkpoint, writes a MIDI with notes for real corpus-style audio."""
    from conftest import music21_note_sequence
    from data_fixtures import synth

    from mt3.audio import write_wav

    assert pretrained.is_bundled_model(SHIPPED), f"no model bundled at {SHIPPED}"
    info = pretrained.read_info(SHIPPED)
    assert info["params_sha256"] == pretrained.sha256_of(SHIPPED / "params.npz")
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 25 * 1024 * 1024
    ns = music21_note_sequence("bach_chorale")
    write_wav(tmp_path / "chorale.wav", synth(ns, seconds=6.0))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "mt3.cli", "transcribe", "chorale.wav", "-o", "out"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert info["name"] in result.stdout + result.stderr
    from mt3.midi_io import load_midi

    midi = next((tmp_path / "out").rglob("*.mid"))
    assert len(load_midi(midi).notes) > 0
