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
COMMIT_SUCCESS_FILE = "commit_success.txt"  # orbax's "this step is complete" marker on object stores (no rename)


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


RESTORE_MODES = ("latest", "specific")


@dataclasses.dataclass(frozen=True)
class RestoreCheckpointConfig:
    """Where a new run's state comes from (gin: `checkpoints.RestoreCheckpointConfig`; names as T5X's).

    Used only while the run's own model dir has no checkpoint: once it has saved, it resumes from itself, so a
    preempted fine-tuning run continues rather than starting over.

    path: a model dir to start from: trained by `mt3 train`, imported by `mt3 import-checkpoint`, or a bundled model
      (params.npz + model.json, `mt3 export-model`); None: from scratch.
    mode / step: 'latest' (the newest step that restores) or 'specific' (`step`), as T5X.
    params_only: True (fine-tuning): parameters only, with this run's fresh optimizer state, step 0 and a fresh data
      position, so any optimizer and schedule can follow. False: the whole train state (step, optimizer state, RNG),
      which must match this run's optimizer; the data position too when `restore_dataset`.
    fallback_to_scratch: parameters that the checkpoint lacks or holds with another shape are initialised fresh (and
      listed) instead of stopping with exit 2; stored parameters the model lacks are then ignored (listed). This is
      how a run adds parameters (e.g. a new auxiliary head) to an existing model.
    """

    path: str | None = None
    mode: str = "latest"
    step: int | None = None
    params_only: bool = True
    restore_dataset: bool = False
    fallback_to_scratch: bool = False

    def __post_init__(self):
        if self.mode not in RESTORE_MODES:
            raise ValueError(f"RestoreCheckpointConfig.mode must be one of {RESTORE_MODES}, got {self.mode!r}")
        if (self.mode == "specific") != (self.step is not None):
            raise ValueError("RestoreCheckpointConfig: mode 'specific' needs a step, and a step needs mode 'specific'")
        if self.params_only and self.restore_dataset:
            raise ValueError("RestoreCheckpointConfig: restore_dataset needs params_only=False (a fine-tuning run "
                             "starts its data afresh)")


def checkpoint_dir(model_dir: str | os.PathLike) -> Path:
    """MODEL_DIR/checkpoints: a `pathlib.Path`, or for a URL model dir (gs://...) an `etils.epath.Path`, which orbax
    writes through tensorstore's GCS driver (see `mt3.paths`)."""
    from mt3 import paths

    if paths.is_url(model_dir):
        return paths.as_epath(paths.join(model_dir, CHECKPOINT_SUBDIR))
    return Path(os.path.abspath(model_dir)) / CHECKPOINT_SUBDIR


def _state_to_dict(state) -> dict[str, Any]:
    """TrainState (a flax struct) -> plain dict, the layout stored on disk (readable without mt3's classes)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


class Checkpointer:
    """A thin wrapper over `orbax.checkpoint.CheckpointManager` for `mt3.training.trainer.TrainState`."""

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

        from mt3 import paths

        moved: list[Path] = []
        if not steps:
            return moved
        if jax.process_index() == 0:
            aside = self.directory.parent / UNRESTORABLE_SUBDIR
            paths.makedirs(aside)
            for step in steps:
                target = aside / str(step)
                suffix = 1
                while paths.exists(target):
                    target, suffix = aside / f"{step}.{suffix}", suffix + 1
                paths.move_tree(self.directory / str(step), target)  # one rename locally; copy + delete on gs://
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
    number only when the save is complete; temporary dirs carry a suffix). On an object store (gs://) orbax writes
    the step dir in place and finishes it with `commit_success.txt` (there is no rename), so that file decides."""
    from mt3 import paths

    directory = checkpoint_dir(model_dir)
    if paths.is_url(directory):
        names = [n for n in paths.listdir(directory) if n.isdigit()]
        if paths.protocol(directory) in paths.OBJECT_STORES:
            names = [n for n in names if paths.exists(paths.join(directory, n, COMMIT_SUCCESS_FILE))]
        return sorted(int(n) for n in names)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def reset_data_stream(model_dir: str | os.PathLike) -> list[int]:
    """Makes every checkpoint under MODEL_DIR start its input stream afresh (data position 0, no input-pipeline
    states) and returns their steps; parameters, optimizer state and step are untouched. For continuing a run on other
    data (a recipe-study arm, a long run switching corpus): a stored input position means nothing in another dataset."""
    import json

    from mt3 import paths

    steps = complete_steps(model_dir)
    for step in steps:
        path = checkpoint_dir(model_dir) / str(step) / "meta" / "metadata"
        meta = json.loads(paths.read_text(path))
        meta["data_position"] = 0
        meta.pop("data_states", None)
        paths.write_json(path, meta)
    return steps


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


# ---------------------------------------------------------------------------------------------------------------
# The input pipeline's position, per host, in the checkpoint's meta (`mt3.training.input_pipeline`: a few integers each)

def gather_data_states(own: dict | None) -> dict:
    """{'data_states': [one position per process]} for streams with a state (the indexed sampler), else {}. Every
    process takes part (an all-gather of a few integers), so process 0 writes all positions in the one meta file,
    in the same orbax step as the train state."""
    import jax
    import numpy as np

    if own is None:
        return {}
    if jax.process_count() == 1:
        return {"data_states": [own]}
    from jax.experimental import multihost_utils

    row = np.asarray([own["block"], own["offset"], *own["task_blocks"]], np.int32)
    rows = np.asarray(multihost_utils.process_allgather(row)).reshape(jax.process_count(), -1)
    return {"data_states": [{**own, "block": int(r[0]), "offset": int(r[1]), "task_blocks": [int(x) for x in r[2:]]}
                            for r in rows]}


