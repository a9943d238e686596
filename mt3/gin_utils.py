"""Gin at the edge: `--gin_file` / `--gin.NAME=VALUE` parsing, configurable registration, the operative config.

Library code (trainer, partitioning, checkpoints, models) never imports gin; this module registers their functions and
config dataclasses with `gin.external_configurable` under the names MT3/T5X users know (`network.T5Config`,
`models.ContinuousInputsEncoderDecoderModel`, `utils.DatasetConfig`, `train_script.train`, ...). Registration happens
inside `parse_gin_flags`, so importing this module is cheap. Every gin problem (unknown configurable or parameter,
syntax error, missing file, undefined macro) surfaces here, at start-up and before any heavy work, as an
`mt3.errors.InputError` (exit code 2 from the CLI) carrying gin's own message.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tokenize
from collections.abc import Sequence
from pathlib import Path

from mt3.errors import InputError

REPO_GIN_DIR = Path(__file__).resolve().parent.parent / "gin"
MODEL_DIR_MACRO = "MODEL_DIR"

_REGISTERED = False


def register_configurables() -> None:
    """Registers every configurable the gin files may name (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import gin

    from mt3 import checkpoints, evaluation, partitioning, train, trainer
    from mt3.models import models, network

    ext = gin.external_configurable
    ext(network.T5Config, module="network")
    ext(network.Transformer, module="network")
    ext(models.ContinuousInputsEncoderDecoderModel, module="models")
    ext(train.train, module="train_script")
    ext(train.TrainLoopConfig, module="train_script")
    ext(train.DatasetConfig, module="utils")
    ext(trainer.OptimizerConfig, module="trainer")
    ext(checkpoints.CheckpointConfig, module="checkpoints")
    ext(partitioning.PartitionConfig, module="partitioning")
    ext(partitioning.standard_logical_axis_rules, module="partitioning")
    evaluation.register_gin_configurables()  # inference.InferenceConfig, evaluation.EvalConfig (eval/infer gin)
    _REGISTERED = True


def _search_paths(extra: Sequence[str | os.PathLike]) -> list[str]:
    # The repo root too, so `--gin_file=gin/local_tiny.gin` (as the README types it) works from any directory.
    paths = [os.getcwd(), *(os.fspath(p) for p in extra), os.fspath(REPO_GIN_DIR), os.fspath(REPO_GIN_DIR.parent)]
    return list(dict.fromkeys(paths))


def resolve_gin_file(name: str | os.PathLike, search_paths: Sequence[str | os.PathLike] = ()) -> Path:
    """The file gin would read for `name`: absolute as given, else the first hit in cwd, search_paths, repo gin/."""
    name = os.fspath(name)
    if os.path.isabs(name):
        if os.path.isfile(name):
            return Path(name)
    else:
        for prefix in _search_paths(search_paths):
            candidate = Path(prefix) / name
            if candidate.is_file():
                return candidate
    raise InputError(name, f"gin file not found (searched {_search_paths(search_paths)})")


def _quote_model_dir(binding: str) -> str:
    """`MODEL_DIR = /x` -> `MODEL_DIR = '/x'`: users often forget gin's string quotes for this one macro."""
    name, _, value = binding.partition("=")
    value = value.strip()
    if name.strip() == MODEL_DIR_MACRO and value and value[0] not in "'\"%@(" and value != "None":
        return f"{MODEL_DIR_MACRO} = {value!r}"
    return binding


def _one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines()]
    return " | ".join(line for line in lines if line and set(line) != {"^"})


@dataclasses.dataclass(frozen=True)
class GinFlags:
    """What `parse_gin_flags` parsed: the resolved files (includes too) and bindings, for the model directory."""

    files: list[Path]
    bindings: list[str]


def parse_gin_flags(gin_files: Sequence[str | os.PathLike] | None, gin_bindings: Sequence[str] | None = None, *,
                    search_paths: Sequence[str | os.PathLike] = (), model_dir: str | os.PathLike | None = None,
                    finalize: bool = True) -> GinFlags:
    """Parses gin files then bindings (later wins); `model_dir` becomes the MODEL_DIR macro, overriding the rest.

    Files are searched in the working directory, then `search_paths`, then the repository's `gin/` folder (includes
    inside gin files use the same search path). Raises InputError with gin's message on any problem.
    """
    import gin

    register_configurables()
    for path in _search_paths(search_paths):
        if path not in gin.config._LOCATION_PREFIXES:  # gin has no public way to list its search path
            gin.add_config_file_search_path(path)
    resolved = [resolve_gin_file(f, search_paths) for f in (gin_files or [])]
    bindings = [_quote_model_dir(b) for b in (gin_bindings or [])]
    if model_dir is not None:
        bindings.append(f"{MODEL_DIR_MACRO} = {os.fspath(model_dir)!r}")
    gin.clear_config()
    files: list[Path] = []
    quiet = _DropSearchMisses()
    logging.getLogger().addFilter(quiet)  # gin logs every search-path miss as an error while looking for includes
    try:
        for path in resolved:
            if path.resolve() in {f.resolve() for f in files}:
                continue  # already read (e.g. train.gin, included by a preset): reading it again would undo overrides
            files.extend(_included_files(gin.parse_config_file(os.fspath(path)), path, search_paths))
        gin.parse_config(bindings)
        if finalize:
            gin.finalize()
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError, OSError, KeyError) as err:
        gin.clear_config()
        message = _one_line(err).split(" in config string")[0]  # gin appends the whole config here
        if f"'{MODEL_DIR_MACRO}/gin.macro'" in message:
            raise InputError(None, "no model directory: pass --model_dir DIR (or --gin.MODEL_DIR='\"DIR\"')") from err
        raise InputError(None, f"bad gin configuration: {message}") from err
    finally:
        logging.getLogger().removeFilter(quiet)
    return GinFlags(files=list(dict.fromkeys(files)), bindings=bindings)


class _DropSearchMisses(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


def _included_files(parsed, path: Path, search_paths) -> list[Path]:
    """`path` and every file it includes (depth first), resolved on the search path."""
    out = [path]
    for include in parsed.includes:
        out.extend(_included_files(include, resolve_gin_file(include.filename, search_paths), search_paths))
    return out


def query_macro(name: str, default=None):
    """The value bound to gin macro `name`, or `default` when it is not bound."""
    import gin

    try:
        return gin.query_parameter(f"{name}/macro.value")
    except ValueError:
        return default


def write_operative_config(model_dir: str | os.PathLike, flags: GinFlags | None = None,
                           filename: str = "config.gin", operative: bool = False) -> Path:
    """Writes the parsed config (or gin's operative config: only what was called) and copies the gin files used.

    `config.gin` is written at start-up from the full parsed config, so a run that dies early still records what it
    was told; `operative_config.gin` (operative=True) after the first step records what was actually used.
    """
    import gin

    from mt3.records import atomic_write

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    text = gin.operative_config_str() if operative else gin.config_str()
    if flags is not None:
        header = [f"# gin file: {p}" for p in flags.files] + [f"# gin binding: {b}" for b in flags.bindings]
        text = "\n".join(header) + "\n\n" + text
    with atomic_write(model_dir / filename, "w") as f:
        f.write(text)
    if flags is not None:
        for path in flags.files:
            with open(path, "rb") as src, atomic_write(model_dir / "gin" / path.name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return model_dir / filename
