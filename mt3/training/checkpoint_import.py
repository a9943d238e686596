"""`mt3 import-checkpoint`: a T5X checkpoint of MT3 (the released `mt3/` and `ismir2021/` models) -> our model dir.

The network already has MT3's parameter tree (same names, shapes, no transposes), so importing is: build the network
from a preset's gin (the head count, 6 x 64, cannot be read from shapes), check every array of the checkpoint against
it (names, shapes, dtype) before reading any data, read the arrays, and save an ordinary orbax training state plus
`config.gin`. `mt3 transcribe/eval/serve --checkpoint DIR` then use it unchanged and `mt3 train --model_dir DIR`
resumes from it (fine-tuning). T5X's Adafactor statistics use the same layout as optax's `scale_by_factored_rms`
(rank <= 2 parameters fall back to the same heuristic: v_row drops the largest dimension, v_col the second largest,
unfactored parameters keep a full `v`), so they are carried over whenever every shape agrees; otherwise the optimizer
state starts fresh and the result says why. The model dir is built under a temporary name and renamed at the end:
a failure leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mt3.errors import InputError
from mt3.training import t5x_checkpoints

PRESETS = {"mt3": "mt3.gin", "ismir2021": "ismir2021.gin"}
IMPORT_INFO_FILE = "import.json"


@dataclasses.dataclass(frozen=True)
class ImportResult:
    """What `import_checkpoint` wrote: enough for the command's report and for provenance (import.json)."""

    source: str  # the `checkpoint` file read
    model_dir: str
    preset: str
    step: int
    version: int | None
    num_params: int
    num_arrays: int
    checksum: str  # sha256 over (name, dtype, shape, bytes) of every parameter, in name order
    optimizer_state: str  # 'converted' or 'fresh: <why>'
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset_gin_file(preset: str) -> str:
    """'mt3' / 'ismir2021' -> the repo's gin file; anything else is taken as a gin file path (tiny test presets)."""
    if preset in PRESETS:
        return PRESETS[preset]
    if preset.endswith(".gin") or os.sep in preset or "/" in preset:
        return preset
    raise InputError(None, f"unknown preset {preset!r}: choose {sorted(PRESETS)} or pass a gin file")


def params_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of every array's name, dtype, shape and bytes in name order: equal iff the parameters are bit-equal."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _flat(tree: Any) -> dict[str, Any]:
    from flax.traverse_util import flatten_dict

    return flatten_dict(tree, sep="/")


def _unflat(flat: Mapping[str, Any]) -> dict:
    from flax.traverse_util import unflatten_dict

    return unflatten_dict(dict(flat), sep="/")


def check_against_model(ckpt: t5x_checkpoints.T5XCheckpoint, expected: Mapping[str, Any], preset: str) -> None:
    """Every array the network needs is in the checkpoint with its shape and float32, and nothing else is."""
    where = ckpt.path
    missing = sorted(set(expected) - set(ckpt.target))
    if missing:
        raise InputError(where, f"{len(missing)} parameter(s) of the {preset} network missing from the checkpoint, "
                                f"e.g. target/{missing[0]} (wrong --preset?)")
    extra = sorted(set(ckpt.target) - set(expected))
    if extra:
        raise InputError(where, f"{len(extra)} array(s) the {preset} network does not have, e.g. target/{extra[0]} "
                                "(wrong --preset?)")
    for name in sorted(expected):
        leaf, want = ckpt.target[name], expected[name]
        shape, dtype = t5x_checkpoints.leaf_shape(leaf), t5x_checkpoints.leaf_dtype(leaf)
        if shape is not None and tuple(shape) != tuple(want.shape):
            raise InputError(where, f"target/{name} has shape {list(shape)}, the {preset} network expects "
                                    f"{list(want.shape)} (wrong --preset?)")
        if dtype is not None and np.dtype(dtype).newbyteorder("=") != np.dtype(want.dtype):
            raise InputError(where, f"target/{name} is {np.dtype(dtype).name}, expected {np.dtype(want.dtype).name}")


