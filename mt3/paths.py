"""Local paths and URLs (`gs://bucket/run`, `s3://...`, any fsspec protocol) behind one small set of file operations.

T5X users keep model dirs and data on `gs://`. `pathlib.Path("gs://b/x")` silently means the local folder
`./gs:/b/x`, so every place a run touches a file goes through these helpers instead: a plain path uses the OS, a URL
uses fsspec (gcsfs for `gs://`), the same library orbax's `etils.epath` uses for its metadata files (its arrays go
through tensorstore's own GCS driver). No hand-written HTTP.

`require(path, flag)` is asked before any work: a URL whose protocol library is not installed is one line naming the
package to install (InputError, exit 2), not a traceback after training.

Atomicity: a local file is written to a temporary name and renamed (`mt3.data.records.atomic_write`). An object store
(gs, s3, az, ...) has no rename, but one object upload is all-or-nothing (readers see the old object or the new one,
never a part), so a URL in an object store is written in one upload; other URL protocols write a temporary name and
move it. Checkpoints on `gs://` are finalised by orbax with a `commit_success.txt` marker instead of a rename.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator
from typing import IO, Any

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")
# Object stores: one upload is atomic, and there is no rename (a "move" is copy + delete).
OBJECT_STORES = frozenset({"gs", "gcs", "s3", "s3a", "az", "abfs", "abfss", "adl", "oss", "hf"})
# The pip package that provides a protocol, where it is not the implementation's module name.
_PACKAGE = {"huggingface_hub": "huggingface_hub", "adlfs": "adlfs", "gcsfs": "gcsfs", "s3fs": "s3fs",
            "ossfs": "ossfs"}


def is_url(path: str | os.PathLike | None) -> bool:
    """Whether `path` is a URL (`scheme://...`; `file://` too) rather than a local path."""
    return path is not None and bool(_URL.match(os.fspath(path)))


def protocol(path: str | os.PathLike) -> str | None:
    """'gs' for 'gs://b/x'; None for a local path."""
    match = _URL.match(os.fspath(path))
    return match.group(1).lower() if match else None


def missing_library(path: str | os.PathLike) -> str | None:
    """None if `path` can be used here, else one line naming what to install (or that the protocol is unknown)."""
    proto = protocol(path)
    if proto is None:
        return None
    import fsspec
    from fsspec.registry import known_implementations, registry

    known = known_implementations.get(proto)
    if proto not in registry and known is None:
        return f"unknown URL protocol {proto}:// (fsspec knows none by that name)"
    try:
        fsspec.get_filesystem_class(proto)
    except ImportError:
        module = known["class"].split(".")[0] if known else proto
        package = _PACKAGE.get(module, module.replace("_", "-"))
        return f"{proto}:// paths need the {package} package: pip install {package}"
    return None


def require(path: str | os.PathLike | None, flag: str | None = None) -> None:
    """InputError (exit 2) naming `flag`/`path` when `path` is a URL whose protocol library is missing. Asked before
    any work. For `gs://`, also makes orbax's etils.epath use fsspec/gcsfs (not TensorFlow's GCS client), so the
    trainer imports no TensorFlow and honours `STORAGE_EMULATOR_HOST` like the rest of the run."""
    if path is None or not is_url(path):
        return
    problem = missing_library(path)
    if problem is not None:
        from mt3.errors import InputError

        raise InputError(path, f"{flag}: {problem}" if flag else problem)
    os.environ.setdefault("EPATH_USE_TF", "false")


def _fs(path: str | os.PathLike):
    """(fsspec filesystem, path as that filesystem names it)."""
    from fsspec.core import url_to_fs

    # No listings cache: orbax/tensorstore and other processes write beside us, and a cached listing would miss them.
    return url_to_fs(os.fspath(path), use_listings_cache=False)


# ---------------------------------------------------------------------------------------------------------------
# Names

def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...`: posix joins for URLs (never `os.path` on a URL), OS joins for local paths."""
    base = os.fspath(base)
    if is_url(base):
        return posixpath.join(base, *parts) if parts else base
    return os.path.join(base, *parts)


def name(path: str | os.PathLike) -> str:
    return posixpath.basename(os.fspath(path).rstrip("/")) if is_url(path) else os.path.basename(os.fspath(path))


def parent(path: str | os.PathLike) -> str:
    """The enclosing directory; a bucket's root (`gs://b`) is its own parent."""
    path = os.fspath(path)
    match = _URL.match(path)
    if match is None:
        return os.path.dirname(path)
    rest = path[match.end():].rstrip("/")
    return match.group(0) + (posixpath.dirname(rest) or rest)


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute; a URL as given (without a trailing slash)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def as_epath(path: str | os.PathLike):
    """`etils.epath.Path` for orbax: gs://, s3://, ... stay URLs (a `pathlib.Path` would make them local folders)."""
    from etils import epath

    require(path)
    return epath.Path(absolute(path))


# ---------------------------------------------------------------------------------------------------------------
# Queries

def exists(path: str | os.PathLike) -> bool:
    if not is_url(path):
        return os.path.exists(path)
    fs, stripped = _fs(path)
    return fs.exists(stripped)


def isdir(path: str | os.PathLike) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    fs, stripped = _fs(path)
    return fs.isdir(stripped)


