"""Gin at the edge: `--gin_file` / `--gin.NAME=VALUE` parsing, the gin file search path, the operative config.

Library code (trainer, partitioning, checkpoints, models, data) never imports gin. What gin may build is one table,
`mt3.configurables` (names MT3/T5X users know: `network.T5Config`, `trainer.OptimizerConfig`, ...);
`parse_gin_flags(stages=...)` registers the stages a command needs and lets the files name the rest unregistered, so
`mt3 transcribe` reads a model directory's config.gin without importing the training loop. Importing this module is
cheap, and it imports no module that registers configurables, so there is no import circle.

The gin files live in the repository's top-level `gin/` folder and ship inside the installed package as `mt3/gin/`
(setup.py maps one onto the other): `GIN_DIR` is whichever this install has, so `--gin_file=gin/mt3.gin` and
`--gin_file=mt3.gin` work from any directory, editable install or not.

Every gin problem (unknown configurable, parameter or macro, a value of the wrong type for a macro or a config field,
syntax error, missing file, undefined macro) surfaces here, at start-up and before anything is written, as one
`mt3.errors.InputError` line (exit code 2 from the CLI) naming the binding the user wrote.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import shutil
import tokenize
from collections.abc import Sequence
from pathlib import Path

from mt3 import configurables
from mt3.errors import InputError


def _gin_dir() -> Path:
    """The gin files: `mt3/gin/` in an installed wheel (setup.py's package_dir), else the checkout's top-level gin/."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "gin", package.parent / "gin"):
        if (candidate / "train.gin").is_file():
            return candidate
    return package.parent / "gin"


GIN_DIR = _gin_dir()
MODEL_DIR_MACRO = "MODEL_DIR"


def _search_paths(extra: Sequence[str | os.PathLike]) -> list[str]:
    # GIN_DIR's parent too, so `--gin_file=gin/local_tiny.gin` (as the README types it) works from any directory.
    paths = [os.getcwd(), *(os.fspath(p) for p in extra), os.fspath(GIN_DIR), os.fspath(GIN_DIR.parent)]
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
                    finalize: bool = True, skip_unknown: Sequence[str] = (),
                    stages: Sequence[str] = configurables.STAGES) -> GinFlags:
    """Parses gin files then bindings (later wins); `model_dir` becomes the MODEL_DIR macro, overriding the rest.

    Files are searched in the working directory, then `search_paths`, then the repository's `gin/` folder (includes
    inside gin files use the same search path). Each binding is checked before it counts: a macro no file defines or
    uses is refused with the closest known names, and a value of another type than the files' own (an int macro given
    a string) is refused naming both. `skip_unknown` lists configurables the FILES may name without them being
    registered; `stages` are the `mt3.configurables` stages registered first (default: all): the files may name the
    table's other entries without their modules being imported (a model dir's config.gin names the training loop,
    which inference never imports). Raises InputError on any problem.
    """
    import gin

    configurables.register(stages)
    skip_unknown = [*skip_unknown, *configurables.unregistered_names()]
    for path in _search_paths(search_paths):
        if path not in gin.config._LOCATION_PREFIXES:  # gin has no public way to list its search path
            gin.add_config_file_search_path(path)
    resolved = [resolve_gin_file(f, search_paths) for f in (gin_files or [])]
    user_bindings = [_quote_model_dir(b) for b in (gin_bindings or [])]
    bindings = list(user_bindings)
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
            parsed = gin.parse_config_file(os.fspath(path), skip_unknown=list(skip_unknown) or False)
            files.extend(_included_files(parsed, path, search_paths))
        known = _known_macros(files, user_bindings)
        for binding in bindings:
            _parse_binding(binding, known, user=binding in user_bindings)
        if finalize:
            gin.finalize()
    except InputError:
        gin.clear_config()
        raise
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError, OSError, KeyError) as err:
        gin.clear_config()
        message = _one_line(err).split(" in config string")[0]  # gin appends the whole config here
        if f"'{MODEL_DIR_MACRO}/gin.macro'" in message:
            raise InputError(None, "no model directory: pass --model_dir DIR (or --gin.MODEL_DIR='\"DIR\"')") from err
        raise InputError(None, f"bad gin configuration: {message}") from err
    finally:
        logging.getLogger().removeFilter(quiet)
    return GinFlags(files=list(dict.fromkeys(files)), bindings=bindings)


_MACRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MACRO_USE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")
_MISSING = object()


def as_flag(binding: str) -> str:
    """`NAME = VALUE` as the user typed it on the command line: `--gin.NAME=VALUE`."""
    name, _, value = binding.partition("=")
    return f"--gin.{name.strip()}={value.strip()}"


def _known_macros(files: Sequence[Path], bindings: Sequence[str]) -> dict[str, object]:
    """{macro: the value the files give it (or _MISSING)} for every macro the files define or any file/binding uses."""
    import gin

    defined = {scope: params.get("value") for (scope, selector), params in gin.config._CONFIG.items()
               if selector == "gin.macro"}  # gin has no public listing of macros
    used: set[str] = set(configurables.CODE_MACROS)
    for path in files:
        used.update(_MACRO_USE.findall(path.read_text(errors="replace")))
    for binding in bindings:
        used.update(_MACRO_USE.findall(binding.partition("=")[2]))
    return {**{name: _MISSING for name in used}, **defined}


