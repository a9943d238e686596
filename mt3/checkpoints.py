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
UNRESTORABLE_SUBDIR = "checkpoints_unrestorable"  # where `mt3 train` moves steps that do not restore


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

    def set_aside(self, steps: list[int]) -> list[Path]:
        """Moves these step dirs to MODEL_DIR/checkpoints_unrestorable/ (kept for inspection, never deleted), so orbax
        neither lists them nor refuses to save those steps again; returns where they went (process 0 moves)."""
        import jax

        moved: list[Path] = []
        if not steps:
            return moved
        if jax.process_index() == 0:
            aside = self.directory.parent / UNRESTORABLE_SUBDIR
            aside.mkdir(parents=True, exist_ok=True)
            for step in steps:
                target = aside / str(step)
                suffix = 1
                while target.exists():
                    target, suffix = aside / f"{step}.{suffix}", suffix + 1
                os.replace(self.directory / str(step), target)
                moved.append(target)
        self._manager.reload()
        return moved

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


# ---------------------------------------------------------------------------------------------------------------
# Which checkpoints restore: a cut-short chunk file (a full disk, a copy interrupted) must cost one line, not a
# TensorStore traceback. Callers pass their own restore function (training state, parameters only, or another
# format), so the fallback rule lives here once.

@dataclasses.dataclass(frozen=True)
class BadCheckpoint:
    """A checkpoint step whose files exist but do not restore, and why (one line)."""

    step: int
    path: Path
    reason: str

    def describe(self) -> str:
        return f"checkpoint step {self.step} ({self.path}) does not restore: {self.reason}"


def complete_steps(model_dir: str | os.PathLike) -> list[int]:
    """Steps of the finished checkpoints under MODEL_DIR/checkpoints, oldest first (orbax names a step dir by its
    number only when the save is complete; temporary dirs carry a suffix)."""
    directory = checkpoint_dir(model_dir)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def failure_reason(err: BaseException, limit: int = 240) -> str:
    """The most specific one-line message in an exception chain (TensorStore's own error is the innermost one; the
    outer orbax message only dumps a spec)."""
    messages = []
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = " ".join(str(err).split())
        if text:
            messages.append(f"{type(err).__name__}: {text}" if type(err) is not Exception else text)
        err = err.__cause__ or err.__context__
    line = messages[-1] if messages else "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def restore_newest(model_dir: str | os.PathLike, restore_step, *, step: int | None = None,
                   steps: list[int] | None = None, warn=None):
    """`restore_step(step)` on the newest checkpoint that restores: (result, step, [BadCheckpoint, ...]).

    With `step` only that one is tried. Each failure is passed to `warn(bad)` as it happens (callers print it on one
    line); nothing is deleted or moved here. Raises `InputError` naming every bad step when none restores, or when
    there is no checkpoint at all.
    """
    from mt3.errors import InputError

    available = complete_steps(model_dir) if steps is None else sorted(steps)
    if not available:
        raise InputError(model_dir, f"no checkpoint under {checkpoint_dir(model_dir)} (train first)")
    if step is not None:
        if int(step) not in available:
            raise InputError(model_dir, f"no checkpoint at step {step}; available steps: {available}")
        candidates = [int(step)]
    else:
        candidates = sorted(available, reverse=True)
    bad: list[BadCheckpoint] = []
    for candidate in candidates:
        try:
            return restore_step(candidate), candidate, bad
        except InputError:
            raise
        except Exception as err:  # orbax/TensorStore raise plain Exception, ValueError, OSError ... for bad files
            entry = BadCheckpoint(candidate, checkpoint_dir(model_dir) / str(candidate), failure_reason(err))
            bad.append(entry)
            if warn is not None:
                warn(entry)
    if len(bad) == 1:
        raise InputError(bad[0].path, f"checkpoint does not restore: {bad[0].reason}")
    raise InputError(checkpoint_dir(model_dir), f"none of the {len(bad)} checkpoints restores (steps "
                                                f"{', '.join(str(b.step) for b in bad)}; newest: {bad[0].reason})")
