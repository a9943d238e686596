"""The converted-dataset format: sharded TFRecords of (16 kHz audio, NoteSequence, id) plus a JSON manifest per split.

Every converter writes through `ShardWriter`, so all datasets share one format the seqio tasks read. Shards are written
under a temporary name and renamed only when complete: an interrupted run never leaves a partial shard that looks
finished, and a re-run can skip splits whose manifest already exists (`split_is_complete`).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mt3 import paths
from mt3.errors import InputError

SAMPLE_RATE = 16000
FEATURE_KEYS = ("id", "audio", "sample_rate", "sequence", "dataset")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Opens a temporary file beside `path`; on success renames it over `path`, on error removes it.

    The file gets the mode a plain `open(path, "w")` would (0666 minus the umask: 0644 under umask 022), not
    mkstemp's private 0600, so outputs stay readable by whoever the user's umask allows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask. POSIX can only read it by setting it, so set and restore it under a lock."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


@dataclass
class TrackRecord:
    """One converted track. `audio` is mono float32 at 16 kHz; `sequence` a note_seq.NoteSequence."""

    id: str
    audio: np.ndarray
    sequence: object  # note_seq.NoteSequence (kept untyped so this module imports without note_seq)
    dataset: str
    sample_rate: int = SAMPLE_RATE

    def to_example_bytes(self) -> bytes:
        import tensorflow as tf

        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"{self.id}: records hold {SAMPLE_RATE} Hz audio, got {self.sample_rate}")
        audio = np.asarray(self.audio, dtype="<f4")
        if audio.ndim != 1:
            raise ValueError(f"{self.id}: audio must be mono, got shape {audio.shape}")

        def _bytes(v: bytes) -> tf.train.Feature:
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

        feature = {
            "id": _bytes(self.id.encode()),
            "audio": _bytes(audio.tobytes()),
            "sample_rate": tf.train.Feature(int64_list=tf.train.Int64List(value=[self.sample_rate])),
            "sequence": _bytes(self.sequence.SerializeToString()),
            "dataset": _bytes(self.dataset.encode()),
        }
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_description():
    """tf.io feature spec for `tf.io.parse_single_example` (what seqio's TFExampleDataSource needs)."""
    import tensorflow as tf

    return {
        "id": tf.io.FixedLenFeature([], tf.string),
        "audio": tf.io.FixedLenFeature([], tf.string),
        "sample_rate": tf.io.FixedLenFeature([], tf.int64),
        "sequence": tf.io.FixedLenFeature([], tf.string),
        "dataset": tf.io.FixedLenFeature([], tf.string),
    }


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def manifest_path(out_dir: str | os.PathLike, split: str) -> Path:
    """The split's manifest (`mt3.paths.as_epath` for a URL data dir: `Path("gs://b")` would be a local folder)."""
    if paths.is_url(out_dir):
        return paths.as_epath(paths.join(out_dir, f"{split}.manifest.json"))
    return Path(out_dir) / f"{split}.manifest.json"


def split_is_complete(out_dir: str | os.PathLike, split: str) -> bool:
    """True when a previous run finished this split (manifest written last, and all its shards exist)."""
    path = manifest_path(out_dir, split)
    if not paths.exists(path):
        return False
    try:
        shards = json.loads(paths.read_text(path))["shards"]
    except (ValueError, KeyError):
        return False
    return all(paths.exists(paths.join(out_dir, s)) for s in shards)


def read_manifest(out_dir: str | os.PathLike, split: str) -> dict:
    return json.loads(paths.read_text(manifest_path(out_dir, split)))


def shard_paths(out_dir: str | os.PathLike, split: str) -> list[str]:
    """Shard files of a finished split, in order (from its manifest); URLs stay URLs."""
    return [str(paths.join(out_dir, s)) for s in read_manifest(out_dir, split)["shards"]]


@dataclass
class _Stats:
    tracks: list = field(default_factory=list)
    programs: Counter = field(default_factory=Counter)
    drum_notes: int = 0
    seconds: float = 0.0


class ShardWriter:
    """Writes the tracks of one split into `num_shards` TFRecord shards (round-robin) and a manifest.

    Use as a context manager; on a clean exit the shards are renamed into place and the manifest is written last, so
    the manifest's presence means the split is complete. On an exception nothing that looks finished is left behind.
    """

    def __init__(self, out_dir: str | os.PathLike, split: str, dataset: str, num_shards: int = 1,
                 manifest_fields: dict | None = None):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.manifest_fields = dict(manifest_fields or {})  # converter facts, e.g. {"program_mapping": "slakh_class"}
        self.out_dir = Path(out_dir)
        self.split = split
        self.dataset = dataset
        self.num_shards = num_shards
        self._writers: list = []
        self._tmp_paths: list[Path] = []
        self._count = 0
        self._stats = _Stats()

    def __enter__(self) -> ShardWriter:
        import tensorflow as tf

        self.out_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.num_shards):
            tmp = self.out_dir / f".{shard_name(self.split, i, self.num_shards)}.tmp"
            self._tmp_paths.append(tmp)
            self._writers.append(tf.io.TFRecordWriter(str(tmp)))
        return self

    def write(self, record: TrackRecord) -> None:
        self._writers[self._count % self.num_shards].write(record.to_example_bytes())
        self._count += 1
        seconds = len(record.audio) / record.sample_rate
        notes = list(record.sequence.notes)
        self._stats.tracks.append({"id": record.id, "seconds": round(seconds, 3), "notes": len(notes)})
        self._stats.seconds += seconds
        for n in notes:
            if n.is_drum:
                self._stats.drum_notes += 1
            else:
                self._stats.programs[int(n.program)] += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        for w in self._writers:
            w.close()
        if exc_type is not None:
            for tmp in self._tmp_paths:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            return
        names = [shard_name(self.split, i, self.num_shards) for i in range(self.num_shards)]
        for tmp, name in zip(self._tmp_paths, names):
            os.replace(tmp, self.out_dir / name)
        s = self._stats
        atomic_write_json(
            manifest_path(self.out_dir, self.split),
            {
                "dataset": self.dataset,
                "split": self.split,
                "num_tracks": len(s.tracks),
                "hours": round(s.seconds / 3600, 4),
                "num_notes": sum(t["notes"] for t in s.tracks),
                "num_drum_notes": s.drum_notes,
                "programs": {str(k): v for k, v in sorted(s.programs.items())},
                "tracks": s.tracks,
                "shards": names,
                **self.manifest_fields,
            },
        )