def _array_check(expected: Mapping[str, Any], preset: str, ckpt: t5x_checkpoints.T5XCheckpoint
                 ) -> Callable[[str, np.ndarray], None]:
    """The same check on the data actually read (a spec without shape metadata is checked here)."""

    def check(name: str, array: np.ndarray) -> None:
        leaf = ckpt.target[name]
        where = leaf.folder if isinstance(leaf, t5x_checkpoints.ArrayRef) else ckpt.path
        want = expected[name]
        if tuple(array.shape) != tuple(want.shape):
            raise InputError(where, f"target/{name} has shape {list(array.shape)}, the {preset} network expects "
                                    f"{list(want.shape)} (wrong --preset?)")
        if array.dtype != np.dtype(want.dtype):
            raise InputError(where, f"target/{name} is {array.dtype}, expected {np.dtype(want.dtype).name}")

    return check


# ---------------------------------------------------------------------------------------------------------------
# Optimizer state
# ---------------------------------------------------------------------------------------------------------------

def convert_optimizer_state(opt_state: Any, ckpt: t5x_checkpoints.T5XCheckpoint, optimizer_cfg, step: int
                            ) -> tuple[Any, str]:
    """(optax state, 'converted' | 'fresh: why'): T5X Adafactor statistics put into `opt_state`'s
    `FactoredState` when every shape agrees, with the step counters set to `step`; else `opt_state` unchanged."""
    import jax.numpy as jnp
    import optax

    if optimizer_cfg.name != "adafactor":
        return opt_state, f"fresh: the preset's optimizer is {optimizer_cfg.name!r}, not Adafactor"
    if not ckpt.param_states:
        return opt_state, "fresh: the checkpoint holds no Adafactor statistics"
    if ckpt.step is None:
        return opt_state, "fresh: the checkpoint records no optimizer step"
    factored = [s for s in _states(opt_state) if isinstance(s, optax.FactoredState)]
    if len(factored) != 1:
        return opt_state, "fresh: the preset's optimizer chain has no single factored second-moment state"
    ours = factored[0]
    new: dict[str, dict[str, Any]] = {}
    for stat in ("v_row", "v_col", "v"):
        want = _flat(getattr(ours, stat))
        leaves = {}
        for name, target in want.items():
            leaf = ckpt.param_states.get(name, {}).get(stat)
            if leaf is None:
                return opt_state, f"fresh: no Adafactor {stat} for {name} in the checkpoint"
            shape = t5x_checkpoints.leaf_shape(leaf)
            if shape is not None and tuple(shape) != tuple(target.shape):
                return opt_state, (f"fresh: T5X's {stat} of {name} has shape {list(shape)}, optax Adafactor keeps "
                                   f"{list(target.shape)} (a different factoring)")
            leaves[name] = leaf
        arrays = t5x_checkpoints.load_arrays(leaves)
        for name, array in arrays.items():
            if array.shape != want[name].shape:
                return opt_state, f"fresh: T5X's {stat} of {name} has shape {list(array.shape)} on disk"
        new[stat] = _unflat({k: jnp.asarray(v, dtype=want[k].dtype) for k, v in arrays.items()})
    count = jnp.asarray(step, jnp.int32)
    converted = ours._replace(count=count, **new)
    return _replace_states(opt_state, ours, converted, count), "converted"


def _states(state: Any) -> list[Any]:
    """The optax states inside a (possibly nested) chain state, depth first."""
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return [s for part in state for s in _states(part)]
    return [state]


def _replace_states(state: Any, old: Any, new: Any, count: Any) -> Any:
    """`state` with `old` replaced by `new` and every other step counter (the LR schedule's) set to `count`."""
    if state is old:
        return new
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return tuple(_replace_states(part, old, new, count) for part in state)
    if hasattr(state, "_fields") and "count" in state._fields:
        return state._replace(count=count.astype(state.count.dtype))
    return state


# ---------------------------------------------------------------------------------------------------------------
# The import
# ---------------------------------------------------------------------------------------------------------------

