"""`mt3 eval`: full-track inference on prepared eval splits, MT3's metrics per track and per dataset, reports, plots.

For every eval task (MT3 task names such as `local_notes_ties_vb1_test`, or a `*_eval` mixture of them) the prepared
split's FULL tracks are transcribed with `mt3.inference` (segments of several tracks share batches), each estimate is
scored against the record's reference NoteSequence with `mt3.metrics.note_metrics`, and the dataset with
`mt3.metrics.transcription_metrics` (mean over tracks, as MT3). Outputs under OUT: `results.json`, `results.md`,
`midi/TASK/ID.mid` (each track's estimate), `plots/TASK/ID.png` (reference vs estimate for the first few tracks).
`--all-checkpoints` repeats this per checkpoint step (`OUT/step_N/`) and plots each metric against step. The default
OUT is MODEL_DIR/infer_eval (reports in `step_N/`, as training's INFER_EVAL_TASKS writes them), beside training's
summary folders `train/` and `eval/`, never inside them; TensorBoard scalars `TASK/metric` at each checkpoint's step
go to OUT too (`EvalScalars`), so `tensorboard --logdir MODEL_DIR` shows an eval sweep as the run `infer_eval`.

The estimate is scored as the MIDI file we write (`midi_io.midi_round_trip`, exact on its 1 ms tick grid), so the
numbers equal `mt3 score REF.mid OUT/midi/TASK/ID.mid` for a reference MIDI of the same notes.

Records are read WITHOUT TensorFlow (`records.read_records`), so this module runs on GPU hosts that have only JAX.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mt3 import datasets
from mt3.data import records
from mt3.errors import InputError

EVAL_GIN = "eval.gin"
DEFAULT_OUT = "infer_eval"  # under MODEL_DIR: reports in step_N/, TensorBoard scalars beside them
HEADLINE_METRICS = (  # (results.md column, results.json key)
    ("Onset F1", "onset_f1"),
    ("Onset+offset F1", "onset_offset_f1"),
    ("Multi-instrument F1", "multi_instrument_f1"),
    ("Drum F1", "drum_onset_f1"),
    ("Frame F1", "frame_f1"),
)
# ---------------------------------------------------------------------------------------------------------------------
# tasks


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """One eval task: a prepared split of one dataset, named as MT3 names it."""

    name: str
    dataset: datasets.DatasetConfig
    split: str

    def shard_paths(self, data_dir: str | os.PathLike | None = None) -> list[str]:
        path = self.dataset.path(data_dir)
        if not records.split_is_complete(path, self.split):
            raise InputError(path, f"split {self.split!r} of dataset {self.dataset.name!r} is not prepared (no "
                                   f"complete {self.split}.manifest.json); run "
                                   f"`mt3 prepare-data {self.dataset.converter} "
                                   f"--root ... --out {path}` or set ${datasets.DATA_DIR_ENV}")
        return records.shard_paths(path, self.split)


def resolve_tasks(tasks: Sequence[str] = (), mixture: str | None = None, split: str | None = None) -> list[EvalTask]:
    """Eval task names and/or one mixture -> EvalTasks; `split` replaces every task's prepared split.

    Names come from seqio's registry (`mt3.registry`): every transcription task registered there evaluates, MT3's own,
    a user's `add_transcription_task_to_registry` and tasks of a user's module or gin mixture alike. A mixture means
    each member's eval split (an inference-eval task's own split; a training task's train-eval split). Raises
    InputError naming the closest registered names for an unknown one.
    """
    from mt3 import registry

    if not tasks and not mixture:
        raise InputError(None, "no eval tasks: pass --tasks T1,T2 or --mixture M (e.g. local_notes_ties_vb1_test)")
    out = []
    for target in registry.eval_targets(tasks, mixture):
        task = EvalTask(target.name, target.dataset, target.split)
        if split is not None:
            if split not in task.dataset.splits:
                raise InputError(None, f"dataset {task.dataset.name!r} has no split {split!r} ({task.dataset.splits})")
            suffix = re.sub(r"_[^_]+$", "", task.name)
            task = EvalTask(f"{suffix}_{split}", task.dataset, split)
        out.append(task)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# evaluation


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What `mt3 eval` evaluates and writes (gin: `evaluation.EvalConfig`, bound in gin/eval.gin).

    max_tracks: first N tracks of each split (None = all); num_plots: reference-vs-estimate PNGs per task;
    group_segments: segments buffered before decoding (bounds memory; tracks in one group share batches).
    """

    max_tracks: int | None = None
    num_plots: int = 3
    write_midi: bool = True
    data_dir: str | None = None
    group_segments: int = 512

    def __post_init__(self):
        if self.max_tracks is not None and self.max_tracks < 1:
            raise ValueError(f"EvalConfig.max_tracks must be None or >= 1, got {self.max_tracks!r}")
        if self.num_plots < 0 or self.group_segments < 1:
            raise ValueError(f"EvalConfig.num_plots must be >= 0 and group_segments >= 1, got {self}")


