"""The config-change guard of `mt3 train`: a resumed run must train the model it restored, on the stream it restored.

A checkpoint holds parameters shaped by the model config and a data position counted in batches of one task at one
batch size. Resuming it with another model, vocabulary, task/mixture, feature lengths, batch size or shuffle seed either
fails deep inside orbax or, worse, trains on silently (a position of 170 batches of 8 is not 170 batches of 4). So on
resume the parsed config is compared with the run's previous one (MODEL_DIR/config.gin, written by the last start) and
such a change is refused in one line naming each binding with its old and new value, before any work. Everything else
(learning rate, schedule, eval and checkpoint cadence, TRAIN_STEPS, data location, ...) may change; those changes are
reported and kept in the run record (`mt3.training.run_records`). `--allow_config_change` turns the refusal into a
warning, recorded too.

Both configs are read the same way, from the text gin writes (`gin.config_str()`), with gin's own parser and no
registry, so a run dir written by an older version of mt3 compares as well as a new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

# What the checkpoint and the restored data position depend on (short configurable names, as config.gin writes them).
GUARDED_CONFIGURABLES = frozenset({"T5Config", "Transformer"})  # every binding: the model's shapes and arithmetic...
# ...but the activation dtype (bfloat16 on a GPU or TPU: the same float32 parameters) and dropout.
FREE_MODEL_BINDINGS = frozenset({"T5Config.dtype", "T5Config.dropout_rate"})
GUARDED_BINDINGS = frozenset({
    "ContinuousInputsEncoderDecoderModel.module", "train.model",  # which model
    "train/DatasetConfig.mixture_or_task_name", "train/DatasetConfig.task_feature_lengths",  # the task / mixture
    "train/DatasetConfig.batch_size", "train/DatasetConfig.seed", "train/DatasetConfig.source",  # the data position
    "train/DatasetConfig.split", "train/DatasetConfig.shuffle", "train/DatasetConfig.pipeline",
    "train/DatasetConfig.block_tracks",
})
# Bindings that change the parameters only when they turn something on or off (the auxiliary frame heads exist only
# with a weight > 0; 10 -> 5 is a loss weight, 0 -> 10 adds parameters the checkpoint does not have).
GUARDED_WHEN_SWITCHED = frozenset({"ContinuousInputsEncoderDecoderModel.aux_frame_loss_weight"})
# Vocabulary macros that code reads (mt3.model_loading / tasks) rather than a configurable's parameter.
GUARDED_MACROS = frozenset({"NUM_EMBEDDINGS", "NUM_VELOCITY_BINS", "USE_TIES", "ONSETS_ONLY", "PROGRAM_GRANULARITY",
                            "MIXTURE_OR_TASK_NAME", "BATCH_SIZE", "MODEL"})
IGNORED_MACROS = frozenset({"MODEL_DIR"})  # where the run is, not what it is
ALLOW_FLAG = "--allow_config_change"


@dataclasses.dataclass(frozen=True)
class _Macro:
    name: str

    def __repr__(self) -> str:
        return f"%{self.name}"


@dataclasses.dataclass(frozen=True)
class _Reference:
    name: str
    evaluate: bool

    def __repr__(self) -> str:
        return f"@{self.name}" + ("()" if self.evaluate else "")


@dataclasses.dataclass(frozen=True)
class Bindings:
    """A parsed config: macros by name, parameters by `scope/Configurable.param` (short configurable names)."""

    macros: Mapping[str, Any]
    params: Mapping[str, Any]

    def resolve(self, value: Any, depth: int = 0) -> Any:
        """A macro reference followed to its value (references to configurables stay as `@name()`)."""
        while isinstance(value, _Macro) and depth < 16:
            value, depth = self.macros.get(value.name, _ABSENT), depth + 1
        return value


class _Absent:
    def __repr__(self) -> str:
        return "(unset)"


_ABSENT = _Absent()


@dataclasses.dataclass(frozen=True)
class Change:
    name: str
    old: Any
    new: Any
    guarded: bool

    def describe(self) -> str:
        return f"{self.name} {self.old!r} -> {self.new!r}"

    def as_json(self) -> dict:
        return {"name": self.name, "old": repr(self.old), "new": repr(self.new), "guarded": self.guarded}


def parse_bindings(text: str) -> Bindings:
    """The bindings of a gin config text (as `gin.config_str()` writes it); no configurable has to be registered."""
    from gin import config_parser

    class Delegate(config_parser.ParserDelegate):
        def configurable_reference(self, scoped_configurable_name, evaluate):
            return _Reference(scoped_configurable_name, evaluate)

        def macro(self, macro_name):
            return _Macro(macro_name)

    macros: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for statement in config_parser.ConfigParser(text, Delegate()):
        if not isinstance(statement, config_parser.BindingStatement):
            continue  # imports, includes: config_str writes none that matter here
        configurable = statement.selector.rsplit(".", 1)[-1]
        if not statement.arg_name and not statement.scope and "." not in statement.selector:
            macros[statement.selector] = statement.value
            continue
        scope = f"{statement.scope}/" if statement.scope else ""
        params[f"{scope}{configurable}.{statement.arg_name}"] = statement.value
    return Bindings(macros=macros, params=params)


def _is_guarded(key: str) -> bool:
    configurable = key.split("/")[-1].split(".")[0]
    return (configurable in GUARDED_CONFIGURABLES and key not in FREE_MODEL_BINDINGS) or key in GUARDED_BINDINGS


def _is_on(value: Any) -> bool:
    return isinstance(value, (int, float)) and value > 0


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):  # True == 1 in Python, not in a config
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001  (values without a plain ==: compare their text)
        return repr(a) == repr(b)


def diff(old: Bindings, new: Bindings, default: Callable[[str], Any] = lambda key: _ABSENT,
         evaluate: Callable[[Any], Any] = lambda reference: reference) -> list[Change]:
    """Every binding whose value differs, named by its macro where both configs bind it through the same macro (what
    users write: `BATCH_SIZE 8 -> 4`), else by `scope/Configurable.param`; guarded as the strictest use of it.
    `default(key)` is a parameter's value where a config does not bind it (a binding a newer gin file adds with the
    default value is no change); `evaluate(reference)` the value of a `@fn()` where the other config has a plain value
    (`NUM_EMBEDDINGS = 1536` then, `= @vocabularies.num_embeddings()` now: the same 1536)."""
    changes: dict[str, Change] = {}

    def add(name: str, old_value: Any, new_value: Any, guarded: bool) -> None:
        if not _same(old_value, new_value) and isinstance(old_value, _Reference) != isinstance(new_value, _Reference):
            old_value, new_value = (evaluate(v) if isinstance(v, _Reference) else v for v in (old_value, new_value))
        if _same(old_value, new_value):
            return
        guarded = guarded and old_value is not _ABSENT  # the previous config did not say: nothing to contradict
        previous = changes.get(name)
        changes[name] = Change(name, old_value, new_value, guarded or (previous is not None and previous.guarded))

    for key in sorted(set(old.params) | set(new.params)):
        o, n = old.params.get(key, _ABSENT), new.params.get(key, _ABSENT)
        o, n = (default(key) if v is _ABSENT else v for v in (o, n))
        name = o.name if isinstance(o, _Macro) and isinstance(n, _Macro) and o.name == n.name else key
        if name in IGNORED_MACROS:
            continue
        old_value, new_value = old.resolve(o), new.resolve(n)
        switched = key in GUARDED_WHEN_SWITCHED and _is_on(old_value) != _is_on(new_value)
        add(name, old_value, new_value, _is_guarded(key) or switched)
    for name in sorted(set(old.macros) | set(new.macros)):
        if name in IGNORED_MACROS:
            continue
        guarded = name in GUARDED_MACROS or (name in changes and changes[name].guarded)
        add(name, old.resolve(_Macro(name)), new.resolve(_Macro(name)), guarded)
    return sorted(changes.values(), key=lambda c: (not c.guarded, c.name))


def previous_config_path(model_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(model_dir), "config.gin")


def _read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist (local paths and fsspec/epath URLs alike)."""
    if "://" in path:
        from mt3 import paths  # fsspec (gcsfs for gs://), as every other file of a run

        return paths.read_text(path) if paths.exists(path) else None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def check_resume(model_dir: str | os.PathLike, new_text: str, *, resuming: bool, allow: bool, note=print,
                 default: Callable[[str], Any] = lambda key: _ABSENT,
                 evaluate: Callable[[Any], Any] = lambda reference: reference) -> list[Change]:
    """The changes since the run's previous config (empty when this is not a resume or there is none).

    A guarded change raises InputError (exit 2) naming every guarded binding with its old and new value, unless
    `allow`; then it is reported as a warning. Free changes are reported as a note. Either way the list goes into
    the run record.
    """
    from mt3.errors import InputError

    if not resuming:
        return []
    path = previous_config_path(model_dir)
    old_text = _read_text(path)
    if old_text is None:
        return []
    try:
        changes = diff(parse_bindings(old_text), parse_bindings(new_text), default, evaluate)
    except (SyntaxError, ValueError) as err:  # a hand-edited config.gin: say so, do not block the resume on it
        note(f"warning: cannot compare with the previous config {path} ({err}); not checking for config changes")
        return []
    guarded = [c for c in changes if c.guarded]
    free = [c for c in changes if not c.guarded]
    if guarded and not allow:
        raise InputError(path, "resuming with a changed " + "; ".join(c.describe() for c in guarded) +
                         " (the checkpoint was trained with the old values; start a new --model_dir, restore the old "
                         f"values, or pass {ALLOW_FLAG} to train on anyway)")
    if guarded:
        note(f"warning: resuming with a changed {'; '.join(c.describe() for c in guarded)} ({ALLOW_FLAG})")
    if free:
        note(f"note: config changed since the last start: {'; '.join(c.describe() for c in free)}")
    return changes


