"""What exists: seqio's Task and Mixture registries, read the same way by `mt3 train`, `eval`, `data-stats` and `tasks`.

One registry, seqio's. `mt3.tasks` registers MT3's datasets (`datasets.ALL_CONFIGS` only describes those); a user's
module adds more with `add_transcription_task_to_registry`, `tasks.add_mixture` or plain
`seqio.MixtureRegistry.add(name, [(task, 3.0), (task2, 1.0)])`, and a gin file declares mixtures without code (the
`MIXTURES` macro). Every command then resolves names here, so a name that trains also evaluates, reports statistics
and is listed, and an unknown name is answered with the closest registered ones. User modules are imported as T5X
does: `--module_import=my_project.tasks` (repeatable, before gin is parsed) and the gin macro
`MIXTURE_OR_TASK_MODULE` (after).

Gin-free: the commands read the macros (`gin_utils.load_registry`) and pass the values here.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import seqio

from mt3 import datasets, tasks
from mt3.errors import InputError

# gin-declared mixtures registered in this process: re-parsing gin (tests, eval after train) replaces them
_FROM_GIN: dict[str, Any] = {}


def names() -> list[str]:
    """Every registered task and mixture name, sorted."""
    return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def did_you_mean(name: str, known: Sequence[str], n: int = 3) -> str:
    """' (did you mean A, B?)' with the closest of `known`, or '' when none is close."""
    close = difflib.get_close_matches(name, sorted(known), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def get(name: str, what: str = "task or mixture"):
    """The seqio Task or Mixture `name`; InputError naming the closest registered names when there is none."""
    if name in seqio.MixtureRegistry.names():
        return seqio.MixtureRegistry.get(name)
    if name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(name)
    known = names()
    hint = did_you_mean(name, known) or " (`mt3 tasks` lists them)"
    raise InputError(None, f"unknown {what} {name!r}{hint}; {len(known)} are registered")


def import_modules(modules: Sequence[str] | str | None, flag: str = "--module_import") -> None:
    """Imports the user's task/mixture modules (T5X's `--module_import` and `MIXTURE_OR_TASK_MODULE`); a module that
    is missing or fails on import is one InputError line."""
    import os
    import sys

    for module in [modules] if isinstance(modules, str) else list(modules or ()):
        if not module:
            continue
        if os.getcwd() not in sys.path:  # a module in the working directory imports as with `python -m` (T5X users
            sys.path.append(os.getcwd())  # set PYTHONPATH; the `mt3` script's sys.path lacks the working directory)
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            raise InputError(None, f"{flag}={module}: no module {err.name!r} (is its folder on PYTHONPATH, or the "
                                   f"package installed?)") from err
        except InputError as err:
            raise InputError(None, f"{flag}={module}: {err}") from err
        except Exception as err:  # noqa: BLE001 - the user's module: report its error on one line
            raise InputError(None, f"{flag}={module}: importing it failed: {type(err).__name__}: {err}") from err


def register_mixtures(spec: Mapping[str, Any] | None) -> list[str]:
    """Registers the gin `MIXTURES` macro: {name: {task: rate, ...}} (explicit rates, relative numbers of examples as
    in seqio) or {name: {'tasks': [task, ...], 'temperature': T}} (MT3's rule: rate = examples^(1/T)). Returns the
    names. A name registered by code (a built-in or a module's) is refused, not replaced."""
    out = []
    for name, entry in dict(spec or {}).items():
        where = f"MIXTURES[{name!r}]"
        if not isinstance(name, str) or not isinstance(entry, Mapping) or not entry:
            raise InputError(None, f"{where}: expected {{task: rate, ...}} or {{'tasks': [...], 'temperature': T}}")
        if name in seqio.TaskRegistry.names() or (name in seqio.MixtureRegistry.names() and name not in _FROM_GIN):
            raise InputError(None, f"{where}: {name!r} is already registered (by mt3.tasks or a module); give the gin "
                                   f"mixture another name")
        seqio.MixtureRegistry.remove(name)
        try:
            if "tasks" in entry or "temperature" in entry:
                extra = set(entry) - {"tasks", "temperature"}
                if extra or not isinstance(entry.get("tasks"), list | tuple):
                    raise InputError(None, f"{where}: a temperature mixture is {{'tasks': [...], 'temperature': T}}, "
                                           f"got keys {sorted(entry)}")
                temperature = entry.get("temperature", tasks.MIXING_TEMPERATURE)
                if not isinstance(temperature, numbers.Real) or temperature <= 0:
                    raise InputError(None, f"{where}: temperature must be a number > 0, got {temperature!r}")
                tasks.add_mixture(name, tasks=list(entry["tasks"]), temperature=float(temperature))
            else:
                tasks.add_mixture(name, list(entry.items()))
        except InputError as err:
            raise InputError(None, f"{where}: {err.problem}" if not err.problem.startswith("mixture") else
                             f"MIXTURES: {err.problem}") from err
        _FROM_GIN[name] = entry
        out.append(name)
    return out


def load(*, modules: Sequence[str] | str = (), mixtures: Mapping[str, Any] | None = None, data_dir=None) -> None:
    """The registry a command reads: MT3's tasks (imported with this module), the datasets prepared under the
    command's data dir that register themselves (`prepare-data pairs`), the user's modules, then gin's mixtures (which
    may name any of those)."""
    register_prepared = getattr(tasks, "register_prepared_datasets", None)
    if register_prepared is not None and data_dir:
        register_prepared(data_dir)
    import_modules(modules, "MIXTURE_OR_TASK_MODULE")
    register_mixtures(mixtures)


# ---------------------------------------------------------------------------------------------------------------
# Training: what the indexed sampler reads
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Member:
    """One training task of a task or mixture, with its seqio rate (relative number of examples)."""

    task: str
    info: tasks.TranscriptionInfo
    rate: float


def training_members(name: str, *, data_dir=None) -> list[Member]:
    """The transcription training tasks of `name` with their rates as seqio computes them (rate functions read the
    prepared data under `data_dir`). InputError, in one line with the fix, when the indexed sampler cannot read it."""
    provider = get(name)
    subtasks = [seqio.TaskRegistry.get(t) for t in ordered_tasks(provider)]  # declared order: positions index it
    fix = (f"register it with add_transcription_task_to_registry, or read {name!r} through seqio with "
           f"--gin.train/utils.DatasetConfig.pipeline=\"'seqio'\" (resume then re-reads the consumed batches)")
    out = []
    with datasets.data_dir_override(data_dir):
        for task in subtasks:
            info = tasks.transcription_info(task)
            if info is None:
                raise InputError(None, f"{name!r}: the indexed sampler cannot read task {task.name!r}: it was not "
                                       f"registered by add_transcription_task_to_registry; {fix}")
            if info.kind != "train":
                raise InputError(None, f"{name!r}: task {task.name!r} is an inference-eval task (consecutive "
                                       f"segments of the {info.eval_split!r} split), not a training task; train on "
                                       f"{task.name.rsplit('_', 1)[0]}_train or a mixture of *_train tasks")
            if not info.standard_tokenizer:
                raise InputError(None, f"{name!r}: task {task.name!r} has its own tokenize_fn, which the indexed "
                                       f"sampler does not run; {fix}")
            rate = 1.0 if len(subtasks) == 1 else float(provider.get_rate(task))
            out.append(Member(task.name, info, rate))
    if len(out) > 1 and not any(m.rate > 0 for m in out):
        raise InputError(None, f"{name!r}: every task has rate 0")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: the inference-eval split of each name
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EvalTarget:
    """An eval task name, its dataset and the prepared split evaluated."""

    name: str
    dataset: datasets.DatasetConfig
    split: str


def ordered_tasks(provider) -> list[str]:
    """The task names of a task or mixture in the order they were given (seqio's `Mixture.tasks` sorts them)."""
    if not isinstance(provider, seqio.Mixture):
        return [provider.name]
    out: list[str] = []
    for name in provider.rate_per_task_name:
        out += ordered_tasks(get(name)) if name in seqio.MixtureRegistry.names() else [name]
    return list(dict.fromkeys(out))


def eval_target(name: str) -> EvalTarget:
    """The eval split of one task: an inference-eval task's own split; a `{prefix}_train` task's train-eval split
    under the name of the matching `{prefix}_{suffix}` task."""
    task = get(name, "eval task")
    info = tasks.transcription_info(task)
    if info is None:
        raise InputError(None, f"eval task {name!r} was not registered by add_transcription_task_to_registry: "
                               f"`mt3 eval` reads prepared transcription datasets only")
    if info.kind == "eval":
        return EvalTarget(name, info.dataset_config, info.eval_split)
    config = info.dataset_config
    prefix = name.removesuffix("_train")
    suffix = next((s.suffix for s in config.infer_eval_splits if s.name == config.train_eval_split),
                  config.train_eval_split)
    return EvalTarget(f"{prefix}_{suffix}", config, config.train_eval_split)


def eval_targets(names_: Sequence[str] = (), mixture: str | None = None) -> list[EvalTarget]:
    """Eval task names and/or a mixture (each member's eval split: `eval_target`), de-duplicated, in order."""
    wanted = []
    for name in names_:  # a mixture among the task names (INFER_EVAL_TASKS, --tasks) stands for its members
        wanted += ordered_tasks(seqio.MixtureRegistry.get(name)) if name in seqio.MixtureRegistry.names() else [name]
    if mixture:
        wanted += ordered_tasks(get(mixture, "eval mixture"))
    out: dict[str, EvalTarget] = {}
    for name in wanted:
        target = eval_target(name)
        out.setdefault(target.name, target)
    return list(out.values())


# ---------------------------------------------------------------------------------------------------------------
# Listing (`mt3 tasks`)
# ---------------------------------------------------------------------------------------------------------------

def _matches(name: str, pattern: str | None) -> bool:
    import fnmatch

    if not pattern:
        return True
    return fnmatch.fnmatch(name, pattern) if any(c in pattern for c in "*?[") else pattern in name


def describe(pattern: str | None = None, *, data_dir=None) -> dict[str, list[dict]]:
    """{"tasks": [...], "mixtures": [...]} matching `pattern` (a substring, or a glob with * ? [): each task with its
    dataset, kind, the splits it reads and their prepared hours (None: not prepared); each mixture with its tasks,
    rates and shares of examples (rates evaluated on the prepared data, as training reads them)."""
    hours_cache: dict[tuple[str, str], float | None] = {}

    def hours(config: datasets.DatasetConfig, split: str) -> float | None:
        key = (config.folder, split)
        if key not in hours_cache:
            hours_cache[key] = datasets.prepared_hours(config, split, data_dir)
        return hours_cache[key]

    task_rows = []
    for name in sorted(seqio.TaskRegistry.names()):
        if not _matches(name, pattern):
            continue
        info = tasks.transcription_info(seqio.TaskRegistry.get(name))
        if info is None:
            task_rows.append({"name": name, "kind": "other", "dataset": None, "splits": {}, "prepared": None})
            continue
        config = info.dataset_config
        splits = ([config.train_split, config.train_eval_split] if info.kind == "train" else [info.eval_split])
        split_hours = {s: hours(config, s) for s in dict.fromkeys(splits)}
        task_rows.append({"name": name, "kind": info.kind, "dataset": config.name,
                          "folder": str(config.path(data_dir)), "splits": split_hours,
                          "prepared": all(h is not None for h in split_hours.values())})
    mixture_rows = []
    with datasets.data_dir_override(data_dir):
        for name in sorted(seqio.MixtureRegistry.names()):
            mixture = seqio.MixtureRegistry.get(name)
            members = mixture.tasks
            if not (_matches(name, pattern) or any(_matches(t.name, pattern) for t in members)):
                continue
            rates = {t.name: float(mixture.get_rate(t)) for t in members}
            total = sum(rates.values()) or 1.0
            rows = []
            for t in members:
                info = tasks.transcription_info(t)
                split = None if info is None else (info.dataset_config.train_split if info.kind == "train"
                                                   else info.eval_split)
                h = None if info is None else hours(info.dataset_config, split)
                temperature = getattr(mixture.rate_per_task_name.get(t.name), "temperature", None)
                rows.append({"task": t.name, "rate": rates[t.name], "share": rates[t.name] / total,
                             "temperature": temperature, "hours": h})
            mixture_rows.append({"name": name, "source": "gin" if name in _FROM_GIN else "code", "tasks": rows,
                                 "prepared": all(r["hours"] is not None for r in rows)})
    return {"tasks": task_rows, "mixtures": mixture_rows}
