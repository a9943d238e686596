"""The model that ships inside the package, so `mt3 transcribe` and `mt3 serve` work with no checkpoint flag.

A bundled model is a folder `mt3/pretrained/NAME/` with three files:
  - `config.gin`: the operative gin config of the training run (model shape, vocabulary, target length),
  - `params.npz`: the parameters in bfloat16 (half the bytes of float32; restored as float32), one array per
    parameter path (`encoder/layers_0/attention/query/kernel`, ...), stored as uint16 bit patterns so numpy alone can
    read the file,
  - `model.json`: name, training step and date, the training command, the eval summary and the sha256 of params.npz,
    which is checked on every load (a corrupt or swapped file is refused, not half-used).
`write_bundle` writes such a folder (`mt3 export-model` feeds it a trained model dir); `read_flat_params` is
the one reader of params.npz, for inference (`model_loading.restore_params` via `load_params`) and for fine-tuning
(`checkpoints.read_stored_params`).
`default_model_dir()` is the one place commands and the Python API ask for "the default model".
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mt3.errors import InputError

BUNDLED_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_NAME = "local_cpu"
FALLBACK_RUN_DIR = "runs/local_tiny"  # the quickstart's model dir, used only when no bundled model is installed
PARAMS_FILE = "params.npz"
INFO_FILE = "model.json"
CONFIG_FILE = "config.gin"


def default_model_dir() -> Path:
    """The bundled model's directory when it ships with the package, else the quickstart's run directory."""
    bundled = BUNDLED_DIR / DEFAULT_MODEL_NAME
    if is_bundled_model(bundled):
        return bundled
    return Path(FALLBACK_RUN_DIR)


def is_bundled_model(model_dir: str | os.PathLike) -> bool:
    """True for a folder in the bundled format (params.npz + model.json + config.gin), not an orbax model dir."""
    from mt3 import paths

    return all(paths.isfile(paths.join(model_dir, name)) for name in (PARAMS_FILE, INFO_FILE, CONFIG_FILE))


def sha256_of(path: str | os.PathLike) -> str:
    from mt3 import paths

    digest = hashlib.sha256()
    with paths.open_file(path, "rb") as f:  # local, or a URL (gs://...)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def read_info(model_dir: str | os.PathLike) -> dict[str, Any]:
    from mt3 import paths

    path = paths.join(model_dir, INFO_FILE)
    try:
        return json.loads(paths.read_text(path))
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable bundled-model description ({err})") from err


def read_flat_params(model_dir: str | os.PathLike, step: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """({'encoder/.../kernel': uint16 bfloat16 bits}, training step) of a bundled model, after its sha256 check.

    The one reader of params.npz: `load_params` checks the arrays against a model's shapes, and fine-tuning
    (`checkpoints.read_stored_params`) compares names itself. A bundle holds one step; asking for another is an error.
    """
    import io

    from mt3 import paths

    info = read_info(model_dir)
    bundled_step = int(info.get("step", 0))
    if step is not None and int(step) != bundled_step:
        raise InputError(model_dir, f"bundled model holds step {bundled_step} only, not {step}")
    params_path = paths.join(model_dir, PARAMS_FILE)
    data = paths.read_bytes(params_path)  # read once (a URL is one download), then checked and parsed from memory
    if hashlib.sha256(data).hexdigest() != info.get("params_sha256"):
        raise InputError(params_path, "checksum differs from model.json (corrupt or replaced file)")
    try:
        with np.load(io.BytesIO(data)) as stored:
            return {name: stored[name] for name in stored.files}, bundled_step
    except (OSError, ValueError) as err:
        raise InputError(params_path, f"unreadable parameters ({err})") from err


def bits_to_float32(bits: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return bits.view(ml_dtypes.bfloat16).astype(np.float32)


def load_params(model_dir: str | os.PathLike, abstract_params: Any, step: int | None = None
                ) -> tuple[dict[str, Any], int]:
    """(float32 parameter tree, training step) of a bundled model, checked against the model's parameter shapes
    and against the sha256 recorded in model.json."""
    from mt3 import paths

    params_path = paths.join(model_dir, PARAMS_FILE)
    stored, bundled_step = read_flat_params(model_dir, step)
    expected = _flatten(abstract_params)
    if set(stored) != set(expected):
        missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        raise InputError(params_path, f"parameters do not match config.gin (missing {missing[:3]}, "
                                      f"unexpected {extra[:3]})")
    flat = {}
    for name, spec in expected.items():
        bits = stored[name]
        if bits.dtype != np.uint16 or bits.shape != tuple(spec.shape):
            raise InputError(params_path, f"{name}: stored {bits.dtype}{list(bits.shape)}, the model needs "
                                          f"bfloat16 bits (uint16){list(spec.shape)}")
        flat[name] = bits_to_float32(bits)
    return _unflatten(flat), bundled_step


BUNDLE_FILES = frozenset({PARAMS_FILE, INFO_FILE, CONFIG_FILE})


def check_bundle_target(out_dir: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuses (InputError naming `out_dir`) a target that would lose anything but a bundle: an existing file, a
    non-empty folder that is not a bundle (someone's files), a bundle holding other files too, or a bundle without
    `overwrite`; and a parent that cannot be created or written. Why: `export-model -o precious/` once replaced the
    whole folder; a user's files must never go with it. Cheap, so `mt3 export-model` calls it before restoring."""
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise InputError(out_dir, "exists and is not a directory (-o names the bundle folder to create)")
        entries = sorted(p.name for p in out_dir.iterdir())
        if entries:
            if not is_bundled_model(out_dir):
                raise InputError(out_dir, f"exists and is not empty ({len(entries)} entries, e.g. {entries[0]!r}) "
                                          "and is not a bundled model: choose a new or empty folder")
            others = sorted(set(entries) - BUNDLE_FILES)
            if others:
                raise InputError(out_dir, f"is a bundled model but also holds {others[:3]}: refusing to replace it")
            if not overwrite:
                raise InputError(out_dir, "already holds a bundled model (pass --overwrite to replace it)")
    from mt3.output_dirs import check_writable_dir

    check_writable_dir(out_dir.parent, "-o")


