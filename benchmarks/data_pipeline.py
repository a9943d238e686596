"""Training examples/s of the local mixture through the real seqio pipeline (records -> crops -> tokens -> batches).

    .venv/bin/python -m benchmarks.data_pipeline [--data-dir data/prepared] [--batches 30] [--workers 1 2]

Uses the prepared local corpus under --data-dir if present; otherwise prepares a small one from music21 pieces with
synthesised audio in a temp dir. `--workers` sets tf.data's private thread pool (the parallelism of the tokenizing
map). Compare with `benchmarks/train_step.py`'s examples/s for the model you train: the goal is >= 3x, so training is
never input-bound.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _ensure_data(data_dir: str | None) -> str:
    if data_dir and (Path(data_dir) / "local" / "train.manifest.json").exists():
        return data_dir
    from conftest import music21_note_sequence
    from data_fixtures import sub_sequence, write_prepared_dataset

    root = tempfile.mkdtemp(prefix="mt3_bench_data_")
    quartet = music21_note_sequence("string_quartet")
    chorale = music21_note_sequence("bach_chorale")
    tracks = [(f"quartet_{i}", sub_sequence(quartet, 15.0 * i, 15.0 * i + 30.0)) for i in range(3)]
    tracks += [("chorale", chorale)]
    write_prepared_dataset(Path(root), "local", {"train": tracks, "validation": tracks[:1], "test": tracks[:1]})
    print(f"prepared a synthetic local dataset in {root}")
    return root


def measure(data_dir: str, *, batches: int, batch_size: int, workers: int | None, lengths: dict) -> float:
    import tensorflow as tf

    from mt3 import tasks

    ds = tasks.get_dataset("local_mix_notes_ties_vb1_train", task_feature_lengths=lengths, split="train",
                           batch_size=batch_size, seed=0, data_dir=data_dir)
    if workers:
        options = tf.data.Options()
        options.threading.private_threadpool_size = workers
        ds = ds.with_options(options)
    it = ds.as_numpy_iterator()
    for _ in range(3):  # warm-up: graph tracing, first file reads, prefetch fill
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("MT3_DATA_DIR", "data/prepared"))
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--inputs-length", type=int, default=256)
    parser.add_argument("--targets-length", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="tf.data thread-pool sizes to try (0 = tf.data's default)")
    args = parser.parse_args()
    data_dir = _ensure_data(args.data_dir)
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    print(f"{'workers':>8} {'examples/s':>11}")
    for w in args.workers:
        rate = measure(data_dir, batches=args.batches, batch_size=args.batch_size, workers=w or None,
                       lengths=lengths)
        print(f"{w or 'default':>8} {rate:11.1f}")


if __name__ == "__main__":
    main()
