"""Training examples/s of the input pipeline training uses, and where an example's time goes.

    .venv/bin/python -m benchmarks.data_pipeline [--data-dir data/prepared] [--pipeline indexed|seqio]
        [--batches 50] [--batch-size 32] [--variants base mix augment frames all] [--profile-blocks 2]
        [--workers 0,1,2] [--warmup 5]

Builds the training stream exactly as `mt3 train` does (`input_pipeline.make_batch_iterator` with a
`train.DatasetConfig`): by default the indexed sampler (`mt3.training.input_pipeline`), with `--pipeline seqio` MT3's
seqio pipeline. Each variant turns one of the training-example options of `train.DatasetConfig` on (gin/train.gin binds
them): `mix` = audio mixes across tracks (`mixing.MixConfig(max_examples_per_mix=2)`, the README's recipe), `augment` =
gin/levers/augment.gin's settings, `frames` = the frame-target rolls of the auxiliary heads, `all` = all three.

The table gives, per worker count (`--workers`: `DatasetConfig.num_workers`, 0 = the in-process thread pool, N =
N worker processes, `mt3.training.input_workers`; indexed sampler only) and variant: examples/s (wall clock) and CPU
milliseconds per example (this process, all its threads, plus the worker processes, read from /proc) over `--batches`
batches after `--warmup` batches (worker start-up excluded: the window is the steady state of a consumer that takes
batches as fast as they come), the same CPU split into main process and workers, the seconds to the first batch, and
the 1-minute load average. CPU per example hardly depends on the load, so a loaded machine's numbers still say what
N dedicated cores would give: `projected` = min(N / worker CPU-s per example, 1 / main-process CPU-s per example)
examples/s (0 workers: 1 / CPU-s per example), and the scaling table compares measured and projected N=1 -> N=2.
The profile (indexed sampler only: seqio runs inside TensorFlow's graph) computes
`--profile-blocks` blocks in this thread, with the sampler's own functions wrapped by timers, and splits each example's
time into stages, exclusive of the stages nested inside them: read (shard bytes), decode (record -> audio +
NoteSequence), frame (audio -> 128-sample frames), tokenize (NoteSequence -> events), crop (random crops and their
target ids), mix (with mixing on: the crops, their targets and the sums), augment, frame_targets (rolls), batch
(padding into model features), other (the sampler's own bookkeeping). Numbers from a loaded machine are not
meaningful: compare variants within one run, and report the machine and its load with the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VARIANTS = ("base", "mix", "augment", "frames", "all")
STAGES = ("read", "decode", "frame", "tokenize", "crop", "mix", "augment", "frame_targets", "batch", "other")


def variant_config(variant: str, *, task: str, data_dir: str, pipeline: str, batch_size: int, lengths: dict,
                   max_examples_per_mix: int = 2):
    """The `train.DatasetConfig` of one variant (what gin/train.gin builds, with that option on)."""
    from mt3 import mixing
    from mt3.data import augmentation
    from mt3.training import train

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    on = {variant} if variant != "all" else {"mix", "augment", "frames"}
    mix = mixing.MixConfig(max_examples_per_mix=max_examples_per_mix) if "mix" in on else mixing.MixConfig()
    augment = augmentation.AugmentConfig(  # gin/levers/augment.gin
        gain_probability=1.0, gain_db=(-30.0, 0.0), eq_probability=0.5, reverb_probability=0.3,
        noise_probability=0.3, snr_db=(20.0, 50.0)) if "augment" in on else augmentation.AugmentConfig()
    return train.DatasetConfig(mixture_or_task_name=task, task_feature_lengths=dict(lengths), batch_size=batch_size,
                               source="seqio", pipeline=pipeline, data_dir=data_dir, seed=0, mix_config=mix,
                               augment_config=augment, aux_frame_loss_weight=1.0 if "frames" in on else 0.0)


def load_average() -> float:
    """The 1-minute load average (NaN where /proc is absent): other work on the machine slows every number but CPU."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (/proc/PID/stat; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(cfg, *, batches: int, warmup: int = 0) -> dict[str, float]:
    """Examples/s and CPU ms per example (this process and its input workers) of `batches` batches of `cfg`'s training
    stream after `warmup` batches (0: timed from the stream's creation, its start-up included), and the seconds to its
    first batch. The window starts while the consumer keeps taking batches as fast as they come, so the blocks computed
    ahead are about as many at both ends (a window opened after a pause would count work done before it)."""
    from mt3.training import input_pipeline

    load = load_average()
    start, main = time.perf_counter(), time.process_time()
    stream = input_pipeline.make_batch_iterator(cfg, host_batch_size=cfg.batch_size, shard_id=0, num_shards=1)
    pids = getattr(stream, "worker_pids", lambda: [])
    try:
        wall, workers = start, 0.0
        for index in range(warmup + batches):
            if index == warmup and warmup:
                wall, main, workers = time.perf_counter(), time.process_time(), sum(map(process_cpu_seconds, pids()))
            next(stream)
            if index == 0:
                first = time.perf_counter() - start
        wall, main = time.perf_counter() - wall, time.process_time() - main
        workers = sum(map(process_cpu_seconds, pids())) - workers
    finally:
        if hasattr(stream, "close"):
            stream.close()
    examples = batches * cfg.batch_size
    return {"examples_per_s": examples / max(wall, 1e-9), "cpu_ms_per_example": 1000 * (main + workers) / examples,
            "main_cpu_ms": 1000 * main / examples, "worker_cpu_ms": 1000 * workers / examples, "first_batch_s": first,
            "load": (load + load_average()) / 2}