def _check_output(model_dir: Path | str) -> None:
    from mt3 import paths

    if paths.is_url(model_dir):
        paths.require(model_dir, "-o")
        if paths.isfile(model_dir) or paths.listdir(model_dir):
            raise InputError(model_dir, "already exists and is not empty: choose a new output directory")
        return
    if model_dir.exists() and (not model_dir.is_dir() or any(model_dir.iterdir())):
        raise InputError(model_dir, "already exists and is not empty: choose a new output directory")


def download_t5x_checkpoint(src: str, step: int | None, local_dir: str) -> str:
    """A URL T5X checkpoint (gs://mt3/checkpoints/mt3/, or a T5X model dir of checkpoint_N/ folders) copied into
    `local_dir` through fsspec (gcsfs): the whole folder when it holds the `checkpoint` msgpack, else only the
    chosen checkpoint_N/ (default: the latest), so a model dir's other steps are never downloaded."""
    from mt3 import paths

    name = t5x_checkpoints.CHECKPOINT_FILE
    if paths.isfile(paths.join(src, name)):
        return paths.download_tree(src, local_dir)
    steps = {int(m.group(1)): entry for entry in paths.listdir(src)
             if (m := t5x_checkpoints._STEP_DIR.match(entry)) and paths.isfile(paths.join(src, entry, name))}
    if not steps:
        raise InputError(src, f"not a T5X checkpoint directory: no '{name}' file (nor checkpoint_N/ folders holding "
                              "one)")
    chosen = max(steps) if step is None else step
    if chosen not in steps:
        raise InputError(src, f"no checkpoint_{chosen}/ here; available steps: {sorted(steps)}")
    paths.download_tree(paths.join(src, steps[chosen]), os.path.join(local_dir, steps[chosen]))
    return local_dir


def _write_model_dir(model_dir, state, flags, result: ImportResult, checksum: str) -> None:
    """The imported step as a training checkpoint plus the operative config: what train/eval/transcribe read."""
    from mt3 import gin_utils
    from mt3.training.checkpoints import CheckpointConfig, Checkpointer

    checkpointer = Checkpointer(model_dir, CheckpointConfig(async_save=False))
    try:
        checkpointer.save(state, data_position=0, force=True,
                          extra={"imported_from": result.source, "preset": result.preset, "params_sha256": checksum})
    finally:
        checkpointer.close()
    gin_utils.write_operative_config(model_dir, flags)


def build_preset_model(preset: str, gin_files: Sequence[str | os.PathLike] = (), gin_bindings: Sequence[str] = (),
                       model_dir: str | os.PathLike | None = None):
    """Parses the preset (+ extra gin) with MODEL_DIR bound; returns (model, OptimizerConfig, parsed gin flags)."""
    import gin

    from mt3 import gin_utils
    from mt3.training import train  # noqa: F401  (registers the training configurables the presets' train.gin names)
    from mt3.training.trainer import OptimizerConfig

    flags = gin_utils.parse_gin_flags([preset_gin_file(preset), *gin_files], list(gin_bindings),
                                      model_dir=model_dir, finalize=False)
    try:
        reference = gin.query_parameter("MODEL/macro.value")
        model = reference.scoped_configurable_fn() if hasattr(reference, "scoped_configurable_fn") else reference
        optimizer_cfg = gin.get_configurable("trainer.OptimizerConfig")()
    except (ValueError, TypeError) as err:
        raise InputError(None, f"preset {preset!r}: cannot build the model and optimizer from gin ({err})") from err
    if not isinstance(optimizer_cfg, OptimizerConfig):
        optimizer_cfg = OptimizerConfig()
    return model, optimizer_cfg, flags