def host_data_state(meta: dict, note) -> tuple[dict | None, int]:
    """(this host's input-pipeline state, batches to skip) from checkpoint meta. Without states (checkpoints of the
    seqio pipeline, or of code before the indexed sampler) the position is the number of batches to skip."""
    import jax

    states = meta.get("data_states")
    if states is None:
        return None, int(meta.get("data_position", 0))
    if len(states) != jax.process_count():
        note(f"the checkpoint's input-pipeline states are for {len(states)} process(es), this run has "
             f"{jax.process_count()}: the data stream starts afresh")
        return None, 0
    return states[jax.process_index()], 0


# ---------------------------------------------------------------------------------------------------------------
# Starting a run from another model dir (fine-tuning): parameters only, or the whole state.

def _flat(tree) -> dict[str, Any]:
    from flax import traverse_util

    return traverse_util.flatten_dict(tree, sep="/")


def _unflat(flat: dict[str, Any]) -> dict[str, Any]:
    from flax import traverse_util

    return traverse_util.unflatten_dict(flat, sep="/")


def read_stored_params(model_dir: str | os.PathLike, *, step: int | None = None, warn=None
                       ) -> tuple[dict[str, Any], int]:
    """({'encoder/.../kernel': float32 numpy array}, step) of any model dir: orbax (trained or imported) or bundled.

    Read without a target structure, so names and shapes can be compared with the new model before anything is used.
    """
    import numpy as np

    from mt3 import pretrained

    if pretrained.is_bundled_model(model_dir):
        bits, bundled_step = pretrained.read_flat_params(model_dir, step)
        return {k: pretrained.bits_to_float32(v) for k, v in bits.items()}, bundled_step
    import orbax.checkpoint as ocp

    def restore_step(s: int):
        tree = ocp.StandardCheckpointer().restore(checkpoint_dir(model_dir) / str(s) / "state")
        return {k: np.asarray(v) for k, v in _flat(dict(tree["params"])).items()}

    params, found, _ = restore_newest(model_dir, restore_step, step=step, warn=warn)
    return params, found


def merge_params(stored: dict[str, Any], fresh: dict[str, Any], *, fallback_to_scratch: bool,
                 source: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """Flat stored parameters laid over the model's `fresh` ones: (merged flat tree, notes on what was not taken).

    A name the model has but the checkpoint lacks, a shape that differs, or a stored name the model lacks stops with
    one InputError line naming them, unless `fallback_to_scratch` (then those keep their fresh values / are ignored).
    """
    from mt3.errors import InputError

    missing = sorted(set(fresh) - set(stored))
    shapes = sorted(n for n in set(fresh) & set(stored) if tuple(stored[n].shape) != tuple(fresh[n].shape))
    unexpected = sorted(set(stored) - set(fresh))
    notes = ([f"not in the checkpoint: {', '.join(missing)}"] if missing else []) + \
        ([f"other shape: {', '.join(f'{n} {list(stored[n].shape)} vs {list(fresh[n].shape)}' for n in shapes)}"]
         if shapes else []) + ([f"not in the model: {', '.join(unexpected)}"] if unexpected else [])
    if notes and not fallback_to_scratch:
        raise InputError(source, "parameters differ from this run's model (" + "; ".join(notes) + "); set "
                         "checkpoints.RestoreCheckpointConfig.fallback_to_scratch=True to initialise the differing "
                         "ones fresh")
    merged = {n: (value if n in missing or n in shapes else stored[n].astype(value.dtype))
              for n, value in fresh.items()}
    return merged, notes


def initialize_from(config: RestoreCheckpointConfig, trainer, *, seed: int, note=None) -> tuple[Any, dict]:
    """(train state, meta) of a new run started from `config.path` (see RestoreCheckpointConfig)."""
    import jax
    import numpy as np

    note = note or (lambda line: None)
    if not config.params_only:
        checkpointer = Checkpointer(config.path, CheckpointConfig(async_save=False))
        try:
            (state, meta), step, _ = restore_newest(
                config.path, lambda s: checkpointer.restore(trainer.abstract_state(), step=s), step=config.step,
                steps=checkpointer.all_steps())
        finally:
            checkpointer.close()
        if not config.restore_dataset:
            meta = {k: v for k, v in meta.items() if k not in ("data_position", "data_states")}
        note(f"restored the whole train state of step {step} from {config.path}")
        return state, {**meta, "data_position": int(meta.get("data_position", 0))}
    stored, step = read_stored_params(config.path, step=config.step)
    state = trainer.init_state(seed)
    fresh = _flat(jax.device_get(state.params))
    merged, notes = merge_params(stored, fresh, fallback_to_scratch=config.fallback_to_scratch, source=config.path)
    for line in notes:
        note(f"fallback_to_scratch: {line}")
    shardings = trainer.state_shardings.params
    params = jax.tree_util.tree_map(
        lambda value, sharding: jax.make_array_from_callback(value.shape, sharding, lambda index: value[index]),
        _unflat({k: np.asarray(v) for k, v in merged.items()}), shardings)
    note(f"parameters of step {step} from {config.path}; fresh optimizer state, step 0")
    return state.replace(params=params), {"data_position": 0, "init_from": os.fspath(config.path), "init_step": step}