def check_gin_resume(model_dir: str | os.PathLike, *, allow: bool, note=print) -> list[Change]:
    """`check_resume` for the parsed gin config: a resume is a run dir with a finished checkpoint, restored (the
    default: `checkpoints.CheckpointConfig.restore`)."""
    import gin

    from mt3.training import checkpoints

    try:
        restore = gin.query_parameter("checkpoints.CheckpointConfig.restore")
    except ValueError:
        restore = True
    resuming = bool(restore) and bool(checkpoints.complete_steps(model_dir))
    return check_resume(model_dir, gin.config_str(), resuming=resuming, allow=allow, note=note,
                        default=registered_default, evaluate=evaluate_reference)


def evaluate_reference(reference: Any) -> Any:
    """`@fn()` called with the current gin config, when it yields a plain value (a number, a string, ...); anything
    else (a model, a failure) stays the reference."""
    import gin

    if not isinstance(reference, _Reference) or not reference.evaluate:
        return reference
    scope, _, name = reference.name.rpartition("/")
    try:
        fn = gin.get_configurable(name)
        with gin.config_scope(scope) if scope else contextlib.nullcontext():
            value = fn()
    except Exception:  # noqa: BLE001  (whatever it raises, the reference's text is compared instead)
        return reference
    return value if isinstance(value, (bool, int, float, str, tuple, list, dict, type(None))) else reference


def registered_default(key: str) -> Any:
    """The default value of parameter `scope/Configurable.param` of a registered configurable (its dataclass field or
    function argument), or unset."""
    import inspect

    import gin

    configurable, _, param = key.rpartition("/")[2].rpartition(".")
    try:
        fn = gin.get_configurable(configurable)
    except (ValueError, TypeError, KeyError):
        return _ABSENT
    fn = getattr(fn, "__wrapped__", fn)
    if dataclasses.is_dataclass(fn):  # gin wraps a class in a subclass whose __init__ takes (*args, **kwargs)
        for field in dataclasses.fields(fn):
            if field.name == param and field.default is not dataclasses.MISSING:
                return field.default
            if field.name == param and field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
        return _ABSENT
    try:
        parameter = inspect.signature(fn).parameters.get(param)
    except (TypeError, ValueError):
        return _ABSENT
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return _ABSENT
    return parameter.default
