"""The prepared records a training task reads, located by byte offset, without TensorFlow (the indexed sampler's
input: `mt3.training.input_pipeline.IndexedStream`).

A TFRecord shard is a sequence of (length, CRC, data, CRC) frames, so scanning the 12-byte headers gives every
record's offset without reading the audio; a block of the sampler then reads just its records, from a local file or
a URL (gs://...) through fsspec. `IndexedTask` is what the sampler needs to know of a registered seqio task.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from typing import Any

import numpy as np


def record_offsets(path: str | os.PathLike) -> list[int]:
    """Byte offsets of the records of one TFRecord shard, from their 12-byte headers (the data is seeked over)."""
    from mt3 import paths
    from mt3.errors import InputError

    offsets, size = [], paths.getsize(path)
    with paths.open_file(path, "rb") as f:  # a local file, or a URL (gs://...) read through fsspec
        pos = 0
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                raise InputError(path, "truncated TFRecord file")
            (length,) = struct.unpack("<Q", header[:8])
            offsets.append(pos)
            pos += 12 + length + 4
            if pos > size:
                raise InputError(path, "truncated TFRecord file")
            f.seek(pos)
    return offsets


def read_record(path: str, offset: int):
    """The `records.TrackRecord` stored at `offset` of a shard."""
    from mt3 import paths
    from mt3.data import records

    with paths.open_file(path, "rb") as f:
        f.seek(offset)
        (length,) = struct.unpack("<Q", f.read(12)[:8])
        data = f.read(length)
    return records.parse_example_bytes(data)


@dataclasses.dataclass(frozen=True)
class IndexedTask:
    """One registered training task as the indexed sampler needs it (built by `indexed_tasks` from seqio's registry).

    rate: the task's seqio mixing rate, a relative number of EXAMPLES (seqio's meaning, and MT3's temperature
    rule's)."""

    name: str
    dataset_config: Any  # mt3.datasets.DatasetConfig
    tokenize_config: Any  # mt3.data.track_examples.TokenizeConfig
    rate: float = 1.0
    skip_too_long: bool = False

    @property
    def salt(self) -> int:
        return zlib.crc32(self.name.encode())


def indexed_tasks(name: str, data_dir=None) -> list[IndexedTask]:
    """The IndexedTasks of a registered task or mixture, rates as seqio computes them (`mt3.registry`); InputError in
    one line, with the fix, for a name the indexed sampler cannot read."""
    from mt3 import registry

    return [IndexedTask(m.task, m.info.dataset_config, m.info.tokenize_config, rate=m.rate,
                        skip_too_long=m.info.skip_too_long) for m in registry.training_members(name, data_dir=data_dir)]


def examples_per_track(task: IndexedTask, split: str, data_dir=None) -> float:
    """Mean training examples one record of the split yields: one crop per 2000-frame chunk (MT3's rule), counted
    from the manifest's track durations (a block's size in examples, which turns per-example rates into block
    probabilities)."""
    import math

    from mt3.data import records, track_examples

    config = task.dataset_config
    name = {"train": config.train_split, "eval": config.train_eval_split}.get(split, split)
    spec = task.tokenize_config.spectrogram_config
    tracks = records.read_manifest(config.path(data_dir), name).get("tracks") or []
    chunks = [math.ceil(math.ceil(float(t["seconds"]) * spec.sample_rate / spec.hop_width)
                        / track_examples.MAX_NUM_CACHED_FRAMES) for t in tracks if "seconds" in t]
    return max(float(np.mean(chunks)), 1.0) if chunks else 1.0


def host_records(task: IndexedTask, split: str, shard_id: int, num_shards: int, data_dir=None
                 ) -> list[tuple[str, int]]:
    """(shard path, byte offset) of this host's records of a task's split (split 'eval' = the train-eval split)."""
    from mt3 import datasets
    from mt3.data import records
    from mt3.errors import InputError

    config = task.dataset_config
    name = {"train": config.train_split, "eval": config.train_eval_split}.get(split, split)
    path = config.path(data_dir)
    if not records.split_is_complete(path, name):
        raise InputError(path, f"split {name!r} of dataset {config.name!r} is not prepared (no complete "
                               f"{name}.manifest.json); run `mt3 prepare-data {config.converter} --root ... --out "
                               f"{path}` or set ${datasets.DATA_DIR_ENV}")
    datasets.check_program_mapping(config, name, data_dir)
    located = [(shard, offset) for shard in records.shard_paths(path, name) for offset in record_offsets(shard)]
    mine = located[shard_id::num_shards]
    if not mine:
        raise InputError(path, f"split {name!r} has {len(located)} records: too few for {num_shards} hosts")
    return mine