def safe_name(track_id: str) -> str:
    """A track id as one file name (`2018/MIDI-x` -> `2018__MIDI-x`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", track_id.replace("/", "__")).strip("._") or "track"


def _track_groups(recs: Iterator[records.TrackRecord], im, limit: int) -> Iterator[list[records.TrackRecord]]:
    group: list[records.TrackRecord] = []
    segments = 0
    for rec in recs:
        group.append(rec)
        segments += math.ceil((len(rec.audio) // im.hop_width + 1) / im.input_frames)
        if segments >= limit:
            yield group
            group, segments = [], 0
    if group:
        yield group


def evaluate_task(im, task: EvalTask, out_dir: str | os.PathLike | None, config: EvalConfig = EvalConfig(), *,
                  progress: bool = True) -> dict[str, Any]:
    """Transcribes and scores every track of one task; writes MIDI/PNGs under out_dir (None = write nothing).

    Returns {"task", "dataset", "split", "metrics" (transcription_metrics), "tracks": [per-track entries]}.
    """
    from itertools import islice

    from tqdm import tqdm

    from mt3 import metrics, midi_io, plotting

    paths = task.shard_paths(config.data_dir)
    manifest = records.read_manifest(task.dataset.path(config.data_dir), task.split)
    total = manifest.get("num_tracks")
    total = min(total, config.max_tracks) if total is not None and config.max_tracks else total
    recs = islice(records.read_records(paths), config.max_tracks)
    onsets_only = im.spec.onsets_only
    velocity = im.spec.vocab_config.num_velocity_bins > 1
    examples, tracks = [], []
    out = Path(out_dir) if out_dir is not None else None
    with tqdm(total=total, desc=task.name, unit="track", disable=not progress) as bar:
        for group in _track_groups(recs, im, config.group_segments):
            results = im.transcribe_many([r.audio for r in group], progress=False)
            for rec, result in zip(group, results, strict=True):
                ref = metrics.prepare_reference(rec.sequence)
                est = midi_io.midi_round_trip(result.ns)
                entry = {"id": rec.id, "seconds": round(result.audio_seconds, 3), "segments": result.num_segments,
                         "invalid_events": result.invalid_events, "dropped_events": result.dropped_events,
                         "duplicate_notes_removed": result.duplicate_notes_removed,
                         "metrics": metrics.note_metrics(ref, est, onsets_only=onsets_only, velocity=velocity),
                         "instrument_classes": metrics.instrument_class_metrics(ref, est)}
                if out is not None and config.write_midi:
                    midi_path = out / "midi" / task.name / f"{safe_name(rec.id)}.mid"
                    midi_io.write_midi(result.ns, midi_path)
                    entry["midi"] = os.path.relpath(midi_path, out)
                if out is not None and len(tracks) < config.num_plots:
                    png = out / "plots" / task.name / f"{safe_name(rec.id)}.png"
                    plotting.plot_reference_vs_estimate(ref, est, png, title=f"{task.name}: {rec.id}")
                    entry["plot"] = os.path.relpath(png, out)
                examples.append({"ref_ns": ref, "est_ns": est, "est_invalid_events": result.invalid_events,
                                 "est_dropped_events": result.dropped_events})
                tracks.append(entry)
                bar.update(1)
    if not tracks:
        raise InputError(task.dataset.path(config.data_dir), f"split {task.split!r} holds no tracks")
    aggregate = metrics.transcription_metrics(examples, onsets_only=onsets_only, velocity=velocity)
    return {"task": task.name, "dataset": task.dataset.name, "split": task.split, "num_tracks": len(tracks),
            "metrics": aggregate, "tracks": tracks}


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def results_markdown(results: Mapping[str, Any]) -> str:
    """results.md: dataset x headline F1 table, then a per-instrument-class table per task."""
    lines = [f"# mt3 eval: {results.get('checkpoint', '')} step {results.get('step')}", "",
             "| task | dataset | tracks | " + " | ".join(c for c, _ in HEADLINE_METRICS) + " | invalid | dropped |",
             "|---|---|---:|" + "---:|" * len(HEADLINE_METRICS) + "---:|---:|"]
    for name, task in results["tasks"].items():
        m = task["metrics"]
        lines.append(f"| {name} | {task['dataset']} | {task['num_tracks']} | "
                     + " | ".join(_fmt(m.get(key)) for _, key in HEADLINE_METRICS)
                     + f" | {m.get('est_invalid_events', 0)} | {m.get('est_dropped_events', 0)} |")
    for name, task in results["tasks"].items():
        classes = task["metrics"].get("instrument_classes") or {}
        lines += ["", f"## {name}: per instrument class", "",
                  "| class | ref notes | est notes | onset F1 | onset+offset F1 |", "|---|---:|---:|---:|---:|"]
        for cls, entry in classes.items():
            lines.append(f"| {cls} | {entry['ref_notes']} | {entry['est_notes']} | {_fmt(entry.get('onset_f1'))} | "
                         f"{_fmt(entry.get('onset_offset_f1'))} |")
        plots = [t["plot"] for t in task["tracks"] if "plot" in t]
        if plots:
            lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def evaluate(im, tasks: Sequence[EvalTask], out_dir: str | os.PathLike | None, config: EvalConfig = EvalConfig(),
             *, progress: bool = True) -> dict[str, Any]:
    """Every task with one InferenceModel; writes OUT/results.json and OUT/results.md (unless out_dir is None).
    A URL out_dir (gs://...) is written locally first and uploaded when complete, results.json last."""
    from mt3 import paths as mt3_paths

    if out_dir is not None and mt3_paths.is_url(out_dir):
        with mt3_paths.staged_dir(out_dir, last=("results.json",)) as local:
            return evaluate(im, tasks, local, config, progress=progress)
    results = {"checkpoint": im.info.get("model_dir"), "step": im.info.get("step"), "model": im.describe(),
               "tasks": {}}
    for task in tasks:
        results["tasks"][task.name] = evaluate_task(im, task, out_dir, config, progress=progress)
    results = _json_safe(results)
    if out_dir is not None:
        records.atomic_write_json(Path(out_dir) / "results.json", results)
        with records.atomic_write(Path(out_dir) / "results.md", "w") as f:
            f.write(results_markdown(results))
    return results


def flat_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """{"TASK/metric": value} of the headline metrics that are defined (for TensorBoard and the trainer hook)."""
    out = {}
    for name, task in results["tasks"].items():
        for _, key in HEADLINE_METRICS:
            value = task["metrics"].get(key)
            if value is not None:
                out[f"{name}/{key}"] = float(value)
    return out


class EvalScalars:
    """TensorBoard scalars `TASK/metric` at each checkpoint's step from `mt3 eval`, under `logdir` (by default
    MODEL_DIR/infer_eval: the run `infer_eval` that training's INFER_EVAL_TASKS writes, beside its `train` and `eval`
    runs), so a sweep over checkpoints shows beside the training curves. tensorboardX, as training; the events file
    carries this process's id, so a training run writing the same folder keeps its own file. A URL logdir is written
    locally and uploaded after each step."""

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = logdir
        self._writer = None
        self._staging = None

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._writer is None:
            import tempfile

            from tensorboardX import SummaryWriter

            local = self.logdir
            if "://" in os.fspath(self.logdir):
                self._staging = tempfile.TemporaryDirectory(prefix="mt3-eval-summaries-")
                local = self._staging.name
            self._writer = SummaryWriter(os.fspath(local), filename_suffix=f".mt3eval.{os.getpid()}")
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, int(step))
        self._writer.flush()
        self._upload()

    def _upload(self) -> None:
        if self._staging is not None:
            from mt3 import paths

            paths.makedirs(self.logdir)
            paths.upload_tree(self._staging.name, self.logdir)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._upload()  # what the writer's thread wrote since the last flush
        if self._staging is not None:
            self._staging.cleanup()


