"""Writes small checkpoints in the legacy T5X layout of MT3's released models, from the format's facts (our own code).

Layout: a msgpack file `checkpoint` (flax's encoding: ext type 1 = ndarray as msgpack (shape, dtype name, C-order
bytes)) holding `{'version': 3, 'optimizer': {'target': params, 'state': {'step', 'param_states'}}}`, and one zarr
v2 folder per external array named by its path joined with dots (`.zarray` + one gzip chunk `0.0` / `0`). External
arrays appear in the msgpack as tensorstore specs, in one of the storage forms writers produced:
  gcs       kvstore {'driver': 'gcs', 'bucket', 'path': <absolute path in the bucket>}
  file      kvstore {'driver': 'file', 'path': <absolute path on the writing machine>}
  gfile     kvstore {'driver': 'gfile', 'path': <relative name>}
  toplevel  kvstore {'driver': 'gcs', 'bucket'} and the name in a top-level 'path' (tensorstore < 0.1.14)
  inline    every array inside the msgpack
In every form, arrays of at most `inline_max_size` elements (norm scales, factored statistics) stay inline.
Used by tests/test_import_checkpoint.py and benchmarks/import_checkpoint.py.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from pathlib import Path

import msgpack
import numpy as np

STORAGE_FORMS = ("gcs", "file", "gfile", "toplevel", "inline")
WRITER_DIR = "/home/writer/mt3_train/checkpoint_{step}"  # where the "other machine" wrote it (never read)


def _pack(obj):
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(1, msgpack.packb((list(obj.shape), obj.dtype.name, obj.tobytes("C")),
                                                use_bin_type=True))
    if isinstance(obj, np.generic):
        return msgpack.ExtType(3, msgpack.packb(((), obj.dtype.name, np.asarray(obj).tobytes("C")),
                                                use_bin_type=True))
    raise TypeError(f"cannot pack {type(obj)}")


def write_zarr(folder: Path, array: np.ndarray, *, level: int = 1) -> None:
    """One zarr v2 array, one chunk holding all of it, gzip-compressed, as T5X writes through tensorstore."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"zarr_format": 2, "shape": list(array.shape), "chunks": list(array.shape), "dtype": array.dtype.str,
            "compressor": {"id": "gzip", "level": level}, "fill_value": None, "filters": None, "order": "C"}
    (folder / ".zarray").write_text(json.dumps(meta))
    key = ".".join("0" for _ in array.shape) or "0"
    (folder / key).write_bytes(gzip.compress(np.ascontiguousarray(array).tobytes(), compresslevel=level))


def _spec(name: str, array: np.ndarray, form: str, step: int) -> dict:
    folder = name.replace("/", ".")
    spec = {"driver": "zarr", "dtype": array.dtype.name,
            "metadata": {"shape": list(array.shape), "chunks": list(array.shape),
                         "compressor": {"id": "gzip", "level": 1}, "dtype": array.dtype.str}}
    writer_dir = WRITER_DIR.format(step=step)
    if form == "gcs":
        spec["kvstore"] = {"driver": "gcs", "bucket": "mt3", "path": f"checkpoints/mt3/{folder}"}
    elif form == "file":
        spec["kvstore"] = {"driver": "file", "path": f"{writer_dir}/{folder}"}
    elif form == "gfile":
        spec["kvstore"] = {"driver": "gfile", "path": folder}
    elif form == "toplevel":
        spec["kvstore"] = {"driver": "gcs", "bucket": "mt3"}
        spec["path"] = f"{writer_dir.lstrip('/')}/{folder}"
    else:
        raise ValueError(form)
    return spec


def _nest(flat: Mapping[str, object]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def adafactor_statistics(params: Mapping[str, np.ndarray], seed: int = 0,
                         min_dim_size_to_factor: int = 128) -> dict[str, dict[str, np.ndarray]]:
    """Random positive Adafactor statistics in T5X's layout for rank <= 2 parameters (its heuristic factoring):
    factored when the second-largest dimension is >= 128; v_row drops the largest dimension, v_col the second."""
    rng = np.random.default_rng(seed)
    out = {}
    placeholder = np.zeros((1,), np.float32)
    for name, p in params.items():
        shape = p.shape
        sorted_dims = np.argsort(shape)
        if len(shape) >= 2 and shape[sorted_dims[-2]] >= min_dim_size_to_factor:
            d1, d0 = int(sorted_dims[-2]), int(sorted_dims[-1])
            out[name] = {"v_row": rng.random(np.delete(shape, d0)).astype(np.float32),
                         "v_col": rng.random(np.delete(shape, d1)).astype(np.float32),
                         "v": placeholder, "m": placeholder}
        else:
            out[name] = {"v_row": placeholder, "v_col": placeholder,
                         "v": rng.random(shape).astype(np.float32), "m": placeholder}
    return out


def write_t5x_checkpoint(directory: str | Path, params: Mapping[str, np.ndarray], *, step: int,
                         param_states: Mapping[str, Mapping[str, np.ndarray]] | None = None, form: str = "file",
                         inline_max_size: int = 1024, version: int = 3, level: int = 1) -> Path:
    """Writes `params` ('/'-joined names -> arrays) and Adafactor statistics as a T5X checkpoint in `directory`."""
    if form not in STORAGE_FORMS:
        raise ValueError(f"form must be one of {STORAGE_FORMS}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def leaf(name: str, array: np.ndarray):
        array = np.asarray(array)
        if form == "inline" or array.size <= inline_max_size:
            return array
        write_zarr(directory / name.replace("/", "."), array, level=level)
        return _spec(name, array, form, step)

    target = {name: leaf(f"target/{name}", a) for name, a in params.items()}
    states = {f"{name}/{stat}": leaf(f"state/param_states/{name}/{stat}", a)
              for name, stats in (param_states or {}).items() for stat, a in stats.items()}
    state = {"version": version, "optimizer": {
        "target": _nest(target),
        "state": {"step": np.asarray(step, np.int32), "param_states": _nest(states)}}}
    (directory / "checkpoint").write_bytes(msgpack.packb(state, default=_pack, use_bin_type=True))
    return directory