def projected(num_workers: int, row: dict[str, float]) -> float:
    """Examples/s on `num_workers` dedicated cores (plus the main process's), from CPU per example alone."""
    if not num_workers:
        return 1000 / max(row["cpu_ms_per_example"], 1e-9)
    return min(num_workers * 1000 / max(row["worker_cpu_ms"], 1e-9), 1000 / max(row["main_cpu_ms"], 1e-9))


# ---------------------------------------------------------------------------------------------------------------
# Where an example's time goes (the indexed sampler, computed in this thread)
# ---------------------------------------------------------------------------------------------------------------

class StageTimer:
    """Exclusive wall and CPU (thread) seconds per stage: a stage's time excludes the stages that run inside it.
    Only the thread that made the timer is timed (threads other streams left running call the functions untimed)."""

    def __init__(self):
        self._thread = threading.get_ident()
        self.wall = dict.fromkeys(STAGES, 0.0)
        self.cpu = dict.fromkeys(STAGES, 0.0)
        self._stack: list[str] = []
        self._mark = (0.0, 0.0)

    def _charge(self) -> None:
        """Charges the time since the last mark to the running stage ('other' outside every stage)."""
        now = (time.perf_counter(), time.thread_time())
        current = self._stack[-1] if self._stack else "other"
        self.wall[current] += now[0] - self._mark[0]
        self.cpu[current] += now[1] - self._mark[1]
        self._mark = now

    @contextlib.contextmanager
    def stage(self, name: str):
        self._charge()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def start(self) -> None:
        self._mark = (time.perf_counter(), time.thread_time())

    def stop(self) -> None:
        self._charge()

    def wrap(self, name: str, fn):
        """`fn` timed as stage `name`; a generator function is timed at each item it yields."""
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def generator(*args, **kwargs) -> Iterator:
                it = fn(*args, **kwargs)
                if threading.get_ident() != self._thread:
                    yield from it
                    return
                while True:
                    with self.stage(name):
                        try:
                            item = next(it)
                        except StopIteration:
                            return
                    yield item
            return generator

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if threading.get_ident() != self._thread:
                return fn(*args, **kwargs)
            with self.stage(name):
                return fn(*args, **kwargs)
        return timed


def _stage_functions():
    """(module, attribute, stage) of the sampler's functions, looked up through their modules at call time."""
    from mt3 import mixing, note_sequences, spectrograms
    from mt3.data import augmentation, frame_targets, records, track_examples, track_tokens
    from mt3.training import input_pipeline

    return [(input_pipeline, "read_record", "read"), (records, "parse_example_bytes", "decode"),
            (spectrograms, "split_audio", "frame"), (track_examples, "tokenize_track", "tokenize"),
            (note_sequences, "trim_overlapping_notes", "tokenize"),
            (track_tokens, "tokenize_note_sequence", "tokenize"), (track_examples, "training_examples", "crop"),
            (mixing, "mixed_training_examples", "mix"), (augmentation, "augment_examples", "augment"),
            (frame_targets, "rolls_from_ids", "frame_targets"), (input_pipeline, "model_features", "batch")]


@contextlib.contextmanager
def instrumented(timer: StageTimer):
    """The sampler's stage functions replaced by timed ones while inside (restored after)."""
    saved = []
    try:
        for module, name, stage in _stage_functions():
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, timer.wrap(stage, getattr(module, name)))
        yield timer
    finally:
        for module, name, fn in reversed(saved):
            setattr(module, name, fn)


def profile(cfg, *, blocks: int) -> tuple[StageTimer, int]:
    """(stage times, examples) of the first `blocks` blocks of `cfg`'s indexed stream, computed and batched in this
    thread (the thread pool is not used, so every stage is seen)."""
    from mt3.training import input_pipeline

    # Only its pure functions are used; its thread pool starts at the first batch, so never here.
    stream = input_pipeline.make_batch_iterator(cfg, host_batch_size=cfg.batch_size, shard_id=0, num_shards=1)
    timer = StageTimer()
    examples = 0
    with instrumented(timer):
        timer.start()
        for _, found, _ in itertools.islice(stream.blocks(), blocks):
            for start in range(0, len(found), cfg.batch_size):
                input_pipeline.model_features(found[start:start + cfg.batch_size], stream.input_length,
                                              stream.target_length)
            examples += len(found)
        timer.stop()
    return timer, examples


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------

