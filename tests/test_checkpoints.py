"""Tests for mt3.checkpoints and exact resume: params, optimizer state, step, RNG and data position survive a SIGKILL;
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
from test_trainer import REPO, TINY_RUN_BINDINGS, subprocess_env, synthetic_batch, tiny_model

from mt3 import checkpoints, partitioning, trainer

WORKER = r"""
import json, sys, time
from pathlib import Path
from mt3 import gin_utils, train

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


def test_train_resumes_from_the_newest_checkpoint_that_restores(tmp_path, capsys):
    from mt3 import train
    from mt3.errors import InputError

    cfg = train.DatasetConfig(task_feature_lengths={"inputs": 16, "targets": 16}, batch_size=8, source="synthetic")

    def run(total_steps: int):
        return train.train(model=tiny_model(), model_dir=str(tmp_path), train_dataset_cfg=cfg,
                           loop_cfg=train.TrainLoopConfig(total_steps=total_steps, summary_period=1),
                           checkpoint_cfg=train.CheckpointConfig(period=2, async_save=False))

    run(4)
    _cut_chunks(tmp_path, 4)
    capsys.readouterr()
    result = run(6)
    err = capsys.readouterr().err
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
