"""Teacher-forced evaluation during training (T5X's train_eval) and how the loop's metrics are shown.

The training loop (`mt3.training.train`) calls `periodic_eval` every EVAL_PERIOD steps: token loss and accuracy on
fresh, deterministic batches of the train-eval dataset (each task of a mixture on its own as well, as T5X reports
them), then the full-track inference hook if INFER_EVAL_TASKS is set. Kept apart from the loop so that the loop reads
as its cadence, and so that what a number on the progress bar or in TensorBoard means (`shown_metrics`) is defined
in one place, with the TensorBoard writer (`Summaries`) that records them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mt3.training import input_pipeline
from mt3.training import trainer as trainer_lib

InferEvalFn = Callable[[int, Any], Mapping[str, float] | None]
# `mt3.training.train.DatasetConfig` (not imported: train imports this module)
DatasetConfig = Any


class Summaries:
    """TensorBoard scalars (tensorboardX) under MODEL_DIR/{train,eval}; only process 0 writes.

    For a URL model dir (gs://...) the event files are written to a local staging folder and uploaded after each
    flush, one whole object per file (tensorboardX itself knows only gs:// and s3://, each through its own client)."""

    def __init__(self, model_dir: str | Path, enabled: bool):
        from mt3 import paths

        self._writers: dict[str, Any] = {}
        self._model_dir = model_dir
        self._enabled = enabled
        self._staging = None
        if enabled and paths.is_url(model_dir):
            import tempfile

            self._staging = tempfile.TemporaryDirectory(prefix="mt3-summaries-")

    def _logdir(self, kind: str) -> str:
        from mt3 import paths

        return paths.join(self._staging.name if self._staging else self._model_dir, kind)

    def _sync(self, kind: str) -> None:
        if self._staging is not None:
            from mt3 import paths

            paths.upload_tree(self._logdir(kind), paths.join(self._model_dir, kind))

    def write(self, kind: str, step: int, metrics: Mapping[str, float]) -> None:
        if not self._enabled:
            return
        if kind not in self._writers:
            from tensorboardX import SummaryWriter

            self._writers[kind] = SummaryWriter(self._logdir(kind))
        for key, value in metrics.items():
            self._writers[kind].add_scalar(key, value, step)
        self._writers[kind].flush()
        self._sync(kind)

    def close(self) -> None:
        for kind, writer in self._writers.items():
            writer.close()
            self._sync(kind)
        if self._staging is not None:
            self._staging.cleanup()


def mean_eval_metrics(per_batch: list[dict[str, float]]) -> dict[str, float]:
    if not per_batch:
        return {}
    tokens = sum(m.get("num_tokens", 0.0) for m in per_batch)
    out = {k: float(np.mean([m[k] for m in per_batch])) for k in per_batch[0]}
    if tokens:
        out["accuracy"] = sum(m["accuracy"] * m["num_tokens"] for m in per_batch) / tokens
        out["loss_per_token"] = sum(m["loss"] for m in per_batch) / tokens
    return out


# The loss as shown (progress bar, eval lines, TensorBoard) has one definition: `loss_per_token`, the model's loss over
# the batch divided by its target tokens (the mean loss per target token with LOSS_NORMALIZING_FACTOR = None, every
# preset's choice), comparable across batch sizes and target lengths. The model's summed losses, whose gradients
# training takes, are shown only as `*_sum` (T5X names its loss per token the same way).
TOKEN_LOSSES = ("loss", "z_loss", "cross_ent_loss")


def shown_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Host metrics as displayed and summarised: each token loss X as `X_per_token` and `X_sum`, never a bare `loss`."""
    out = {k: v for k, v in metrics.items() if k not in TOKEN_LOSSES}
    tokens = metrics.get("num_tokens")
    for key in TOKEN_LOSSES:
        if key in metrics:
            out[f"{key}_sum"] = metrics[key]
            if tokens:
                out[f"{key}_per_token"] = metrics[key] / tokens
    return out


def _eval_batches(trainer, params, cfg: DatasetConfig, *, steps: int, layout: dict, guard=None) -> list[dict]:
    batches = input_pipeline.make_batch_iterator(cfg, skip_batches=0, **layout)
    per_batch = []
    for _, batch in zip(range(steps), batches, strict=False):
        if guard is not None and guard.requested:
            break
        global_batch = trainer.partitioner.make_global_batch(batch, cfg.batch_size)
        per_batch.append(trainer_lib.metrics_to_host(trainer.eval_step(params, global_batch)))
    return per_batch


def run_eval(trainer, params, cfg: DatasetConfig, *, steps: int, layout: dict, guard=None) -> dict[str, float]:
    """Teacher-forced loss and token accuracy over `steps` batches of `cfg` (a fresh, deterministic iterator); a
    preemption signal (`guard`) ends it after the batch in progress."""
    return mean_eval_metrics(_eval_batches(trainer, params, cfg, steps=steps, layout=layout, guard=guard))


def eval_member_tasks(cfg: DatasetConfig | None) -> list[str]:
    """The tasks of a teacher-forced eval on a seqio mixture, each evaluated on its own as T5X's training eval does
    ([] for one task or synthetic data)."""
    if cfg is None or cfg.source != "seqio":
        return []
    import seqio

    from mt3 import tasks  # noqa: F401  (registers the tasks and mixtures)

    if cfg.mixture_or_task_name not in seqio.MixtureRegistry.names():
        return []
    return sorted(t.name for t in seqio.get_subtasks(seqio.get_mixture_or_task(cfg.mixture_or_task_name)))


def run_mixture_eval(trainer, params, cfg: DatasetConfig, *, steps: int, layout: dict,
                     guard=None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Teacher-forced eval of each task of `cfg`'s mixture over `steps` batches of its own: (the metrics pooled over
    all those batches, {task: its metrics}). A single task: (its metrics, {})."""
    members = eval_member_tasks(cfg)
    if len(members) < 2:
        return run_eval(trainer, params, cfg, steps=steps, layout=layout, guard=guard), {}
    pooled, per_task = [], {}
    for task in members:
        batches = _eval_batches(trainer, params, dataclasses.replace(cfg, mixture_or_task_name=task), steps=steps,
                                layout=layout, guard=guard)
        pooled += batches
        per_task[task] = mean_eval_metrics(batches)
    return mean_eval_metrics(pooled), per_task


def periodic_eval(step: int, params, trainer, cfg: DatasetConfig | None, infer_eval_fn: InferEvalFn | None, *,
                   steps: int, layout: dict, summaries: Summaries, bar, guard=None) -> dict[str, float] | None:
    """Teacher-forced eval on `cfg` (a mixture: also each task's, as `TASK/metric`), then the inference-eval hook
    (decoding + transcription metrics), if any; every number is summarised and printed."""
    metrics = None
    if cfg is not None:
        metrics, per_task = run_mixture_eval(trainer, params, cfg, steps=steps, layout=layout, guard=guard)
        shown = shown_metrics(metrics)
        summaries.write("eval", step, {**shown, **{f"{task}/{k}": v for task, m in per_task.items()
                                                   for k, v in shown_metrics(m).items()}})
        if bar is not None:
            bar.write(f"step {step}: eval " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))
            for task, m in per_task.items():
                task_shown = shown_metrics(m)
                bar.write(f"step {step}: eval {task}: " + ", ".join(
                    f"{k}={task_shown[k]:.4g}" for k in ("loss_per_token", "accuracy") if k in task_shown))
    if infer_eval_fn is not None and not (guard is not None and guard.requested):
        infer_metrics = dict(infer_eval_fn(step, params) or {})
        summaries.write("infer_eval", step, infer_metrics)
        if bar is not None:
            for line in infer_eval_lines(step, infer_metrics):
                bar.write(line)
    return metrics


def infer_eval_lines(step: int, metrics: Mapping[str, float]) -> list[str]:
    """'step N: infer_eval TASK: onset_f1=0.51, ...', one line per task, from the hook's {"TASK/metric": value}."""
    by_task: dict[str, list[str]] = {}
    for key, value in metrics.items():
        task, _, name = key.rpartition("/")
        by_task.setdefault(task, []).append(f"{name}={value:.4g}")
    return [f"step {step}: infer_eval {task}: {', '.join(values)}" if task else f"step {step}: infer_eval "
            f"{', '.join(values)}" for task, values in by_task.items()]