def throughput_table(rows: Sequence[tuple[str, int, dict[str, float]]]) -> str:
    lines = [f"{'variant':<10} {'workers':>7} {'examples/s':>11} {'cpu_ms/example':>15} {'main_cpu_ms':>12} "
             f"{'worker_cpu_ms':>14} {'projected':>10} {'first_batch_s':>14} {'load':>5}"]
    lines += [f"{name:<10} {n:7d} {r['examples_per_s']:11.1f} {r['cpu_ms_per_example']:15.2f} {r['main_cpu_ms']:12.2f} "
              f"{r['worker_cpu_ms']:14.2f} {projected(n, r):10.1f} {r['first_batch_s']:14.2f} {r['load']:5.2f}"
              for name, n, r in rows]
    return "\n".join(lines)


def scaling_table(rows: Sequence[tuple[str, int, dict[str, float]]], low: int, high: int) -> str:
    """Per variant, examples/s at `high` workers over `low` workers: measured (load-dependent) and projected."""
    by = {(name, n): r for name, n, r in rows}
    lines = [f"scaling {low} -> {high} workers", f"{'variant':<10} {'measured':>9} {'projected':>10}"]
    for name in dict.fromkeys(name for name, _, _ in rows):
        if (name, low) in by and (name, high) in by:
            a, b = by[name, low], by[name, high]
            lines.append(f"{name:<10} {b['examples_per_s'] / a['examples_per_s']:9.2f} "
                         f"{projected(high, b) / projected(low, a):10.2f}")
    return "\n".join(lines)


def profile_table(timer: StageTimer, examples: int) -> str:
    total_wall, total_cpu = sum(timer.wall.values()), sum(timer.cpu.values())
    n = max(examples, 1)
    lines = [f"{'stage':<14} {'wall_ms/example':>16} {'cpu_ms/example':>15} {'share':>7}"]
    for stage in STAGES:
        share = timer.wall[stage] / total_wall if total_wall else 0.0
        lines.append(f"{stage:<14} {1000 * timer.wall[stage] / n:16.3f} {1000 * timer.cpu[stage] / n:15.3f} "
                     f"{share:7.1%}")
    lines.append(f"{'total':<14} {1000 * total_wall / n:16.3f} {1000 * total_cpu / n:15.3f} {1.0:7.1%}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("MT3_DATA_DIR", "data/prepared"),
                        help="prepared datasets (the quickstart's: data/prepared/local)")
    parser.add_argument("--task", default="local_mix_notes_ties_vb1_train", help="registered task or mixture")
    parser.add_argument("--pipeline", choices=("indexed", "seqio"), default="indexed")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--inputs-length", type=int, default=256)
    parser.add_argument("--targets-length", type=int, default=1024)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--max-examples-per-mix", type=int, default=2)
    parser.add_argument("--workers", default="0",
                        help="comma-separated input worker counts (DatasetConfig.num_workers; 0: in-process threads)")
    parser.add_argument("--warmup", type=int, default=5, help="batches taken before the timed window")
    parser.add_argument("--profile-blocks", type=int, default=2,
                        help="blocks (of DatasetConfig.block_tracks records) profiled per variant; 0: no profile")
    args = parser.parse_args(argv)
    from mt3 import configurables
    from mt3.errors import InputError

    configurables.register([configurables.DATA])
    if not os.path.isdir(args.data_dir):
        raise SystemExit(str(InputError(args.data_dir, "no prepared datasets here: run the quickstart's `mt3 "
                                                       "build-corpus` and `mt3 prepare-data`, or pass --data-dir")))
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    configs = {v: variant_config(v, task=args.task, data_dir=args.data_dir, pipeline=args.pipeline,
                                 batch_size=args.batch_size, lengths=lengths,
                                 max_examples_per_mix=args.max_examples_per_mix) for v in args.variants}
    print(f"pipeline {args.pipeline}, task {args.task}, {args.data_dir}, batch {args.batch_size}, "
          f"lengths {lengths}, {os.cpu_count()} cores")
    workers = [int(n) for n in args.workers.split(",")]
    if args.pipeline != "indexed" and workers != [0]:
        raise SystemExit("--workers applies to the indexed sampler (the seqio pipeline uses tf.data's threads)")
    measure(next(iter(configs.values())), batches=1)  # untimed: imports and the task registry, once per process
    rows = [(v, n, measure(dataclasses.replace(cfg, num_workers=n), batches=max(args.batches, 1),
                           warmup=max(args.warmup, 0))) for n in workers for v, cfg in configs.items()]
    print(throughput_table(rows))
    if len(workers) > 1:
        low = 1 if 1 in workers and max(workers) > 1 else min(workers)  # processes: 1 -> N; else threads -> N
        print("\n" + scaling_table(rows, low, max(workers)))
    if args.pipeline != "indexed" or not args.profile_blocks:
        return
    for variant, cfg in configs.items():
        timer, examples = profile(cfg, blocks=args.profile_blocks)
        print(f"\nprofile: {variant}, {examples} examples from {args.profile_blocks} blocks (this thread)")
        print(profile_table(timer, examples))


if __name__ == "__main__":
    sys.exit(main())