def isfile(path: str | os.PathLike) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    fs, stripped = _fs(path)
    return fs.isfile(stripped)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names (not paths) of the entries of a directory, sorted; [] when it does not exist."""
    if not is_url(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs, stripped = _fs(path)
    try:
        entries = fs.ls(stripped, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted({posixpath.basename(e.rstrip("/")) for e in entries} - {""})


def getsize(path: str | os.PathLike) -> int:
    if not is_url(path):
        return os.path.getsize(path)
    fs, stripped = _fs(path)
    return int(fs.size(stripped))


# ---------------------------------------------------------------------------------------------------------------
# Reading and writing

def open_file(path: str | os.PathLike, mode: str = "rb") -> IO[Any]:
    """Open for reading (or a non-atomic write): the OS for local paths, fsspec for URLs."""
    if not is_url(path):
        return open(path, mode)
    import fsspec

    return fsspec.open(os.fspath(path), mode).open()


def read_bytes(path: str | os.PathLike) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def makedirs(path: str | os.PathLike) -> None:
    """Creates a directory and its parents (object stores have no directories: nothing to do there)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)
        return
    if protocol(path) in OBJECT_STORES:
        return
    fs, stripped = _fs(path)
    fs.makedirs(stripped, exist_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file that appears complete or not at all (see the module docstring for URLs)."""
    if not is_url(path):
        from mt3.data import records

        with records.atomic_write(path, mode) as f:
            yield f
        return
    fs, stripped = _fs(path)
    if protocol(path) in OBJECT_STORES:
        # One upload per object, made only after the block succeeded: the data goes to a local temporary file first,
        # so an exception (or a kill) never leaves a partial object behind.
        with tempfile.TemporaryDirectory(prefix="mt3-upload-") as tmp:
            local = os.path.join(tmp, "data")
            with open(local, mode) as f:
                yield f
            fs.put_file(local, stripped)
        return
    tmp = f"{stripped}.tmp-{os.getpid()}"
    with fs.open(tmp, mode) as f:
        yield f
    fs.mv(tmp, stripped)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """As `mt3.data.records.atomic_write_json`: indented, sorted keys, a final newline."""
    import json

    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove(path: str | os.PathLike) -> None:
    if not is_url(path):
        os.remove(path)
        return
    fs, stripped = _fs(path)
    fs.rm(stripped)


def move_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Renames a directory (local: one `os.replace`; URL: copy every object, then delete the source)."""
    if not is_url(src) and not is_url(dst):
        os.replace(src, dst)
        return
    fs, stripped_src = _fs(src)
    _, stripped_dst = _fs(dst)
    fs.copy(stripped_src, stripped_dst, recursive=True)
    fs.rm(stripped_src, recursive=True)


def upload_tree(local_dir: str | os.PathLike, dst: str | os.PathLike, *, last: tuple[str, ...] = ()) -> None:
    """Copies a local directory tree to `dst` (local or URL), file by file, each file atomically; top-level files
    named in `last` go after everything else (a reader that sees `results.json` then sees the files it names)."""
    local_dir = os.fspath(local_dir)
    for root, _, files in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        for filename in sorted(files):
            if rel == "." and filename in last:
                continue
            upload_tree_file(os.path.join(root, filename),
                             join(dst, *([] if rel == "." else rel.split(os.sep)), filename))
    for filename in last:
        if os.path.isfile(os.path.join(local_dir, filename)):
            upload_tree_file(os.path.join(local_dir, filename), join(dst, filename))


def upload_tree_file(local: str, target: str) -> None:
    """One local file to `target` (local or URL), atomically (an object store: one upload, whole or absent)."""
    if is_url(target) and protocol(target) in OBJECT_STORES:
        fs, stripped = _fs(target)
        fs.put_file(local, stripped)
        return
    if not is_url(target):
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    with open(local, "rb") as src, atomic_write(target, "wb") as out:
        while chunk := src.read(1 << 22):
            out.write(chunk)


@contextlib.contextmanager
def staged_dir(dst: str | os.PathLike, *, last: tuple[str, ...] = ()) -> Iterator[str]:
    """A local folder to write reports into: `dst` itself when local; for a URL a temporary folder uploaded to `dst`
    when the block succeeds (files named in `last` uploaded last), then removed. Writers that know only local files
    (matplotlib, pretty_midi, tensorboardX) then work unchanged."""
    if not is_url(dst):
        yield os.fspath(dst)
        return
    with tempfile.TemporaryDirectory(prefix="mt3-staged-") as tmp:
        yield tmp
        upload_tree(tmp, dst, last=last)


def download_tree(src: str | os.PathLike, local_dir: str | os.PathLike) -> str:
    """Copies a URL directory tree into `local_dir` (made if needed); returns `local_dir`."""
    fs, stripped = _fs(src)
    os.makedirs(local_dir, exist_ok=True)
    prefix = stripped.rstrip("/") + "/"
    for remote in fs.find(stripped):
        rel = remote[len(prefix):] if remote.startswith(prefix) else posixpath.basename(remote)
        target = os.path.join(os.fspath(local_dir), *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fs.get_file(remote, target)
    return os.fspath(local_dir)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike, prefix: str = "mt3-") -> Iterator[str]:
    """A local directory with `path`'s contents: `path` itself when local, else a temporary download (removed after)."""
    if not is_url(path):
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield download_tree(path, os.path.join(tmp, name(path) or "dir"))