def _curves(per_step: Mapping[int, Mapping[str, Any]], task: str) -> dict[str, list[float | None]]:
    steps = sorted(per_step)
    return {key: [per_step[s]["tasks"][task]["metrics"].get(key) for s in steps] for _, key in HEADLINE_METRICS}


def write_sweep(per_step: Mapping[int, Mapping[str, Any]], out_dir: str | os.PathLike) -> None:
    """OUT/results.json ({steps, per-step headline metrics}), OUT/results.md, OUT/curves_TASK.png."""
    from mt3 import paths as mt3_paths
    from mt3 import plotting

    if mt3_paths.is_url(out_dir):  # gs://...: written locally, then uploaded (results.json last)
        with mt3_paths.staged_dir(out_dir, last=("results.json",)) as local:
            return write_sweep(per_step, local)

    out = Path(out_dir)
    steps = sorted(per_step)
    tasks = list(per_step[steps[0]]["tasks"])
    summary = {"checkpoint": per_step[steps[0]].get("checkpoint"), "steps": steps,
               "results": {str(s): f"step_{s}/results.json" for s in steps},
               "curves": {t: _curves(per_step, t) for t in tasks}}
    records.atomic_write_json(out / "results.json", _json_safe(summary))
    lines = [f"# mt3 eval sweep: {summary['checkpoint']}", ""]
    for task in tasks:
        png = plotting.plot_metric_curves(steps, _curves(per_step, task), out / f"curves_{safe_name(task)}.png",
                                          title=task, ylabel="F1")
        lines += [f"## {task}", "", "| step | " + " | ".join(c for c, _ in HEADLINE_METRICS) + " |",
                  "|---:|" + "---:|" * len(HEADLINE_METRICS)]
        for s in steps:
            m = per_step[s]["tasks"][task]["metrics"]
            lines.append(f"| {s} | " + " | ".join(_fmt(m.get(key)) for _, key in HEADLINE_METRICS) + " |")
        lines += ["", f"![{png.name}]({png.name})", ""]
    with records.atomic_write(out / "results.md", "w") as f:
        f.write("\n".join(lines))