def write_bundle(params: Any, config_gin: str | os.PathLike, out_dir: str | os.PathLike, *, name: str, step: int,
                 extra_info: Mapping[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Writes a bundled model (parameters rounded to bfloat16, the run's config.gin, model.json) to `out_dir`
    atomically: a temporary folder renamed at the end, readable by everyone (0644). Returns the model.json contents.

    `out_dir` must be new or empty; with `overwrite` it may also be an existing bundle (and nothing else: see
    `check_bundle_target`), which is renamed aside, replaced and only then deleted.

    Takes parameters, not a model dir, so this module never imports the inference code that reads bundles back
    (`commands/export_model.py` restores a checkpoint and calls this)."""
    import shutil
    import tempfile

    import ml_dtypes

    out_dir = Path(out_dir)
    check_bundle_target(out_dir, overwrite=overwrite)
    flat = {k: np.asarray(v, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
            for k, v in _flatten(params).items()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        np.savez(tmp / PARAMS_FILE, **flat)
        from mt3 import paths

        (tmp / CONFIG_FILE).write_bytes(paths.read_bytes(config_gin))  # a local file or a URL (gs://...)
        info = {"name": name, "step": int(step), "num_params": int(sum(v.size for v in flat.values())),
                "exported": datetime.date.today().isoformat(), "params_sha256": sha256_of(tmp / PARAMS_FILE),
                **dict(extra_info or {})}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        for path in tmp.iterdir():
            os.chmod(path, 0o644)
        os.chmod(tmp, 0o755)
        old = None
        if out_dir.is_dir() and any(out_dir.iterdir()):  # an existing bundle (checked above): swap, then delete
            check_bundle_target(out_dir, overwrite=overwrite)
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        try:
            os.replace(tmp, out_dir)  # an empty out_dir is replaced by the rename
        except BaseException:
            if old is not None:
                os.replace(old / out_dir.name, out_dir)
            raise
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