def import_checkpoint(src: str | os.PathLike, model_dir: str | os.PathLike, *, preset: str = "mt3",
                      gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = (), step: int | None = None,
                      seed: int = 0, workers: int | None = None) -> ImportResult:
    """Reads the T5X checkpoint in `src` (a checkpoint folder, or a T5X model dir: `step` picks checkpoint_N),
    checks it against the preset's network and writes `model_dir` (which must not exist or be empty).

    Either may be a URL (`gs://mt3/checkpoints/mt3/`): a URL source is first copied to a temporary local folder
    (one checkpoint, through fsspec/gcsfs); a URL model dir is written in place by orbax (each step finalised with
    its commit_success.txt), with import.json written last."""
    import tempfile

    from mt3 import paths

    kwargs = dict(preset=preset, gin_files=gin_files, gin_bindings=gin_bindings, step=step, seed=seed,
                  workers=workers)
    if not paths.is_url(src):
        return _import_local(src, model_dir, **kwargs)
    paths.require(src, "SRC_DIR")
    _check_output(paths.absolute(model_dir) if paths.is_url(model_dir) else Path(os.path.abspath(model_dir)))
    with tempfile.TemporaryDirectory(prefix="mt3-t5x-download-") as tmp:
        local = download_t5x_checkpoint(paths.absolute(src), step, tmp)
        return _import_local(local, model_dir, source_url=paths.absolute(src), **kwargs)


def _import_local(src: str | os.PathLike, model_dir: str | os.PathLike, *, preset: str, gin_files: Sequence[str],
                  gin_bindings: Sequence[str], step: int | None, seed: int, workers: int | None,
                  source_url: str | None = None) -> ImportResult:
    import jax
    import jax.numpy as jnp

    from mt3 import paths
    from mt3.data.records import atomic_write_json
    from mt3.training.trainer import TrainState

    started = time.perf_counter()
    to_url = paths.is_url(model_dir)
    model_dir = paths.absolute(model_dir) if to_url else Path(os.path.abspath(model_dir))
    _check_output(model_dir)
    ckpt = t5x_checkpoints.read_checkpoint(src, step)
    if step is not None and ckpt.step is not None and ckpt.step != step:
        raise InputError(ckpt.path, f"holds step {ckpt.step}, not the requested --step {step}")
    model, optimizer_cfg, flags = build_preset_model(preset, gin_files, gin_bindings, model_dir)
    expected = _flat(model.abstract_params())
    check_against_model(ckpt, expected, preset)
    arrays = t5x_checkpoints.load_arrays(ckpt.target, workers=workers, check=_array_check(expected, preset, ckpt))
    checksum = params_checksum(arrays)
    num_params = int(sum(a.size for a in arrays.values()))
    params = _unflat({name: jnp.asarray(arrays.pop(name)) for name in sorted(arrays)})  # one copy held at a time
    the_step = int(ckpt.step if ckpt.step is not None else (step or 0))
    tx = optimizer_cfg.make()
    opt_state, optimizer_note = convert_optimizer_state(tx.init(params), ckpt, optimizer_cfg, the_step)
    state = TrainState(step=jnp.asarray(the_step, jnp.int32), params=params, opt_state=opt_state,
                       rng=jax.random.key_data(jax.random.fold_in(jax.random.PRNGKey(seed), 1)))
    source = os.fspath(ckpt.path.resolve())
    if source_url is not None:  # name the URL, not the temporary download
        source = paths.join(source_url, os.path.relpath(source, os.path.abspath(src)).replace(os.sep, "/"))
    result = ImportResult(source=source, model_dir=os.fspath(model_dir), preset=preset,
                          step=the_step, version=ckpt.version, num_params=num_params, num_arrays=len(expected),
                          checksum=checksum, optimizer_state=optimizer_note, seconds=0.0)
    if to_url:  # no rename on an object store: orbax finalises the step itself; import.json last says "complete"
        _write_model_dir(model_dir, state, flags, result, checksum)
        result = dataclasses.replace(result, seconds=time.perf_counter() - started)
        paths.write_json(paths.join(model_dir, IMPORT_INFO_FILE), result.to_json())
        return result
    staging = model_dir.parent / f".{model_dir.name}.importing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_model_dir(staging, state, flags, result, checksum)
        result = dataclasses.replace(result, seconds=time.perf_counter() - started)
        atomic_write_json(staging / IMPORT_INFO_FILE, result.to_json())
        _check_output(model_dir)  # nobody wrote there meanwhile
        if model_dir.exists():
            model_dir.rmdir()
        os.replace(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result
