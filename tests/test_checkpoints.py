"""Tests for mt3.training.checkpoints and exact resume: params, optimizer state, step, RNG and data position survive a
SIGKILL;
SIGTERM (preemption) saves a checkpoint and exits 0.

The kill/resume tests run real `train_from_gin` processes (tiny real model, synthetic data, dropout on). A worker
pauses inside the eval hook at a chosen step, after that step's checkpoint was requested, so the test can kill or
signal it at a known point instead of racing it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    REPO,
    TINY_RUN_BINDINGS,
    real_data_bindings,
    subprocess_env,
    synthetic_batch,
    tiny_model,
    tiny_preset_gin,
)

from mt3.training import checkpoints, partitioning, trainer

WORKER = r"""
import json, sys, time
from pathlib import Path
from mt3 import gin_utils
from mt3.training import train

model_dir, pause_at, pause_seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
bindings = json.loads(sys.argv[4])
flags = gin_utils.parse_gin_flags(["gin/train.gin"], bindings, model_dir=model_dir)

def hook(step, params):
    if step == pause_at:
        Path(model_dir, f"paused_at_{step}").write_text("")
        time.sleep(pause_seconds)
    return {}

result = train.train_from_gin(flags, infer_eval_fn=hook)
print("RESULT " + json.dumps({"step": result.step, "stop_reason": result.stop_reason}))
"""


def _start_worker(tmp_path: Path, model_dir: Path, *, pause_at: int = -1, pause_seconds: float = 0.0,
                  extra: list[str] = ()) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    bindings = TINY_RUN_BINDINGS + ["CHECKPOINT_PERIOD = 10", "EVAL_PERIOD = 1", "EVAL_STEPS = 0", *extra]
    return subprocess.Popen([sys.executable, str(script), str(model_dir), str(pause_at), str(pause_seconds),
                             json.dumps(bindings)], cwd=REPO, env=subprocess_env(**_compile_cache(tmp_path)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _compile_cache(tmp_path: Path) -> dict[str, str]:
    """A persistent XLA cache shared by this test's processes: the same program is compiled once, not per process."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path.parent / "xla_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) before {path.name}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _saved(model_dir: Path, step: int) -> tuple[dict, dict]:
    """(state tree as stored, meta) of one checkpoint, read with orbax directly (no target structure)."""
    import orbax.checkpoint as ocp

    path = model_dir / "checkpoints" / str(step)
    state = ocp.StandardCheckpointer().restore(path / "state")
    meta = json.loads((path / "meta" / "metadata").read_text())
    return state, meta


def _steps(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())


# ---------------------------------------------------------------------------------------------------------------
# In-process round trip
# ---------------------------------------------------------------------------------------------------------------

