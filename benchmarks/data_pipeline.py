"""Training examples/s of the input pipeline training uses, and where an example's time goes.

    .venv/bin/python -m benchmarks.data_pipeline [--data-dir data/prepared] [--pipeline indexed|seqio]
        [--batches 50] [--batch-size 32] [--variants base mix augment frames all] [--profile-blocks 2]

Builds the training stream exactly as `mt3 train` does (`input_pipeline.make_batch_iterator` with a
`train.DatasetConfig`): by default the indexed sampler (`mt3.training.input_pipeline`), with `--pipeline seqio` MT3's
seqio pipeline. Each variant turns one of the training-example options of `train.DatasetConfig` on (gin/train.gin binds
them): `mix` = audio mixes across tracks (`mixing.MixConfig(max_examples_per_mix=2)`, the README's recipe), `augment` =
gin/levers/augment.gin's settings, `frames` = the frame-target rolls of the auxiliary heads, `all` = all three.

The table gives, per variant: examples/s (wall clock) and CPU milliseconds per example (this process's CPU time, all
threads: the pipeline's thread pool, or tf.data's) over the first `--batches` batches from the stream's creation, and
the seconds to the first batch. The profile (indexed sampler only: seqio runs inside TensorFlow's graph) computes
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


def measure(cfg, *, batches: int) -> dict[str, float]:
    """Examples/s and CPU ms per example of the first `batches` batches of `cfg`'s training stream, timed from the
    stream's creation (its startup, as training sees it: shard header scans, tf.data tracing), and the seconds to its
    first batch. Not from a warm stream: the indexed sampler computes blocks ahead in its pool, so a window opened
    after a warm-up would count work done before it; use enough batches that startup is a small part."""
    from mt3.training import input_pipeline

    wall, cpu = time.perf_counter(), time.process_time()
    stream = input_pipeline.make_batch_iterator(cfg, host_batch_size=cfg.batch_size, shard_id=0, num_shards=1)
    try:
        next(stream)
        first = time.perf_counter() - wall
        for _ in range(batches - 1):
            next(stream)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        if hasattr(stream, "close"):
            stream.close()
    examples = batches * cfg.batch_size
    return {"examples_per_s": examples / max(wall, 1e-9), "cpu_ms_per_example": 1000 * cpu / examples,
            "first_batch_s": first}


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

def throughput_table(rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    lines = [f"{'variant':<10} {'examples/s':>11} {'cpu_ms/example':>15} {'first_batch_s':>14}"]
    lines += [f"{name:<10} {r['examples_per_s']:11.1f} {r['cpu_ms_per_example']:15.2f} {r['first_batch_s']:14.2f}"
              for name, r in rows]
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
    measure(next(iter(configs.values())), batches=1)  # untimed: imports and the task registry, once per process
    rows = [(v, measure(cfg, batches=max(args.batches, 1))) for v, cfg in configs.items()]
    print(throughput_table(rows))
    if args.pipeline != "indexed" or not args.profile_blocks:
        return
    for variant, cfg in configs.items():
        timer, examples = profile(cfg, blocks=args.profile_blocks)
        print(f"\nprofile: {variant}, {examples} examples from {args.profile_blocks} blocks (this thread)")
        print(profile_table(timer, examples))


if __name__ == "__main__":
    sys.exit(main())
