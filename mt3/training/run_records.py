"""Run records: what each start of `mt3 train` ran, kept in the model directory so a run is reproducible from it.

Every start (the first, and each resume after a preemption or a time limit) writes, on process 0:
- `MODEL_DIR/runs/<start step>.json`: the command line, working directory, host name, git commit and dirty flag of the
  mt3 checkout, every installed package's version, the host count and devices, the data directory as configured AND as
  resolved (`$MT3_DATA_DIR` or the default, never `None`), the sha256 of every prepared split's manifest under it, the
  config changes since the previous start and whether `--allow_config_change` let guarded ones through;
- `MODEL_DIR/runs/<start step>.config.gin`: that start's config.gin. `config.gin` itself always holds the newest
  start's config (what `mt3 transcribe`/`eval` read); the copies under runs/ are never overwritten (a second start at
  the same step gets `<step>.2.json`, ...), so the run's config history is kept;
- after the first step, the operative config as a TensorBoard text summary under MODEL_DIR/train (as T5X does).

Only file writes and cheap queries: nothing here touches devices beyond listing them, and no TensorFlow is imported.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUNS_SUBDIR = "runs"
# Environment variables worth keeping (launcher and data settings); names suggesting secrets are never recorded.
ENV_PREFIXES = ("MT3_", "JAX_", "XLA_", "TPU_", "SLURM_JOB_", "SLURM_NNODES", "SLURM_NTASKS", "SLURM_PROCID",
                "CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL")
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "KEY", "CREDENTIAL")


def _is_url(path: str) -> bool:
    return "://" in path


def _join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/"), *parts[1:]]) if _is_url(parts[0]) else os.path.join(*parts)


# URLs (gs://...) go through mt3.paths (fsspec), imported only for them.

def _exists(path: str) -> bool:
    if _is_url(path):
        from mt3 import paths

        return paths.exists(path)
    return os.path.exists(path)


def _read_bytes(path: str) -> bytes:
    if _is_url(path):
        from mt3 import paths

        return paths.read_bytes(path)
    with open(path, "rb") as f:
        return f.read()


def _write_text(path: str, text: str) -> None:
    """Atomic for local files (temp name + rename); an object store writes one whole object."""
    if _is_url(path):
        from mt3 import paths

        paths.makedirs(paths.parent(path))
        paths.write_text(path, text)
        return
    from mt3.data.records import atomic_write

    with atomic_write(path, "w") as f:
        f.write(text)


def git_state(repo: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """{commit, dirty, changed} of the git checkout holding the mt3 package (None when it is not one, e.g. a wheel).
    `dirty` counts tracked files only: untracked data or run folders inside a checkout do not change the code."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:50], "repository": str(repo)}


def package_versions() -> dict[str, str]:
    """Every installed distribution and its version (the whole environment: a `pip freeze` of this run)."""
    versions = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions[name.lower()] = dist.version
    return dict(sorted(versions.items()))


def device_facts() -> dict[str, Any]:
    """Host count, this host's index, and the devices (platform, kind, global and local counts)."""
    import jax

    devices = jax.devices()
    return {"process_count": jax.process_count(), "process_index": jax.process_index(),
            "platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
            "jax": jax.__version__}


def manifest_hashes(data_root: str) -> dict[str, str]:
    """sha256 of every prepared split's manifest under `data_root` (`<dataset>/<split>.manifest.json`): the manifest
    lists the split's shards and is written last, so its hash identifies the prepared data a run read."""
    if _is_url(data_root):
        from mt3 import paths

        found = [f"{d}/{f}" for d in paths.listdir(data_root) for f in paths.listdir(_join(data_root, d))
                 if f.endswith(".manifest.json")]
    else:
        root = Path(data_root)
        found = [f"{p.parent.name}/{p.name}" for p in root.glob("*/*.manifest.json")] if root.is_dir() else []
    return {rel: hashlib.sha256(_read_bytes(_join(data_root, *rel.split("/")))).hexdigest() for rel in sorted(found)}


def data_facts(*, data_dir: str | None, source: str | None, mixture_or_task_name: str | None) -> dict[str, Any]:
    """The data directory as configured and as the tasks resolve it (explicit > $MT3_DATA_DIR > ./data/prepared)."""
    from mt3 import datasets

    resolved = datasets.resolve_data_dir(data_dir)
    absolute = resolved if _is_url(resolved) else os.path.abspath(resolved)
    facts = {"DATA_DIR": data_dir, "MT3_DATA_DIR": os.environ.get(datasets.DATA_DIR_ENV), "resolved": absolute,
             "source": source, "mixture_or_task_name": mixture_or_task_name, "manifests": {}}
    if source != "synthetic":
        facts["manifests"] = manifest_hashes(absolute)
    return facts