def test_save_restore_round_trip_and_retention(tmp_path):
    part = partitioning.Partitioner()
    tr = trainer.Trainer(tiny_model(dropout_rate=0.1), trainer.OptimizerConfig(), part)
    state = tr.init_state(seed=3)
    batch = part.make_global_batch(synthetic_batch(), 8)
    ckpt = checkpoints.Checkpointer(tmp_path, checkpoints.CheckpointConfig(period=1, keep=2, async_save=True))
    saved = {}
    for step in range(1, 4):
        state, _ = tr.train_step(state, batch)
        assert ckpt.save(state, data_position=10 * step)
        saved[step] = jax.device_get(state)
    assert not ckpt.save(state, data_position=99)  # the step exists already
    ckpt.close()
    assert _steps(tmp_path) == [2, 3]  # keep=2

    restored, meta = checkpoints.restore_latest(tmp_path, tr.abstract_state())
    assert meta == {"step": 3, "data_position": 30}
    assert isinstance(restored, trainer.TrainState)
    for a, b in zip(jax.tree_util.tree_leaves(saved[3]), jax.tree_util.tree_leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    expected_shardings = jax.tree_util.tree_leaves(tr.state_shardings)
    assert [x.sharding for x in jax.tree_util.tree_leaves(restored)] == expected_shardings
    # the restored state trains on exactly like the original
    next_a, _ = tr.train_step(jax.tree_util.tree_map(jnp.asarray, saved[3]), batch)
    next_b, _ = tr.train_step(restored, batch)
    for a, b in zip(jax.tree_util.tree_leaves(next_a), jax.tree_util.tree_leaves(next_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_reset_data_stream_keeps_the_state_and_starts_the_input_afresh(tmp_path):
    """A run continued on other data: the stored input position and pipeline states go, the trained state stays."""
    tr = trainer.Trainer(tiny_model(), trainer.OptimizerConfig(), partitioning.Partitioner())
    state = tr.init_state(seed=0)
    ckpt = checkpoints.Checkpointer(tmp_path, checkpoints.CheckpointConfig(period=1, keep=2, async_save=False))
    ckpt.save(state, data_position=40, force=True, extra={"data_states": [{"kind": "indexed", "block": 5}]})
    ckpt.close()
    assert checkpoints.reset_data_stream(tmp_path) == [0]
    restored, meta = checkpoints.restore_latest(tmp_path, tr.abstract_state())
    assert meta == {"step": 0, "data_position": 0}
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(state)), jax.tree_util.tree_leaves(restored),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_latest_without_checkpoints_is_none(tmp_path):
    tr = trainer.Trainer(tiny_model(), trainer.OptimizerConfig(), partitioning.Partitioner())
    assert checkpoints.restore_latest(tmp_path / "empty", tr.abstract_state()) is None


def test_checkpoint_config_validates():
    with pytest.raises(ValueError, match="period"):
        checkpoints.CheckpointConfig(period=0)
    with pytest.raises(ValueError, match="keep"):
        checkpoints.CheckpointConfig(keep=0)


# ---------------------------------------------------------------------------------------------------------------
# Real processes: SIGKILL + resume is exact; SIGTERM saves and exits 0
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_then_resume_equals_straight_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, out, err = _finish(_start_worker(tmp_path, straight, extra=["TRAIN_STEPS = 20"]))
    assert code == 0, err[-3000:]

    victim = _start_worker(tmp_path, resumed, pause_at=10, pause_seconds=120, extra=["TRAIN_STEPS = 20"])
    _wait_for(resumed / "paused_at_10", victim)
    _wait_for(resumed / "checkpoints" / "10", victim)  # orbax renames its temp dir only once the save is complete
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert _steps(resumed) == [10]

    code, out, err = _finish(_start_worker(tmp_path, resumed, extra=["TRAIN_STEPS = 20"]))
    assert code == 0, err[-3000:]
    assert "restored checkpoint step 10 (data position 10)" in out + err
    assert _steps(resumed) == [10, 20]

    state_a, meta_a = _saved(straight, 20)
    state_b, meta_b = _saved(resumed, 20)
    assert meta_a == meta_b == {"step": 20, "data_position": 20}
    leaves_a, tree_a = jax.tree_util.tree_flatten(state_a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(state_b)
    assert tree_a == tree_b and len(leaves_a) > 20  # params, optimizer moments, step, rng
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # and the run did move: step-10 and step-20 parameters differ
    state_10, _ = _saved(resumed, 10)
    assert not np.allclose(state_10["params"]["decoder"]["logits_dense"]["kernel"],
                           state_b["params"]["decoder"]["logits_dense"]["kernel"])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    model_dir = tmp_path / "run"
    proc = _start_worker(tmp_path, model_dir, pause_at=7, pause_seconds=3, extra=["TRAIN_STEPS = 1000"])
    _wait_for(model_dir / "paused_at_7", proc)
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc)
    assert code == 0, err[-3000:]
    assert '"stop_reason": "preempted"' in out and '"step": 7' in out
    assert _steps(model_dir) == [7]  # CHECKPOINT_PERIOD is 10: this one is the preemption save
    _, meta = _saved(model_dir, 7)
    assert meta == {"step": 7, "data_position": 7}


# ---------------------------------------------------------------------------------------------------------------
# A checkpoint cut short (issue #12): named in one line, set aside (never deleted), the previous one resumes
# ---------------------------------------------------------------------------------------------------------------

def _cut_chunks(model_dir: Path, step: int) -> None:
    for chunk in (model_dir / "checkpoints" / str(step) / "state").rglob("d/*"):
        with open(chunk, "r+b") as f:
            f.truncate(max(1, chunk.stat().st_size // 3))


@pytest.mark.slow
def test_train_resumes_from_the_newest_checkpoint_that_restores(tmp_path, caplog):
    from mt3.errors import InputError
    from mt3.training import train

    cfg = train.DatasetConfig(task_feature_lengths={"inputs": 16, "targets": 16}, batch_size=8, source="synthetic")

    def run(total_steps: int):
        return train.train(model=tiny_model(), model_dir=str(tmp_path), train_dataset_cfg=cfg,
                           loop_cfg=train.TrainLoopConfig(total_steps=total_steps, summary_period=1),
                           checkpoint_cfg=train.CheckpointConfig(period=2, async_save=False))

    run(4)
    _cut_chunks(tmp_path, 4)
    caplog.clear()
    with caplog.at_level("INFO", logger="mt3.training.train"):  # train() logs; `mt3 train` shows it on the console
        result = run(6)
    err = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    warnings = [line for line in err.splitlines() if "does not restore" in line]
    assert len(warnings) == 1 and f"checkpoint step 4 ({tmp_path / 'checkpoints' / '4'}) does not restore: " in \
        warnings[0]
    assert "Traceback" not in err and f"moved the unrestorable checkpoint to {tmp_path / 'checkpoints_unrestorable'}" \
        in err
    assert (tmp_path / "checkpoints_unrestorable" / "4" / "state").is_dir()  # kept for inspection
    assert result.step == 6 and _steps(tmp_path) == [2, 4, 6]  # step 4 trained again from step 2, and saved
    assert _saved(tmp_path, 4)[1]["data_position"] == 4

    for step in _steps(tmp_path):
        _cut_chunks(tmp_path, step)
    with pytest.raises(InputError, match="none of the 3 checkpoints restores"):
        run(8)
    assert _steps(tmp_path) == [2, 4, 6]  # nothing moved when nothing restores: the user decides


# ---------------------------------------------------------------------------------------------------------------
# Issue #17: the indexed sampler's position resumes exactly on real data; SIGTERM stops within seconds
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared_local(music21_sequences, tmp_path_factory):
    from data_fixtures import sub_sequence, windows, write_prepared_dataset

    chorale = music21_sequences["bach_chorale"]
    root = tmp_path_factory.mktemp("prepared_local")
    write_prepared_dataset(root, "local", {
        "train": windows(chorale, 5, stride=3.0, length=12.0, prefix="chorale_"),
        "validation": [("chorale_val", sub_sequence(chorale, 12.0, 20.0))]})
    return root


@pytest.mark.slow
def test_sigterm_on_real_data_exits_within_seconds_and_resumes_exactly(tmp_path, prepared_local):
    """Preempted at step 7 (not a multiple of the checkpoint period 10): no eval after the signal, exit 0 in < 10 s,
    the checkpoint holds the sampler's position; resuming to step 12 equals an uninterrupted 12-step run."""
    extra = real_data_bindings(prepared_local)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, _, err = _finish(_start_worker(tmp_path, straight, extra=extra + ["TRAIN_STEPS = 12"]))
    assert code == 0, err[-3000:]

    proc = _start_worker(tmp_path, resumed, pause_at=7, pause_seconds=0.5, extra=extra + ["TRAIN_STEPS = 1000"])
    _wait_for(resumed / "paused_at_7", proc)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc)
    elapsed = time.monotonic() - signalled
    assert code == 0, err[-3000:]
    assert '"stop_reason": "preempted"' in out and '"step": 7' in out
    assert elapsed < 10.0, f"SIGTERM to exit took {elapsed:.1f} s"
    _, meta = _saved(resumed, 7)
    assert meta["data_position"] == 7 and meta["data_states"][0]["kind"] == "indexed"

    code, out, err = _finish(_start_worker(tmp_path, resumed, extra=extra + ["TRAIN_STEPS = 12"]))
    assert code == 0, err[-3000:]
    assert "skipping" not in out + err  # the stored position, not a skip
    state_a, meta_a = _saved(straight, 12)
    state_b, meta_b = _saved(resumed, 12)
    assert meta_a == meta_b
    for a, b in zip(jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Issue #17: a new run from another model dir's parameters (fine-tuning)
# ---------------------------------------------------------------------------------------------------------------

def test_params_only_from_the_bundled_model_with_another_optimizer():
    from flax.traverse_util import flatten_dict

    from mt3 import model_loading, pretrained

    bundled = pretrained.default_model_dir()
    model = model_loading.parse_model_dir_gin(bundled)
    tr = trainer.Trainer(model, trainer.OptimizerConfig(name="adamw"), partitioning.Partitioner())
    lines: list[str] = []
    state, meta = checkpoints.initialize_from(checkpoints.RestoreCheckpointConfig(path=str(bundled)), tr, seed=0,
                                              note=lines.append)
    want, step = pretrained.load_params(bundled, model.abstract_params())
    assert int(state.step) == 0 and meta["data_position"] == 0 and meta["init_step"] == step
    got = flatten_dict(jax.device_get(state.params), sep="/")
    for name, value in flatten_dict(want, sep="/").items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert any(f"parameters of step {step}" in line for line in lines)
    # AdamW's moments, fresh: zeros (and its counter 0)
    moments = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.opt_state)]
    assert len(moments) > 2 * len(flatten_dict(want)) and all(not np.any(x) for x in moments)


def test_differing_parameters_are_one_line_or_reinitialised_when_asked(tmp_path):
    """A checkpoint without a parameter the model has (a new head) and with one the model lacks: InputError naming
    both; with fallback_to_scratch the new one keeps its fresh values, the rest come from the checkpoint."""
    from mt3.errors import InputError

    fresh = {"decoder/new_head/kernel": np.zeros((4, 2), np.float32), "encoder/dense/kernel": np.zeros((3, 3),
                                                                                                       np.float32)}
    stored = {"encoder/dense/kernel": np.ones((3, 3), np.float32), "decoder/old_head/kernel": np.ones(2, np.float32)}
    with pytest.raises(InputError, match="not in the checkpoint: decoder/new_head/kernel.*not in the model: "
                                         "decoder/old_head/kernel.*fallback_to_scratch"):
        checkpoints.merge_params(stored, fresh, fallback_to_scratch=False, source=tmp_path)
    merged, notes = checkpoints.merge_params(stored, fresh, fallback_to_scratch=True, source=tmp_path)
    assert np.all(merged["encoder/dense/kernel"] == 1) and np.all(merged["decoder/new_head/kernel"] == 0)
    assert notes == ["not in the checkpoint: decoder/new_head/kernel", "not in the model: decoder/old_head/kernel"]
    stored["encoder/dense/kernel"] = np.ones((3, 4), np.float32)
    with pytest.raises(InputError, match=r"other shape: encoder/dense/kernel \[3, 4\] vs \[3, 3\]"):
        checkpoints.merge_params(stored, fresh, fallback_to_scratch=False, source=tmp_path)


@pytest.mark.slow
def test_fine_tune_an_imported_t5x_checkpoint_with_adamw_then_transcribe(tmp_path, prepared_local):
    """`mt3 train --gin.INIT_CHECKPOINT=<imported MT3-layout dir>` with AdamW: parameters from the import, step 0,
    the loss on a fixed batch goes down, and the fine-tuned dir transcribes."""
    from flax.traverse_util import flatten_dict
    from t5x_fixture import write_t5x_checkpoint

    from mt3 import cli, model_loading
    from mt3.audio import write_wav
    from mt3.training import input_pipeline, train
    from mt3.training.checkpoint_import import build_preset_model, import_checkpoint

    preset = tiny_preset_gin(tmp_path / "tiny_mt3.gin", "mt3.gin")
    model, _, _ = build_preset_model(str(preset), model_dir=tmp_path / "unused")
    rng = np.random.default_rng(7)
    params = {n: (rng.standard_normal(s.shape) * 0.1).astype(np.float32)
              for n, s in flatten_dict(model.abstract_params(), sep="/").items()}
    src = write_t5x_checkpoint(tmp_path / "released", params, step=4321, form="inline")
    import_checkpoint(src, tmp_path / "imported", preset=str(preset))

    tuned = tmp_path / "tuned"
    args = ["train", f"--gin_file={preset}", f"--model_dir={tuned}", f"--gin.INIT_CHECKPOINT='{tmp_path / 'imported'}'",
            "--gin.MIXTURE_OR_TASK_NAME='local_mix_notes_ties_vb1_train'", f"--gin.DATA_DIR='{prepared_local}'",
            "--gin.trainer.OptimizerConfig.name='adamw'", "--gin.LEARNING_RATE=0.003", "--gin.TRAIN_STEPS=8",
            "--gin.BATCH_SIZE=4", "--gin.EVAL_PERIOD=0", "--gin.CHECKPOINT_PERIOD=8", "--gin.DROPOUT_RATE=0.0"]
    result = subprocess.run([sys.executable, "-m", "mt3.cli", *args], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters of step 4321 from" in result.stdout and "stopped at step 8" in result.stdout

    cfg = train.DatasetConfig(mixture_or_task_name="local_mix_notes_ties_vb1_train", batch_size=8,
                              task_feature_lengths={"inputs": 32, "targets": 64}, data_dir=str(prepared_local))
    stream = input_pipeline.make_batch_iterator(cfg, host_batch_size=8, shard_id=0, num_shards=1)
    batch = next(stream)
    stream.close()
    tuned_model = model_loading.parse_model_dir_gin(tuned)
    tuned_params, step = model_loading.restore_params(tuned, tuned_model)
    imported_params, _ = model_loading.restore_params(tmp_path / "imported", tuned_model)
    assert step == 8
    before = float(tuned_model.eval_fn(imported_params, batch)["loss"])
    after = float(tuned_model.eval_fn(tuned_params, batch)["loss"])
    assert after < 0.95 * before, (before, after)  # 8 AdamW steps from random-init weights: ~9 % lower

    t = np.arange(16000) / 16000.0
    write_wav(tmp_path / "song.wav", (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    assert cli.main(["transcribe", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out"), "--checkpoint",
                     str(tuned), "--no-progress", "--gin.MAX_DECODE_LENGTH=16"]) == 0
    assert (tmp_path / "out" / "song.mid").stat().st_size > 0