def _parse_binding(binding: str, known: dict[str, object], *, user: bool) -> None:
    """Parses one `NAME = VALUE` binding; a user's binding is checked first (macro known, value of the right type)."""
    import gin

    name = binding.partition("=")[0].strip()
    is_macro = bool(_MACRO_NAME.match(name))
    if user and is_macro and name not in known:
        close = difflib.get_close_matches(name.upper(), list(known), n=3, cutoff=0.3)
        hint = f"; did you mean {' or '.join(close)}?" if close else " (the gin files define no such macro)"
        raise InputError(None, f"{as_flag(binding)}: unknown macro {name}{hint}")
    try:
        gin.parse_config(binding)
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError, KeyError) as err:
        if isinstance(err, tokenize.TokenError):
            message = f"{err.args[0]} (an unclosed bracket or quote?)"
        else:
            message = _one_line(err).split(" in config string")[0]
            message = re.sub(r"\s*\|?\s*In bindings string line \d+.*$|\s*\(line \d+\)", "", message)
        raise InputError(None, f"bad gin binding {as_flag(binding)}: {message}") from err
    if not user:
        return
    if is_macro:
        expected, where = known.get(name, _MISSING), "the gin files set"
    else:
        expected, where = _field_default(name), "its default is"
    if expected is _MISSING:
        return
    value = query_macro(name, _MISSING) if is_macro else _query(name)
    if not _same_kind(expected, value):
        raise InputError(None, f"{as_flag(binding)}: {name} takes {_kind(expected)} ({where} {expected!r}), "
                               f"got {_kind(value)} {value!r}")


def _query(selector: str):
    import gin

    try:
        return gin.query_parameter(selector)
    except ValueError:
        return _MISSING


def _field_default(selector: str):
    """The dataclass default of `[scope/]module.Config.field` (what the value's type should match), or _MISSING."""
    import gin

    configurable, _, field = selector.rpartition("/")[2].rpartition(".")
    try:
        cls = gin.get_configurable(configurable)
    except (ValueError, TypeError):
        return _MISSING
    cls = getattr(cls, "__wrapped__", cls)
    for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
        if f.name == field and f.default is not dataclasses.MISSING:
            return f.default
    return _MISSING


def _same_kind(expected, value) -> bool:
    """Whether `value` may replace `expected`: None and references always may; else bool/number/str/sequence/dict."""
    plain = (bool, int, float, str, list, tuple, dict)
    if value is _MISSING or expected is None or value is None or not isinstance(expected, plain) or \
            not isinstance(value, plain):
        return True
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(expected, bool) and isinstance(value, bool)
    if isinstance(expected, float):
        return isinstance(value, int | float)
    if isinstance(expected, list | tuple):
        return isinstance(value, list | tuple)
    return isinstance(value, type(expected))


def _kind(value) -> str:
    names = {bool: "a bool", int: "an int", float: "a float", str: "a str", list: "a list", tuple: "a tuple",
             dict: "a dict", type(None): "None"}
    return names.get(type(value), type(value).__name__)


class _DropSearchMisses(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


def _included_files(parsed, path: Path, search_paths) -> list[Path]:
    """`path` and every file it includes (depth first), resolved on the search path."""
    out = [path]
    for include in parsed.includes:
        out.extend(_included_files(include, resolve_gin_file(include.filename, search_paths), search_paths))
    return out


def build_bound_references(configurable: str) -> None:
    """Builds every `@Config()` / `%MACRO` the gin config passes to `configurable` (config dataclasses, an unbuilt Flax
    module: cheap), so their own validation (a negative batch size, ...) runs at start-up, before anything is
    written; an error becomes one InputError line naming the parameter."""
    import inspect

    import gin

    function = gin.get_configurable(configurable)
    for name in inspect.signature(getattr(function, "__wrapped__", function)).parameters:
        reference = _query(f"{configurable}.{name}")  # not gin.get_bindings: its deepcopy builds them unguarded
        try:  # a macro (`%MODEL`) evaluates to its value, itself possibly a reference (`@models.X()`)
            for _ in range(4):
                if not isinstance(reference, gin.config.ConfigurableReference):
                    break
                reference = reference.scoped_configurable_fn()
        except (ValueError, TypeError) as err:
            message = " ".join(str(err).split()).split(" In call to configurable")[0]
            raise InputError(None, f"bad gin configuration for {configurable}.{name}: {message}") from err


def load_registry(module_imports: Sequence[str] = (), data_dir: str | None = None) -> None:
    """The task/mixture registry a command reads (`mt3.registry`): MT3's tasks, datasets prepared under `data_dir`
    (else the DATA_DIR macro) that register themselves, the `--module_import` modules, the module named by the
    MIXTURE_OR_TASK_MODULE macro (T5X's conventions) and the mixtures of the MIXTURES macro."""
    from mt3 import registry

    registry.import_modules(module_imports)
    registry.load(modules=query_macro("MIXTURE_OR_TASK_MODULE") or (), mixtures=query_macro("MIXTURES"),
                  data_dir=data_dir or query_macro("DATA_DIR"))


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

    from mt3 import paths

    paths.makedirs(model_dir)  # a local folder, or nothing to make on gs:// (mt3.paths)
    text = gin.operative_config_str() if operative else gin.config_str()
    if flags is not None:
        header = [f"# gin file: {p}" for p in flags.files] + [f"# gin binding: {b}" for b in flags.bindings]
        text = "\n".join(header) + "\n\n" + text
    with paths.atomic_write(paths.join(model_dir, filename), "w") as f:
        f.write(text)
    if flags is not None:
        for path in flags.files:
            with open(path, "rb") as src, paths.atomic_write(paths.join(model_dir, "gin", path.name), "wb") as dst:
                shutil.copyfileobj(src, dst)
    written = paths.join(model_dir, filename)
    return written if paths.is_url(written) else Path(written)