def _environment() -> dict[str, str]:
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith(ENV_PREFIXES) and not any(word in k.upper() for word in SECRET_WORDS)}


def _unique_stem(runs_dir: str, step: int) -> str:
    stem, n = str(step), 1
    while _exists(_join(runs_dir, f"{stem}.json")) or _exists(_join(runs_dir, f"{stem}.config.gin")):
        n += 1
        stem = f"{step}.{n}"
    return stem


class RunRecorder:
    """Collects a start's facts; `start(step)` writes its record and config copy once the restored step is known,
    `operative_config_summary(text)` writes the TensorBoard text summary after the first step."""

    def __init__(self, model_dir: str | os.PathLike, *, argv: Sequence[str] | None = None,
                 allow_config_change: bool = False, config_changes: Sequence[Any] = (),
                 data: dict[str, Any] | None = None):
        self.model_dir = os.fspath(model_dir)
        self.argv = list(sys.argv if argv is None else argv)
        self.allow_config_change = allow_config_change
        self.config_changes = [c.as_json() if hasattr(c, "as_json") else c for c in config_changes]
        self.data = data
        self.start_step: int | None = None
        self.record_path: str | None = None

    def record(self, step: int) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC)
        return {
            "start_step": step, "started_at": now.isoformat(timespec="seconds"),
            "command": self.argv, "cwd": os.getcwd(), "host": socket.gethostname(),
            "python": platform.python_version(), "git": git_state(), "packages": package_versions(),
            "devices": device_facts(), "data": self.data, "environment": _environment(),
            "allow_config_change": self.allow_config_change, "config_changes": self.config_changes,
        }

    def start(self, step: int) -> str:
        """Writes runs/<step>.json and runs/<step>.config.gin (a copy of config.gin as this start wrote it)."""
        runs_dir = _join(self.model_dir, RUNS_SUBDIR)
        stem = _unique_stem(runs_dir, step)
        record = self.record(step)
        config = _join(self.model_dir, "config.gin")
        if _exists(config):
            _write_text(_join(runs_dir, f"{stem}.config.gin"), _read_bytes(config).decode("utf-8"))
            record["config_file"] = f"{RUNS_SUBDIR}/{stem}.config.gin"
        self.start_step, self.record_path = step, _join(runs_dir, f"{stem}.json")
        _write_text(self.record_path, json.dumps(record, indent=2, sort_keys=True, default=repr) + "\n")
        return self.record_path

    def operative_config_summary(self, text: str | None = None) -> None:
        """The operative config (default: gin's, after the first step) as a TensorBoard text summary, a markdown code
        block as T5X writes it, at the start step."""
        from tensorboardX import SummaryWriter

        if text is None:
            import gin

            text = gin.operative_config_str()

        logdir = _join(self.model_dir, "train")
        with contextlib.ExitStack() as stack:
            if _is_url(logdir):  # tensorboardX writes local files: stage them, then upload
                from mt3 import paths

                paths.makedirs(logdir)
                logdir = stack.enter_context(paths.staged_dir(logdir))
            writer = SummaryWriter(logdir)
            try:
                writer.add_text("operative_config", "\n".join("    " + line for line in text.splitlines()),
                                self.start_step or 0)
            finally:
                writer.close()


def list_records(model_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The run records of a model directory (a local path or a URL such as gs://...), oldest start first."""
    from mt3 import paths

    runs = paths.join(model_dir, RUNS_SUBDIR)
    names = sorted((n for n in paths.listdir(runs) if n.endswith(".json")),
                   key=lambda n: tuple(int(x) for x in n[:-len(".json")].split(".")))
    return [json.loads(paths.read_text(paths.join(runs, n))) for n in names]


def from_gin(model_dir: str | os.PathLike, *, allow_config_change: bool = False) -> RunRecorder | None:
    """The config-change guard on every process (InputError before any work), then, on process 0, a recorder of this
    start holding the guard's findings and the data facts of the parsed gin config."""
    import jax

    from mt3 import gin_utils
    from mt3.training import config_guard

    chief = jax.process_index() == 0
    changes = config_guard.check_gin_resume(
        model_dir, allow=allow_config_change,
        note=(lambda line: print(f"mt3 train: {line}", flush=True)) if chief else (lambda line: None))
    if not chief:
        return None
    data = data_facts(data_dir=gin_utils.query_macro("DATA_DIR"), source=gin_utils.query_macro("DATA_SOURCE"),
                      mixture_or_task_name=gin_utils.query_macro("MIXTURE_OR_TASK_NAME"))
    return RunRecorder(model_dir, allow_config_change=allow_config_change, config_changes=changes, data=data)