def run_eval(model_dir: str | os.PathLike, *, tasks: Sequence[str] = (), mixture: str | None = None,
             split: str | None = None, out_dir: str | os.PathLike | None = None, all_checkpoints: bool = False,
             step: int | None = None, max_tracks: int | None = None, batch_size: int | None = None,
             gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = (), progress: bool = True,
             module_imports: Sequence[str] = ()) -> dict:
    """`mt3 eval`: loads MODEL_DIR (config.gin + gin/eval.gin + extra gin), evaluates the latest checkpoint (or
    `step`, or every step with all_checkpoints) and writes the reports. Returns the results (or the sweep summary)."""
    import gin

    from mt3 import gin_utils, inference, model_loading
    from mt3.training import checkpoints

    if module_imports:  # T5X's --module_import: before gin, as the run's own modules may define configurables
        from mt3 import registry

        registry.import_modules(module_imports)
    model = model_loading.parse_model_dir_gin(model_dir, gin_files, gin_bindings, role_gin=EVAL_GIN)
    try:
        infer_config = gin.get_configurable("inference.InferenceConfig")()
        eval_config = gin.get_configurable("evaluation.EvalConfig")()
    except (ValueError, TypeError) as err:
        raise InputError(None, f"bad eval configuration: {err}") from err
    infer_config = model_loading.with_model_defaults(infer_config)
    if batch_size is not None:
        infer_config = dataclasses.replace(infer_config, batch_size=batch_size)
    if max_tracks is not None:
        eval_config = dataclasses.replace(eval_config, max_tracks=max_tracks)
    if not tasks and not mixture:
        names = gin_utils.query_macro("EVAL_TASKS") or ()
        tasks = [names] if isinstance(names, str) else list(names)
        mixture = gin_utils.query_macro("EVAL_MIXTURE") or (None if tasks else _default_mixture())
    # the run's MIXTURE_OR_TASK_MODULE and gin MIXTURES (its config.gin has them), datasets prepared under the data dir
    gin_utils.load_registry(data_dir=eval_config.data_dir)
    eval_tasks = resolve_tasks(tasks, mixture, split)
    spec = model_loading.spec_from_gin(model)
    from mt3 import paths as mt3_paths

    # beside training's summaries, not in them: MODEL_DIR/infer_eval/step_N/, as training's INFER_EVAL_TASKS writes
    out = out_dir if out_dir is not None else mt3_paths.join(model_dir, DEFAULT_OUT)
    mt3_paths.require(out, "--out")
    out = out if mt3_paths.is_url(out) else Path(out)  # Path("gs://b") would be a local folder
    steps = checkpoints.complete_steps(model_dir) if all_checkpoints else [step]
    if not steps:
        raise InputError(model_dir, "no checkpoints to evaluate")
    im, per_step, scalars = None, {}, EvalScalars(out)
    for s in steps:
        try:
            params, restored = model_loading.restore_params(model_dir, model, s)
        except InputError as err:
            if not all_checkpoints:
                raise
            print(f"mt3 eval: warning: skipping step {s}: {err}", file=sys.stderr, flush=True)  # sweep the rest
            continue
        info = {"model_dir": mt3_paths.absolute(model_dir) if mt3_paths.is_url(model_dir)
                else os.fspath(Path(model_dir).resolve()), "step": restored}
        if im is None:
            im = inference.InferenceModel(model, params, spec=spec, config=infer_config, info=info)
        else:  # same shapes: keep the compiled decoder, swap the parameters
            im.params, im.info = params, {**im.info, **info}
        target = mt3_paths.join(out, f"step_{restored}") if all_checkpoints or out_dir is None else out
        per_step[restored] = evaluate(im, eval_tasks, target, eval_config, progress=progress)
        per_step[restored].update(out_dir=os.fspath(target), summary_dir=os.fspath(out))
        scalars.write(restored, flat_metrics(per_step[restored]))
    scalars.close()
    if all_checkpoints:
        if not per_step:
            raise InputError(model_dir, "no checkpoint restores (see the warnings above)")
        write_sweep(per_step, out)
        return {"steps": sorted(per_step), "results": per_step}
    return next(iter(per_step.values()))


