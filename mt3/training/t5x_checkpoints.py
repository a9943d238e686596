"""A reader for legacy T5X checkpoints, the format of MT3's released models (`gs://mt3/checkpoints/{mt3,ismir2021}`).

Why our own reader and not t5x: t5x pins jax/flax/optax versions that stopped resolving together (magenta/mt3 #172),
and the format is small. One checkpoint directory holds
  - `checkpoint`: msgpack (flax's encoding: ext type 1 = ndarray as msgpack (shape, dtype name, C-order bytes),
    3 = numpy scalar, 2 = complex) of `{'version': 3, 'optimizer': {'target': params, 'state': {'step',
    'param_states': {path: {'v_row', 'v_col', 'v', 'm'}}}}}`;
  - one zarr v2 folder per array written outside the msgpack, named by its state-dict path joined with dots
    (`target.encoder.layers_0.attention.query.kernel/`: `.zarray` + chunk files `0.0`, `0`, ...).
In the msgpack such an array is a tensorstore spec. Writers differ in where they put the folder's path (kvstore
`gcs` + bucket, `file`, `gfile`, or a top-level `path` from tensorstore < 0.1.14) and the path may be absolute on
the machine or bucket that wrote it, so the folder is always resolved by its last path component relative to the
checkpoint directory: a copied checkpoint reads the same wherever it lies. Nothing here imports JAX or TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mt3.errors import InputError

CHECKPOINT_FILE = "checkpoint"
STATISTICS = ("v_row", "v_col", "v", "m")  # T5X Adafactor's per-parameter state
_CHUNKED_KEY = "__msgpack_chunked_array__"  # flax splits inline arrays over 1 GiB into such dicts
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")


@dataclasses.dataclass(frozen=True)
class ArrayRef:
    """An array stored outside the msgpack: its zarr folder, and the shape/dtype its spec promises."""

    name: str  # '/'-joined state-dict path, e.g. 'target/encoder/encoder_norm/scale'
    folder: Path
    shape: tuple[int, ...] | None
    dtype: np.dtype | None


Leaf = np.ndarray | ArrayRef


@dataclasses.dataclass
class T5XCheckpoint:
    """The msgpack of one checkpoint, arrays not yet read (ArrayRef) unless they were stored inline."""

    path: Path  # the `checkpoint` file
    version: int | None
    step: int | None
    target: dict[str, Leaf]  # '/'-joined parameter path (without 'target/') -> leaf
    param_states: dict[str, dict[str, Leaf]]  # parameter path -> {'v_row': leaf, ...}

    @property
    def directory(self) -> Path:
        return self.path.parent


# ---------------------------------------------------------------------------------------------------------------
# Locating and parsing the msgpack
# ---------------------------------------------------------------------------------------------------------------

def find_checkpoint_file(src: str | os.PathLike, step: int | None = None) -> Path:
    """`src/checkpoint`, or `src/checkpoint_N/checkpoint` of a T5X model dir (N = `step`, default the latest)."""
    src = Path(src)
    if not src.is_dir():
        raise InputError(src, "not a directory (pass the T5X checkpoint folder, e.g. the downloaded 'mt3/')")
    direct = src / CHECKPOINT_FILE
    if direct.is_file():
        return direct
    steps = {int(m.group(1)): p for p in src.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / CHECKPOINT_FILE).is_file()}
    if not steps:
        raise InputError(src, f"not a T5X checkpoint directory: no '{CHECKPOINT_FILE}' file (nor checkpoint_N/ "
                              "folders holding one)")
    if step is None:
        step = max(steps)
    if step not in steps:
        raise InputError(src, f"no checkpoint_{step}/ here; available steps: {sorted(steps)}")
    return steps[step] / CHECKPOINT_FILE


def _dtype(name: str | bytes) -> np.dtype:
    if isinstance(name, bytes):
        name = name.decode()
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _ndarray_from_msgpack(data: bytes) -> np.ndarray:
    import msgpack

    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    return np.frombuffer(buffer, dtype=_dtype(dtype_name)).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    import msgpack

    if code == 1:
        return _ndarray_from_msgpack(data)
    if code == 3:
        return _ndarray_from_msgpack(data)[()]
    if code == 2:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    return msgpack.ExtType(code, data)


def _unchunk(node: dict, path: Path) -> np.ndarray:
    try:
        shape = tuple(int(node["shape"][str(i)]) for i in range(len(node["shape"])))
        chunks = [np.asarray(node["chunks"][str(i)]).reshape(-1) for i in range(len(node["chunks"]))]
        return np.concatenate(chunks).reshape(shape)
    except (KeyError, ValueError, TypeError) as err:
        raise InputError(path, f"malformed chunked array in the msgpack ({err})") from err


def read_msgpack(path: str | os.PathLike) -> dict:
    """The `checkpoint` file's state dict, with flax's ndarray/scalar extension types decoded."""
    import msgpack

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from err
    try:
        state = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException) as err:
        raise InputError(path, f"not a T5X checkpoint: the msgpack does not decode ({err})") from err
    if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict) \
            or not isinstance(state["optimizer"].get("target"), dict):
        raise InputError(path, "not a T5X checkpoint: no optimizer/target state dict in the msgpack")
    return state


def _is_spec(node: Any) -> bool:
    return isinstance(node, dict) and isinstance(node.get("driver"), str) and ("kvstore" in node or "path" in node)


def _folder_component(spec: dict) -> str | None:
    """The array folder's name: the last component of the spec's path (top-level path wins, as tensorstore joins
    it onto the kvstore path); bucket and directory prefixes are ignored on purpose."""
    kvstore = spec.get("kvstore")
    candidates = [spec.get("path")]
    if isinstance(kvstore, dict):
        candidates.append(kvstore.get("path"))
    elif isinstance(kvstore, str):  # tensorstore also accepts a URL, e.g. 'gs://bucket/dir/target.x/'
        candidates.append(kvstore.split("://", 1)[-1])
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip("/"):
            name = candidate.rstrip("/").rsplit("/", 1)[-1]
            if name not in (".", ".."):
                return name
    return None


def _array_ref(spec: dict, name: str, directory: Path, path: Path) -> ArrayRef:
    conventional = name.replace("/", ".")
    component = _folder_component(spec) or conventional
    folder = directory / component
    if not folder.is_dir() and (directory / conventional).is_dir():
        folder = directory / conventional
    metadata = spec.get("metadata") if isinstance(spec.get("metadata"), dict) else {}
    shape = metadata.get("shape")
    dtype_name = spec.get("dtype") or metadata.get("dtype")
    try:
        dtype = _dtype(dtype_name) if dtype_name else None
    except TypeError as err:
        raise InputError(path, f"{name}: unknown dtype {dtype_name!r} in its tensorstore spec") from err
    return ArrayRef(name=name, folder=folder, shape=tuple(int(s) for s in shape) if shape is not None else None,
                    dtype=dtype)


def _flatten(node: Any, prefix: str, directory: Path, path: Path, out: dict[str, Any]) -> None:
    if isinstance(node, dict) and node.get(_CHUNKED_KEY):
        out[prefix] = _unchunk(node, path)
    elif _is_spec(node):
        out[prefix] = _array_ref(node, prefix, directory, path)
    elif isinstance(node, dict):
        for key, value in node.items():
            _flatten(value, f"{prefix}/{key}" if prefix else str(key), directory, path, out)
    else:
        out[prefix] = node if isinstance(node, np.ndarray) else np.asarray(node)


def read_checkpoint(src: str | os.PathLike, step: int | None = None) -> T5XCheckpoint:
    """Parses the msgpack of the checkpoint in `src` (see `find_checkpoint_file`); arrays stay on disk."""
    path = find_checkpoint_file(src, step)
    state = read_msgpack(path)
    directory = path.parent
    target: dict[str, Any] = {}
    _flatten(state["optimizer"]["target"], "", directory, path, target)
    opt = state["optimizer"].get("state") if isinstance(state["optimizer"].get("state"), dict) else {}
    flat_states: dict[str, Any] = {}
    if isinstance(opt.get("param_states"), dict):
        _flatten(opt["param_states"], "", directory, path, flat_states)
    param_states: dict[str, dict[str, Leaf]] = {}
    for key, leaf in flat_states.items():
        name, _, stat = key.rpartition("/")
        if stat in STATISTICS:
            param_states.setdefault(name, {})[stat] = leaf
    steps: dict[str, Any] = {}
    if "step" in opt:
        _flatten(opt["step"], "state/step", directory, path, steps)
    ckpt_step = None
    if steps:
        value = load_leaf(next(iter(steps.values())))  # inline in MT3's checkpoints; read it wherever it is
        if value.size != 1 or not np.issubdtype(value.dtype, np.number):
            raise InputError(path, f"the optimizer step is not a number (shape {list(value.shape)}, {value.dtype})")
        ckpt_step = int(value.reshape(-1)[0])
    version = state.get("version")
    return T5XCheckpoint(path=path, version=int(version) if isinstance(version, int | np.integer) else None,
                         step=ckpt_step, target=target, param_states=param_states)


# ---------------------------------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------------------------------

def leaf_shape(leaf: Leaf) -> tuple[int, ...] | None:
    return leaf.shape if isinstance(leaf, ArrayRef) else tuple(np.shape(leaf))


def leaf_dtype(leaf: Leaf) -> np.dtype | None:
    return leaf.dtype if isinstance(leaf, ArrayRef) else np.asarray(leaf).dtype


def _decompress(raw: bytes, compressor: dict | None, chunk_file: Path) -> bytes:
    if compressor is None:
        return raw
    kind = compressor.get("id")
    if kind not in ("gzip", "zlib"):  # read_zarr sends every other compressor to tensorstore before this point
        raise ValueError(f"{chunk_file}: _decompress handles gzip/zlib only, got {kind!r}")
    try:
        return zlib.decompress(raw, 47)  # 32 + 15: accepts a gzip or a zlib header
    except zlib.error as err:
        raise InputError(chunk_file, f"corrupt or truncated {kind} chunk ({err})") from err


def _read_with_tensorstore(folder: Path) -> np.ndarray:
    """Compressors other than gzip/zlib/none (blosc, zstd, ...): let tensorstore decode the folder."""
    import tensorstore as ts

    try:
        store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": os.fspath(folder)}},
                        open=True).result()
        return np.asarray(store.read().result())
    except (ValueError, RuntimeError) as err:
        raise InputError(folder, f"tensorstore cannot read this zarr array ({str(err)[:200]})") from err


def read_zarr(folder: str | os.PathLike) -> np.ndarray:
    """A zarr v2 array folder -> numpy (native byte order). Every chunk must be present and complete."""
    folder = Path(folder)
    meta_path = folder / ".zarray"
    if not folder.is_dir():
        raise InputError(folder, "array folder missing (the checkpoint copy is incomplete)")
    try:
        meta = json.loads(meta_path.read_text())
        shape = tuple(int(s) for s in meta["shape"])
        chunks = tuple(int(c) for c in meta["chunks"])
        dtype = _dtype(meta["dtype"])
        order = meta.get("order", "C")
        compressor = meta.get("compressor")
        separator = meta.get("dimension_separator", ".")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(meta_path, f"missing or unreadable zarr metadata ({err})") from err
    if meta.get("zarr_format", 2) != 2 or len(chunks) != len(shape) or meta.get("filters"):
        raise InputError(meta_path, "unsupported zarr array (expected zarr v2, no filters, chunks of the array's rank)")
    if compressor is not None and compressor.get("id") not in ("gzip", "zlib"):
        return _read_with_tensorstore(folder)
    out = np.empty(shape, dtype)
    grid = [math.ceil(s / c) if c else 0 for s, c in zip(shape, chunks)]
    chunk_bytes = math.prod(chunks) * dtype.itemsize
    for index in itertools.product(*(range(n) for n in grid)):
        chunk_file = folder / (separator.join(str(i) for i in index) if index else "0")
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))
        if not chunk_file.is_file():
            if meta.get("fill_value") is None:
                raise InputError(chunk_file, "chunk file missing (the checkpoint copy is incomplete)")
            out[region] = meta["fill_value"]
            continue
        data = _decompress(chunk_file.read_bytes(), compressor, chunk_file)
        if len(data) != chunk_bytes:
            raise InputError(chunk_file, f"truncated chunk: {len(data)} bytes, expected {chunk_bytes} "
                                         f"({list(chunks)} x {dtype})")
        chunk = np.frombuffer(data, dtype).reshape(chunks, order=order)
        out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
    return out.astype(dtype.newbyteorder("="), copy=False)


def load_leaf(leaf: Leaf) -> np.ndarray:
    """An inline array as is; an external one read from its folder and checked against its spec."""
    if not isinstance(leaf, ArrayRef):
        return np.asarray(leaf)
    array = read_zarr(leaf.folder)
    if leaf.shape is not None and tuple(array.shape) != leaf.shape:
        raise InputError(leaf.folder, f"shape {list(array.shape)} on disk, but the checkpoint's spec says "
                                      f"{list(leaf.shape)}")
    if leaf.dtype is not None and array.dtype != leaf.dtype.newbyteorder("="):
        raise InputError(leaf.folder, f"dtype {array.dtype} on disk, but the checkpoint's spec says {leaf.dtype}")
    return array


def load_arrays(leaves: Mapping[str, Leaf], *, workers: int | None = None,
                check: Callable[[str, np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
    """Reads many leaves in threads (zlib releases the GIL, so decompression runs in parallel)."""
    workers = workers or min(8, os.cpu_count() or 1)

    def read(name: str) -> np.ndarray:
        array = load_leaf(leaves[name])
        if check is not None:
            check(name, array)
        return array

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(read, name) for name in leaves}
        return {name: future.result() for name, future in futures.items()}
