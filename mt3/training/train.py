"""The outer training loop behind `mt3 train`: mesh, model, optimizer, restore-or-init, data, steps, cadence.

Cadence (summaries, checkpoints, evals, the wall-clock budget, preemption) lives in small named helpers, not in one
long function (t5x's lesson). Exact resume: the checkpoint stores the number of batches consumed and the data pipeline
is deterministic for its seed, so a restart rebuilds it and skips that many batches. SIGTERM/SIGINT (preemption)
finish the current step, save a checkpoint and return normally (exit code 0). The data layer (`mt3.tasks`, which
imports TensorFlow) is imported only when the 'seqio' source is used, so a GPU host can train on synthetic data
without TensorFlow. Eval-by-inference hooks in through `infer_eval_fn(step, params) -> metrics`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from mt3 import gin_utils
from mt3.errors import InputError
from mt3.training import checkpoints, input_pipeline, partitioning, train_eval
from mt3.training import trainer as trainer_lib
from mt3.training.checkpoints import CheckpointConfig, Checkpointer, RestoreCheckpointConfig
from mt3.training.partitioning import PartitionConfig
from mt3.training.trainer import OptimizerConfig

# The loop's lines ("restored checkpoint step ...", "stopped at step ...") go through this logger, from the chief host
# only (`_say`); `mt3 train` (train_from_gin) shows them on the console as "mt3 train: ..." (`console_logging`).
log = logging.getLogger(__name__)

DATA_SOURCES = ("seqio", "synthetic")
InferEvalFn = train_eval.InferEvalFn


# ---------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """One data stream (gin: `train/utils.DatasetConfig`, `train_eval/utils.DatasetConfig`, as T5X).

    source 'seqio' reads the prepared datasets of a registered task or mixture: with pipeline 'indexed' (default)
    through the index-based sampler of `mt3.training.input_pipeline` (resume in constant time; `block_tracks` records
    per
    shuffled block), with 'seqio' through `mt3.tasks.get_dataset(...)` (resume skips the consumed batches).
    'synthetic' makes random batches of the same features and shapes (benchmarks, tests; deterministic in (seed,
    shard, batch index)). batch_size is the GLOBAL batch size.
    """

    mixture_or_task_name: str = "mega_notes_ties_vb1_train"
    task_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 256, "targets": 1024})
    split: str = "train"
    batch_size: int = 256
    shuffle: bool = True
    seed: int | None = 0
    num_epochs: int | None = None
    source: str = "seqio"
    data_dir: str | None = None
    # Decoder padding cut per batch to the longest target rounded up to this multiple (None = fixed length, as T5X).
    # Local-corpus targets average ~63 of 256 tokens, so most decoder work is padding; one compile per length bucket.
    target_length_multiple: int | None = None
    pipeline: str = "indexed"
    block_tracks: int = 16
    # Processes computing the indexed sampler's blocks (`mt3.training.input_workers`); 0: a thread pool in this process.
    # The batches are the same for any value (resume too); more processes use more of a host's cores.
    num_workers: int = 0
    # What the training examples get beyond MT3's crops (gin/train.gin binds them; all off by default, as MT3):
    # audio mixes (`mixing.MixConfig`), augmentation (`augmentation.AugmentConfig`), and the frame-target rolls of the
    # auxiliary encoder heads, made when the model's AUX_FRAME_LOSS_WEIGHT is > 0 (`mt3.data.frame_targets`).
    mix_config: Any = None
    augment_config: Any = None
    aux_frame_loss_weight: float = 0.0
    # T5X's DatasetConfig.module (gin macro MIXTURE_OR_TASK_MODULE): imported before the name is looked up
    module: str | None = None

    @property
    def frame_targets(self) -> bool:
        return bool(self.aux_frame_loss_weight and self.aux_frame_loss_weight > 0)

    def __post_init__(self):
        if self.pipeline not in input_pipeline.PIPELINES:
            raise ValueError(f"DatasetConfig.pipeline must be one of {input_pipeline.PIPELINES}, "
                             f"got {self.pipeline!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"DatasetConfig.num_workers must be an int >= 0, got {self.num_workers!r}")
        if not isinstance(self.block_tracks, int) or self.block_tracks < 1:
            raise ValueError(f"DatasetConfig.block_tracks must be a positive int, got {self.block_tracks!r}")
        if self.source not in DATA_SOURCES:
            raise ValueError(f"DatasetConfig.source must be one of {DATA_SOURCES}, got {self.source!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"DatasetConfig.batch_size must be a positive int, got {self.batch_size!r}")
        missing = {"inputs", "targets"} - set(self.task_feature_lengths)
        if missing:
            raise ValueError(f"task_feature_lengths needs 'inputs' and 'targets', missing {sorted(missing)}")


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig:
    """Loop cadence (gin: `train_script.TrainLoopConfig`). Periods are in steps; 0 turns a cadence off.

    max_train_seconds bounds the wall-clock time of this run (the CPU quickstart); it stops after the step in progress,
    with a checkpoint, like a preemption.
    """

    total_steps: int = 1_000_000
    eval_period: int = 5000
    eval_steps: int = 20
    summary_period: int = 100
    max_train_seconds: float | None = None
    random_seed: int = 0
    num_microbatches: int = 1

    def __post_init__(self):
        for name in ("total_steps", "eval_period", "eval_steps", "summary_period"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainLoopConfig.{name} must be an int >= 0, got {value!r}")
        if self.num_microbatches < 1:
            raise ValueError(f"TrainLoopConfig.num_microbatches must be >= 1, got {self.num_microbatches}")


@dataclasses.dataclass
class TrainResult:
    step: int
    stop_reason: str  # 'total_steps' | 'time_budget' | 'preempted' | 'end_of_data'
    last_metrics: dict[str, float]
    eval_metrics: dict[str, float]


# ---------------------------------------------------------------------------------------------------------------
# Cadence helpers
# ---------------------------------------------------------------------------------------------------------------

def is_due(step: int, period: int) -> bool:
    return period > 0 and step % period == 0


class PreemptionGuard:
    """SIGTERM / SIGINT -> "stop after this step"; a second SIGINT interrupts at once. Hosts agree on the stop step."""

    def __init__(self, sync_period: int = 10):
        self.sync_period = sync_period
        self._requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self._requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._requested = True
        log.warning("signal %s: finishing this step, then saving a checkpoint", signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        """Whether this host got a signal (no cross-host agreement: for skipping work, not for stopping)."""
        return self._requested

    def should_stop(self, step: int) -> bool:
        """Single host: whether a signal arrived. Multi-host: every `sync_period` steps, whether any host got one
        (an all-gather, so every host stops after the same step and they save one checkpoint together)."""
        if jax.process_count() == 1:
            return self._requested
        if step % self.sync_period:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self._requested))))


class Throughput:
    """steps/s and examples/s since the last report (host wall clock), and the seconds the loop waited for its next
    batch in that period with their fraction of the period: a fraction near 1 means an input-bound run (the data
    pipeline, not the model, sets the pace)."""

    def __init__(self, step: int, batch_size: int):
        self._step, self._time, self._batch = step, time.perf_counter(), batch_size
        self._input_wait = 0.0

    def add_input_wait(self, seconds: float) -> None:
        self._input_wait += seconds

    def report(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        period = max(now - self._time, 1e-9)
        rate = (step - self._step) / period
        wait, self._input_wait = self._input_wait, 0.0
        self._step, self._time = step, now
        return {"steps_per_sec": rate, "examples_per_sec": rate * self._batch, "timing/input_wait_seconds": wait,
                "timing/input_wait_fraction": min(wait / period, 1.0)}


def _check_vocabulary(batch: Mapping[str, np.ndarray], vocab_size: int | None) -> None:
    if vocab_size is not None and int(batch["decoder_target_tokens"].max()) >= vocab_size:
        raise ValueError(f"target ids up to {int(batch['decoder_target_tokens'].max())} do not fit the model's "
                         f"{vocab_size} embedding rows: set NUM_EMBEDDINGS for this vocabulary (mt3 1536, "
                         f"ismir2021 1664)")


def _progress_bar(start: int, total: int, enabled: bool, max_seconds: float | None = None):
    """tqdm over steps. Its ETA is for TRAIN_STEPS, so a wall-clock budget is named in the description as well."""
    desc = "train"
    if max_seconds is not None:
        desc += f" (stops after {int(max_seconds) // 60}:{int(max_seconds) % 60:02d})"
    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True, desc=desc)


def _summarize(step: int, metrics, throughput: Throughput, summaries: train_eval.Summaries, bar) -> dict[str, float]:
    """Device metrics -> host (the only per-period sync), TensorBoard, and the progress bar's postfix. The loop calls
    it for step N-1 after dispatching step N, so the transfer never stalls the device (nanodo's pattern)."""
    host = {**trainer_lib.metrics_to_host(metrics), **throughput.report(step)}
    shown = train_eval.shown_metrics(host)
    summaries.write("train", step, shown)
    bar.set_postfix(loss_per_token=f"{shown.get('loss_per_token', math.nan):.4g}",
                    acc=f"{host.get('accuracy', math.nan):.3f}",
                    input_wait=f"{host.get('timing/input_wait_fraction', math.nan):.0%}", refresh=False)
    return host


def _data_meta(batches) -> dict:
    """The input position(s) a checkpoint stores, and for a mixture on the indexed sampler its realised per-task
    shares (rates, block probabilities, blocks drawn so far: `IndexedStream.mixture_summary`)."""
    meta = checkpoints.gather_data_states(input_pipeline.stream_state(batches))
    if len(getattr(batches, "tasks", ())) > 1:
        meta["mixture"] = batches.mixture_summary()
    return meta


def _say(line: str, *, warning: bool = False) -> None:
    """One line for the user, logged on the chief host only (every host runs the same loop)."""
    if jax.process_index() == 0:
        log.log(logging.WARNING if warning else logging.INFO, "%s", line)


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return ("mt3 train: warning: " if record.levelno >= logging.WARNING else "mt3 train: ") + record.getMessage()


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
    """The loop's log lines on the console while `mt3 train` runs: info on stdout, warnings on stderr, as
    "mt3 train: ...", whatever handlers the libraries it imports put on the root logger (not propagated meanwhile,
    so each line shows once)."""
    out, err = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    previous = log.level, log.propagate
    for handler in (out, err):
        handler.setFormatter(_ConsoleFormatter())
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        for handler in (out, err):
            log.removeHandler(handler)
        log.level, log.propagate = previous


def _out_of_time(started: float, budget_seconds: float | None) -> bool:
    return budget_seconds is not None and time.monotonic() - started > budget_seconds


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------

def restore_or_init(trainer, checkpointer, *, seed: int, restore: bool) -> tuple[Any, int]:
    """(state, batches consumed): the newest checkpoint in the model directory that restores, else fresh."""
    state, meta = _restore_or_init(trainer, checkpointer, seed=seed, restore=restore)
    return state, int(meta["data_position"])


def _restore_or_init(trainer, checkpointer, *, seed: int, restore: bool,
                     init_cfg: RestoreCheckpointConfig | None = None) -> tuple[Any, dict]:
    """(state, meta): the newest checkpoint in the model directory that restores, else the state `init_cfg` starts
    from (fine-tuning), else fresh. meta has 'data_position' and, for the indexed sampler, 'data_states'.

    A checkpoint that exists but does not restore (a chunk file cut short) is named on one line and moved aside to
    MODEL_DIR/checkpoints_unrestorable/ (kept, never deleted: it may be recoverable), so that training can save that
    step again; the next older one is tried. When none restores, InputError (exit 2) rather than a fresh start.
    """
    if not restore or checkpointer.latest_step() is None:
        if init_cfg is not None and init_cfg.path:
            return checkpoints.initialize_from(init_cfg, trainer, seed=seed, note=_say)
        return trainer.init_state(seed), {"data_position": 0}

    (state, meta), step, bad = checkpoints.restore_newest(
        checkpointer.directory.parent, lambda s: checkpointer.restore(trainer.abstract_state(), step=s),
        steps=checkpointer.all_steps(), warn=lambda bad: _say(bad.describe(), warning=True))
    for moved in checkpointer.set_aside([b.step for b in bad]):
        _say(f"moved the unrestorable checkpoint to {moved} (not deleted)", warning=True)
    _say(f"restored checkpoint step {meta['step']} (data position {meta['data_position']}) from "
         f"{checkpointer.directory}" + (" (the newest that restores)" if bad else ""))
    return state, meta


def train(*, model, model_dir: str, train_dataset_cfg: DatasetConfig,
          train_eval_dataset_cfg: DatasetConfig | None = None, loop_cfg: TrainLoopConfig = TrainLoopConfig(),
          optimizer_cfg: OptimizerConfig = OptimizerConfig(), checkpoint_cfg: CheckpointConfig = CheckpointConfig(),
          partition_cfg: PartitionConfig = PartitionConfig(), infer_eval_fn: InferEvalFn | None = None,
          after_first_step: Callable[[], None] | None = None,
          init_checkpoint_cfg: RestoreCheckpointConfig | None = None,
          on_start: Callable[[int], None] | None = None) -> TrainResult:
    """Trains `model` until loop_cfg.total_steps (or the time budget, a preemption, the end of the data).
    `on_start(step)` runs once the state is restored or initialised (the run record, `mt3.training.run_records`)."""
    partitioning.initialize_distributed()

    from mt3 import paths

    model_dir_path = model_dir if paths.is_url(model_dir) else Path(model_dir)  # Path("gs://b") would be local
    is_chief = jax.process_index() == 0
    partitioner = partitioning.Partitioner(partition_cfg)
    trainer = trainer_lib.Trainer(model, optimizer_cfg, partitioner, num_microbatches=loop_cfg.num_microbatches)
    num_params = trainer_lib.count_params(trainer.abstract_state().params)
    _say(f"{num_params:,} parameters; mesh {dict(partitioner.mesh.shape)} over {jax.device_count()} "
         f"{jax.devices()[0].platform} devices, {jax.process_count()} process(es)")
    checkpointer = Checkpointer(model_dir_path, checkpoint_cfg)
    try:
        state, meta = _restore_or_init(trainer, checkpointer, seed=loop_cfg.random_seed,
                                       restore=checkpoint_cfg.restore, init_cfg=init_checkpoint_cfg)
    except BaseException:  # no checkpoint restores: stop orbax's background threads before reporting it
        checkpointer.close()
        raise
    if on_start is not None:
        on_start(int(state.step))
    config = getattr(model, "config", None)
    shard_id, num_shards = partitioner.data_layout()
    layout = {"host_batch_size": partitioner.host_batch_size(train_dataset_cfg.batch_size), "shard_id": shard_id,
              "num_shards": num_shards, "vocab_size": getattr(config, "vocab_size", 1536),
              "input_depth": getattr(config, "encoder_input_depth", 128)}
    eval_layout = dict(layout)
    if train_eval_dataset_cfg is not None:
        eval_layout["host_batch_size"] = partitioner.host_batch_size(train_eval_dataset_cfg.batch_size)
    note = (lambda line: _say(f"note: {line}")) if is_chief else None
    data_state, skip = checkpoints.host_data_state(meta, note or (lambda line: None))
    position = int(meta["data_position"])
    batches = input_pipeline.make_batch_iterator(train_dataset_cfg, skip_batches=skip, state=data_state, note=note,
                                                 **layout)

    step = start_step = int(state.step)
    summaries = train_eval.Summaries(model_dir_path, enabled=is_chief)
    throughput = Throughput(step, train_dataset_cfg.batch_size)
    started = time.monotonic()
    stop_reason, host_metrics, eval_metrics = "total_steps", {}, {}
    pending = None  # (step, device metrics) due for a summary, fetched once the next step is dispatched
    with PreemptionGuard() as guard, _progress_bar(
            step, loop_cfg.total_steps, is_chief, loop_cfg.max_train_seconds) as bar:
        while step < loop_cfg.total_steps:
            waited = time.perf_counter()  # the step loop's wait for input (timing/input_wait_* in the summaries)
            try:
                batch = next(batches)
            except StopIteration:
                stop_reason = "end_of_data"
                break
            throughput.add_input_wait(time.perf_counter() - waited)
            if step == start_step:  # the first batch: do its token ids fit the embedding table?
                _check_vocabulary(batch, getattr(config, "vocab_size", None))
            state, metrics = trainer.train_step(state, partitioner.make_global_batch(batch,
                                                                                     train_dataset_cfg.batch_size))
            step, position = step + 1, position + 1
            bar.update(1)
            if after_first_step is not None:
                after_first_step()
                after_first_step = None
            if pending is not None:  # step N-1's metrics, now that step N is queued behind them
                host_metrics, pending = _summarize(*pending, throughput, summaries, bar), None
            if is_due(step, loop_cfg.summary_period) or step == loop_cfg.total_steps:
                pending = (step, metrics)
            # A signal skips this step's periodic save and evals: the final save below follows at once (schedulers
            # send SIGKILL ~30 s after SIGTERM).
            stop = guard.should_stop(step)
            if is_due(step, checkpoint_cfg.period) and not stop:
                checkpointer.save(state, data_position=position, force=True, extra=_data_meta(batches))
            if is_due(step, loop_cfg.eval_period) and not stop:
                eval_metrics = train_eval.periodic_eval(
                    step, state.params, trainer, train_eval_dataset_cfg, infer_eval_fn, steps=loop_cfg.eval_steps,
                    layout=eval_layout, summaries=summaries, bar=bar if is_chief else None, guard=guard) or eval_metrics
            if stop or guard.should_stop(step):
                stop_reason = "preempted"
                break
            if _out_of_time(started, loop_cfg.max_train_seconds):
                stop_reason = "time_budget"
                break
    if pending is not None:
        host_metrics = _summarize(*pending, throughput, summaries, bar)
    checkpointer.save(state, data_position=position, force=True, extra=_data_meta(batches))
    if hasattr(batches, "close"):
        batches.close()
    checkpointer.close()
    summaries.close()
    _say(f"stopped at step {step} ({stop_reason}); checkpoints in {checkpointer.directory}")
    return TrainResult(step=step, stop_reason=stop_reason, last_metrics=host_metrics, eval_metrics=eval_metrics)


def train_from_gin(flags, *, infer_eval_fn: InferEvalFn | None = None,
                   allow_config_change: bool = False) -> TrainResult:
    """Runs the gin-configured `train_script.train` after writing MODEL_DIR/config.gin (parsed config + gin files);
    `operative_config.gin` (what was actually used) follows after the first step. A resume whose model, vocabulary,
    task or batch size differs from the previous start is refused (`mt3.training.config_guard`) unless
    `allow_config_change`; each start is recorded under MODEL_DIR/runs/ (`mt3.training.run_records`)."""
    import gin  # the gin edge: train() itself takes plain arguments

    model_dir = gin_utils.query_macro(gin_utils.MODEL_DIR_MACRO)
    if not model_dir:
        raise InputError(None, "no model directory: pass --model_dir DIR (or --gin.MODEL_DIR='\"DIR\"')")
    partitioning.initialize_distributed()  # before anything touches devices
    gin_utils.build_bound_references("train_script.train")  # a bad value stops here, before config.gin is written
    from mt3.training import run_records

    recorder = run_records.from_gin(model_dir, allow_config_change=allow_config_change)  # guard first; None: not chief
    if jax.process_index() == 0:
        gin_utils.write_operative_config(model_dir, flags)
    after = (lambda: (gin_utils.write_operative_config(model_dir, filename="operative_config.gin", operative=True),
                      recorder.operative_config_summary())) if recorder is not None else None
    eval_tasks = gin_utils.query_macro("INFER_EVAL_TASKS")
    if infer_eval_fn is None and eval_tasks and jax.process_index() == 0:
        infer_eval_fn = _gin_infer_eval_fn(eval_tasks, model_dir)
    with console_logging():
        return gin.get_configurable("train_script.train")(infer_eval_fn=infer_eval_fn, after_first_step=after,
                                                          on_start=recorder.start if recorder is not None else None)


def _gin_infer_eval_fn(eval_tasks, model_dir) -> InferEvalFn:
    """Full-track inference eval during training (MT3's infer_eval) on the tasks or `*_eval` mixture named by the gin
    macro INFER_EVAL_TASKS, with the same code as `mt3 eval`; reports go to MODEL_DIR/infer_eval/step_N/."""
    import gin

    from mt3 import evaluation, model_loading  # metrics, plotting, decoding: only when INFER_EVAL_TASKS asks

    reference = gin.query_parameter("MODEL/macro.value")
    model = reference.scoped_configurable_fn() if hasattr(reference, "scoped_configurable_fn") else reference
    names = [eval_tasks] if isinstance(eval_tasks, str) else list(eval_tasks)
    mixtures = [n for n in names if n.endswith("_eval")]
    return evaluation.make_infer_eval_fn(
        model, tasks=[n for n in names if n not in mixtures], mixture=mixtures[0] if mixtures else None,
        spec=model_loading.spec_from_gin(model), out_dir=_infer_eval_dir(model_dir),
        eval_config=evaluation.EvalConfig(num_plots=1, data_dir=gin_utils.query_macro("DATA_DIR")))


def _infer_eval_dir(model_dir: str):
    from mt3 import paths

    out = paths.join(model_dir, "infer_eval")
    return out if paths.is_url(out) else Path(out)
