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
from helpers import build_tiny_model

from mt3 import inference, model_loading, pretrained
from mt3.commands.export_model import export_model
from mt3.errors import InputError
from mt3.training import checkpoints


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tiny = build_tiny_model(tmp_path_factory)
    out = tmp_path_factory.mktemp("bundled") / "tiny_bundle"
    info = export_model(tiny.model_dir, out, name="tiny_bundle", extra_info={"recipe": "test"})
    return tiny, out, info


def test_export_writes_the_bundled_format(exported):
    tiny, out, info = exported
    assert pretrained.is_bundled_model(out) and not pretrained.is_bundled_model(tiny.model_dir)
    assert info["step"] == checkpoints.complete_steps(tiny.model_dir)[-1]
    assert json.loads((out / "model.json").read_text())["params_sha256"] == pretrained.sha256_of(out / "params.npz")
    assert oct((out / "params.npz").stat().st_mode & 0o777) == "0o644"
    # bf16: two bytes per parameter plus the npz directory
    assert (out / "params.npz").stat().st_size < 2 * info["num_params"] + 64 * 1024


def test_bundled_params_are_the_checkpoint_rounded_to_bfloat16_and_decode_the_same(exported):
    tiny, out, _ = exported
    orbax_model = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
    bundled = model_loading.load_inference_model(out, gin_bindings=tiny.bindings)
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
        model_loading.load_inference_model(broken, gin_bindings=tiny.bindings)
    with pytest.raises(InputError, match="step"):
        model_loading.load_inference_model(out, gin_bindings=tiny.bindings, step=1)
    # fine-tuning from a bundle reads it through the same checks
    with pytest.raises(InputError, match="checksum"):
        checkpoints.read_stored_params(broken)
    with pytest.raises(InputError, match="holds step"):
        checkpoints.read_stored_params(out, step=1)


def test_default_model_dir_prefers_a_bundled_model(exported, monkeypatch, tmp_path):
    _, out, _ = exported
    monkeypatch.setattr(pretrained, "BUNDLED_DIR", out.parent)
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL_NAME", out.name)
    assert pretrained.default_model_dir() == out
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL_NAME", "no_such_model")
    assert pretrained.default_model_dir() == Path(pretrained.FALLBACK_RUN_DIR)


SHIPPED = pretrained.BUNDLED_DIR / pretrained.DEFAULT_MODEL_NAME


@pytest.mark.slow
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


def test_export_model_never_deletes_a_users_folder_and_needs_o(exported, tmp_path, capsys):
    """Issue 18's data loss: `export-model -o precious/` once replaced the whole folder, and no -o wrote into the
    package's own model. Now a non-empty non-bundle -o is refused (even with --overwrite) before the checkpoint is
    restored, -o is required, and --overwrite replaces a folder only when it is itself a bundle."""
    from mt3 import cli

    tiny, out, info = exported
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "thesis.txt").write_text("x")
    shipped_sha = pretrained.sha256_of(SHIPPED / "params.npz")
    for extra in ([], ["--overwrite"]):
        assert cli.main(["export-model", str(tiny.model_dir), "-o", str(precious), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(precious) in err and "not empty" in err, err
        assert (precious / "thesis.txt").read_text() == "x" and (precious / "sub").is_dir()
    with pytest.raises(SystemExit) as exc:  # no -o: a usage error, never the package's model
        cli.main(["export-model", str(tiny.model_dir)])
    assert exc.value.code == 2 and "-o" in capsys.readouterr().err
    assert pretrained.sha256_of(SHIPPED / "params.npz") == shipped_sha
    # an existing bundle: refused without --overwrite, replaced with it (an older step here)
    bundle = tmp_path / "bundle"
    assert cli.main(["export-model", str(tiny.model_dir), "-o", str(bundle), "--name", "b"]) == 0
    capsys.readouterr()
    assert cli.main(["export-model", str(tiny.model_dir), "-o", str(bundle)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    first_step = checkpoints.complete_steps(tiny.model_dir)[0]
    assert cli.main(["export-model", str(tiny.model_dir), "-o", str(bundle), "--overwrite",
                     "--step", str(first_step)]) == 0
    assert pretrained.read_info(bundle)["step"] == first_step
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle", "precious"]  # no temp folders left
    # a bundle that also holds someone's file is not "itself a bundle"
    (bundle / "notes.txt").write_text("mine")
    assert cli.main(["export-model", str(tiny.model_dir), "-o", str(bundle), "--overwrite"]) == 2
    assert (bundle / "notes.txt").read_text() == "mine"
    # an -o that cannot be created is named before any work
    (tmp_path / "a_file").write_text("")
    assert cli.main(["export-model", str(tiny.model_dir), "-o", str(tmp_path / "a_file" / "m")]) == 2
    assert "a_file" in capsys.readouterr().err.splitlines()[-1]


def test_average_last_exports_the_mean_of_the_newest_checkpoints(exported, tmp_path):
    tiny, _, _ = exported
    steps = checkpoints.complete_steps(tiny.model_dir)
    assert len(steps) >= 2
    model = model_loading.parse_model_dir_gin(tiny.model_dir)
    older, _ = model_loading.restore_params(tiny.model_dir, model, steps[-2])
    newer, _ = model_loading.restore_params(tiny.model_dir, model, steps[-1])
    out = tmp_path / "averaged"
    info = export_model(tiny.model_dir, out, name="averaged", average_last=2)
    assert info["step"] == steps[-1] and info["averaged_steps"] == steps[-2:]
    bundled = model_loading.load_inference_model(out, gin_bindings=tiny.bindings)
    for a, b, got in zip(jax.tree.leaves(older), jax.tree.leaves(newer), jax.tree.leaves(bundled.params), strict=True):
        mean = ((np.asarray(a, np.float64) + np.asarray(b, np.float64)) / 2).astype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(mean.astype(np.float32), np.asarray(got))
    assert not np.array_equal(np.asarray(jax.tree.leaves(older)[0]), np.asarray(jax.tree.leaves(newer)[0]))
    # more checkpoints than exist up to --step: one clear error, nothing written
    with pytest.raises(InputError, match=f"--average-last {len(steps)}: only {len(steps) - 1} checkpoints"):
        export_model(tiny.model_dir, tmp_path / "too_many", name="x", step=steps[-1] - 1, average_last=len(steps))
    assert not (tmp_path / "too_many").exists()