# ---------------------------------------------------------------------------------------------------------------------
# Reading, without TensorFlow: a TFRecord file is length-prefixed frames and a `tf.train.Example` is three nested
# protobuf messages, so a little wire-format parsing replaces `tf.data` (evaluation and inference run on GPU hosts that
# have only JAX). CRCs are not verified: shards are written atomically by `ShardWriter`.


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values are memoryviews."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = bytes(buf[pos:pos + 8]), pos + 8
        elif wire == 5:
            value, pos = bytes(buf[pos:pos + 4]), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def parse_example(data: bytes) -> dict[str, list]:
    """A serialized `tf.train.Example` -> {feature name: list of values} (bytes, float or int), without TensorFlow."""
    out: dict[str, list] = {}
    for number, _, features in _fields(memoryview(data)):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(features):
            if entry_number != 1:
                continue
            key, feature = "", memoryview(b"")
            for n, _, v in _fields(entry):
                if n == 1:
                    key = bytes(v).decode()
                elif n == 2:
                    feature = v
            values: list = []
            for kind, _, value_list in _fields(feature):
                for n, wire, v in _fields(value_list):
                    if n != 1:
                        continue
                    if kind == 1:
                        values.append(bytes(v))
                    elif kind == 2:
                        values.extend(np.frombuffer(v, "<f4").tolist() if wire == 2 else struct.unpack("<f", v))
                    elif kind == 3 and wire == 2:
                        pos = 0
                        while pos < len(v):
                            x, pos = _varint(v, pos)
                            values.append(x - (1 << 64) if x >= 1 << 63 else x)
                    elif kind == 3:
                        values.append(v - (1 << 64) if v >= 1 << 63 else v)
            out[key] = values
    return out


def read_tfrecord(path: str | os.PathLike) -> Iterator[bytes]:
    """The records of one TFRecord file (uint64 length, 4-byte length CRC, data, 4-byte data CRC)."""
    with paths.open_file(path, "rb") as f:
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise InputError(path, "truncated TFRecord file")
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                raise InputError(path, "truncated TFRecord file")
            yield data


def parse_example_bytes(data: bytes) -> TrackRecord:
    """Inverse of `TrackRecord.to_example_bytes` (seqio parses with `feature_description` instead)."""
    import note_seq

    ex = parse_example(data)
    rate = int(ex["sample_rate"][0])
    if rate != SAMPLE_RATE:
        raise ValueError(f"record {ex['id'][0]!r}: sample_rate {rate} != {SAMPLE_RATE}")
    return TrackRecord(id=ex["id"][0].decode(), audio=np.frombuffer(ex["audio"][0], "<f4").astype(np.float32),
                       sequence=note_seq.NoteSequence.FromString(ex["sequence"][0]),
                       dataset=ex["dataset"][0].decode(), sample_rate=rate)


def read_records(paths: Sequence[str | os.PathLike]) -> Iterator[TrackRecord]:
    """The TrackRecords of the given shards, in order; a damaged shard is an InputError naming it."""
    for path in paths:
        for raw in read_tfrecord(path):
            try:
                yield parse_example_bytes(raw)
            except (KeyError, IndexError, ValueError) as err:
                raise InputError(path, f"not a prepared-dataset record ({type(err).__name__}: {err})") from err
