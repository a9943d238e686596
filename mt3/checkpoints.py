"""Orbax checkpoints of the whole training state: params, optimizer state, step, RNG and the data position, together.

Saving the data position (batches consumed) beside the model is what makes resume exact (nanodo's lesson): the data
pipeline is deterministic for a seed, so `train.py` rebuilds it and skips that many batches. Orbax writes each step
into a temporary directory and renames it when complete, so a run killed mid-save leaves the previous checkpoint as
the latest. Resuming from the latest checkpoint in the model directory is the default. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

CHECKPOINT_SUBDIR = "checkpoints"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """period: save every N steps (MT3: 5000); keep: newest K kept (None = all, as MT3); async_save: write in a
    background thread while training continues; restore: resume from the latest checkpoint in the model directory."""

    period: int = 5000
    keep: int | None = None
    async_save: bool = True
    restore: bool = True

    def __post_init__(self):
        if not isinstance(self.period, int) or self.period < 1:
            raise ValueError(f"CheckpointConfig.period must be a positive int, got {self.period!r}")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"CheckpointConfig.keep must be None (keep all) or >= 1, got {self.keep!r}")


def checkpoint_dir(model_dir: str | os.PathLike) -> Path:
    return Path(os.path.abspath(model_dir)) / CHECKPOINT_SUBDIR


def _state_to_dict(state) -> dict[str, Any]:
    """TrainState (a flax struct) -> plain dict, the layout stored on disk (readable without mt3's classes)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


class Checkpointer:
    """A thin wrapper over `orbax.checkpoint.CheckpointManager` for `mt3.trainer.TrainState`."""

    def __init__(self, model_dir: str | os.PathLike, config: CheckpointConfig | None = None):
        import orbax.checkpoint as ocp

        self.config = config or CheckpointConfig()
        self.directory = checkpoint_dir(model_dir)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=self.config.period, max_to_keep=self.config.keep,
            enable_async_checkpointing=self.config.async_save, create=True, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, state, *, data_position: int, force: bool = False, extra: dict | None = None) -> bool:
        """Saves at `state.step` when the period says so (or `force`, for preemption/final saves); True if it did."""
        import orbax.checkpoint as ocp

        step = int(state.step)
        if step in self._manager.all_steps():
            return False
        meta = {"step": step, "data_position": int(data_position), **(extra or {})}
        return bool(self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_state_to_dict(state)), meta=ocp.args.JsonSave(meta)), force=force))

    def restore(self, target, step: int | None = None) -> tuple[Any, dict]:
        """(state shaped and sharded like `target`, meta{step, data_position, ...}) at `step` (default: latest).

        `target` is a TrainState of arrays or of `jax.ShapeDtypeStruct`s with shardings (`Trainer.abstract_state()`):
        each host reads only its shards."""
        import orbax.checkpoint as ocp

        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_state_to_dict(target)), meta=ocp.args.JsonRestore()))
        return target.replace(**restored["state"]), dict(restored["meta"])

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def restore_latest(model_dir: str | os.PathLike, target) -> tuple[Any, dict] | None:
    """The latest checkpoint under `model_dir` restored into `target`'s structure and shardings, or None if none."""
    checkpointer = Checkpointer(model_dir, CheckpointConfig(async_save=False))
    try:
        if checkpointer.latest_step() is None:
            return None
        return checkpointer.restore(target)
    finally:
        checkpointer.close()