def _default_mixture() -> str | None:
    from mt3 import gin_utils

    prefix = gin_utils.query_macro("TASK_PREFIX")
    if not prefix:
        raise InputError(None, "no eval tasks: pass --tasks T1,T2 or --mixture M")
    return f"{prefix}_eval"


def make_infer_eval_fn(model, *, tasks: Sequence[str] = (), mixture: str | None = None, spec=None,
                       infer_config=None, eval_config: EvalConfig = EvalConfig(num_plots=1),
                       out_dir: str | os.PathLike | None = None) -> Callable[[int, Any], dict[str, float]]:
    """The trainer's hook (`mt3.training.train.train(..., infer_eval_fn=...)`): `fn(step, params) -> {"TASK/metric":
    F1}`.

    Full-track inference eval during training, as MT3's infer_eval. The decoder is compiled on the first call and
    reused (only the parameters change); with out_dir, each step's reports go to OUT/step_N/.
    """
    from mt3 import inference, model_loading

    eval_tasks = resolve_tasks(tasks, mixture)
    spec = spec or inference.OutputSpec()
    if infer_config is None:  # the gin-bound decoding settings (e.g. inference.InferenceConfig.max_decode_len)
        import gin

        from mt3 import configurables

        configurables.register([configurables.INFERENCE])
        infer_config = model_loading.with_model_defaults(gin.get_configurable("inference.InferenceConfig")())
    holder: dict[str, Any] = {}

    def infer_eval_fn(step: int, params) -> dict[str, float]:
        im = holder.get("im")
        if im is None:
            im = holder["im"] = inference.InferenceModel(model, params, spec=spec, config=infer_config)
        else:
            im.params = params
        im.info["step"] = int(step)
        from mt3 import paths as mt3_paths

        target = None if out_dir is None else mt3_paths.join(out_dir, f"step_{int(step)}")
        return flat_metrics(evaluate(im, eval_tasks, target, eval_config, progress=False))

    return infer_eval_fn
