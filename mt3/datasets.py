"""Dataset configurations: where each prepared dataset lives, its splits, and how MT3 uses them.

Same shape as magenta/mt3's `datasets.py` (DatasetConfig, InferEvalSplit, TrackSpec), but paths point at the output of
`mt3 prepare-data` under one data root instead of cloud buckets. The root is resolved when a dataset is read, not when
tasks are registered, so `MT3_DATA_DIR` / the gin macro `DATA_DIR` can be set after import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from mt3 import paths

DEFAULT_DATA_DIR = "data/prepared"
DATA_DIR_ENV = "MT3_DATA_DIR"
PROGRAM_MAPPINGS = ("full", "slakh_class", "track_specs")
# What a manifest written before manifests recorded `program_mapping` means, by its "dataset" field: the Slakh
# converter then always kept the stems' GM programs (the local corpus is prepared by it) and Cerberus4 always used its
# track specs.
LEGACY_PROGRAM_MAPPING = {"cerberus4": "track_specs"}
LEGACY_PROGRAM_MAPPING_DEFAULT = "full"


@dataclasses.dataclass(frozen=True)
class InferEvalSplit:
    """A split evaluated by inference (consecutive segments + full-track references)."""

    name: str  # split of the prepared data
    suffix: str  # task name suffix
    include_in_mixture: bool = True


@dataclasses.dataclass(frozen=True)
class TrackSpec:
    """A named instrument track used for per-instrument metrics (Cerberus4's bass/drums/guitar/piano)."""

    name: str
    program: int = 0
    is_drum: bool = False


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """One prepared dataset. `folder` is its directory under the data root (written by `mt3 prepare-data`).

    `program_mapping` is the programs the tasks expect the prepared notes to carry, as recorded in the manifest by the
    converter ("slakh_class": MT3's Slakh-class programs, "full": the stems' GM programs, "track_specs": Cerberus4's
    bass/guitar/piano relabelling; None: not checked). Preparing with one mapping and training a task that expects
    another is an InputError, because the targets would silently differ from MT3's. `trim_overlapping_notes` says
    whether training targets have same-pitch overlaps trimmed: MT3 does this for Slakh and Cerberus4 only and tokenizes
    MAESTRO, GuitarSet, MusicNet and URMP as they are (its decoder then ends the earlier note at the later onset).
    """

    name: str
    folder: str
    splits: tuple[str, ...]
    train_split: str
    train_eval_split: str
    infer_eval_splits: tuple[InferEvalSplit, ...]
    track_specs: tuple[TrackSpec, ...] = ()
    converter: str = ""  # `mt3 prepare-data` dataset name that produces it
    program_mapping: str | None = None
    trim_overlapping_notes: bool = False

    def __post_init__(self):
        for split in (self.train_split, self.train_eval_split, *(s.name for s in self.infer_eval_splits)):
            if split not in self.splits:
                raise ValueError(f"DatasetConfig {self.name}: split {split!r} not in {self.splits}")
        if self.program_mapping not in (None, *PROGRAM_MAPPINGS):
            raise ValueError(f"DatasetConfig {self.name}: program_mapping {self.program_mapping!r} not one of "
                             f"{PROGRAM_MAPPINGS}")

    def path(self, data_dir: str | os.PathLike | None = None) -> Path:
        """The prepared folder; an `etils.epath.Path` when the data dir is a URL (gs://...), which `pathlib` would
        turn into a local folder."""
        base = resolve_data_dir(data_dir)
        if paths.is_url(base):
            return paths.as_epath(paths.join(base, self.folder))
        return Path(base) / self.folder


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """Explicit argument > $MT3_DATA_DIR > ./data/prepared."""
    return os.fspath(data_dir) if data_dir else os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR)


_VAL_TEST = (InferEvalSplit("validation", "validation"), InferEvalSplit("test", "test"))
_VAL_ONLY = (InferEvalSplit("validation", "validation"),)

MAESTROV3_CONFIG = DatasetConfig(
    name="maestrov3", folder="maestrov3", converter="maestro", splits=("train", "validation", "test"),
    train_split="train", train_eval_split="validation", infer_eval_splits=_VAL_TEST)

# MT3's Slakh task: every stem's program mapped to its Slakh class (paper Table 7); overlaps trimmed in training.
SLAKH_CONFIG = DatasetConfig(
    name="slakh", folder="slakh", converter="slakh", splits=("train", "validation", "test"),
    train_split="train", train_eval_split="validation", infer_eval_splits=_VAL_TEST,
    program_mapping="slakh_class", trim_overlapping_notes=True)

# MT3's Cerberus4 task relabels each stem to its track spec's program (its tokenizer's track_specs branch).
CERBERUS4_CONFIG = DatasetConfig(
    name="cerberus4", folder="cerberus4", converter="cerberus4", splits=("train", "validation", "test"),
    train_split="train", train_eval_split="validation", infer_eval_splits=_VAL_TEST,
    track_specs=(TrackSpec("bass", program=32), TrackSpec("drums", is_drum=True), TrackSpec("guitar", program=24),
                 TrackSpec("piano", program=0)),
    program_mapping="track_specs", trim_overlapping_notes=True)

GUITARSET_CONFIG = DatasetConfig(
    name="guitarset", folder="guitarset", converter="guitarset", splits=("train", "validation"),
    train_split="train", train_eval_split="validation", infer_eval_splits=_VAL_ONLY)

URMP_CONFIG = DatasetConfig(
    name="urmp", folder="urmp", converter="urmp", splits=("train", "validation"),
    train_split="train", train_eval_split="validation", infer_eval_splits=_VAL_ONLY)

MUSICNET_CONFIG = DatasetConfig(
    name="musicnet", folder="musicnet", converter="musicnet", splits=("train", "validation", "test"),
    train_split="train", train_eval_split="validation", infer_eval_splits=_VAL_TEST)

# The local corpus (`mt3 build-corpus`) is in Slakh2100's layout and prepared with the Slakh converter, which keeps
# its full GM programs (a tree with build-corpus's corpus.json defaults to program_mapping=full).
LOCAL_CONFIG = DatasetConfig(
    name="local", folder="local", converter="slakh", splits=("train", "validation", "test"),
    train_split="train", train_eval_split="validation", infer_eval_splits=_VAL_TEST,
    program_mapping="full", trim_overlapping_notes=True)

ALL_CONFIGS: tuple[DatasetConfig, ...] = (
    MAESTROV3_CONFIG, SLAKH_CONFIG, CERBERUS4_CONFIG, GUITARSET_CONFIG, URMP_CONFIG, MUSICNET_CONFIG, LOCAL_CONFIG)

# Datasets a user prepares from their own recordings (`mt3 prepare-data pairs --out DATA_DIR/NAME`) need no config
# written: the manifests' "dataset" field says which converter wrote a folder, and the folder's name is the dataset's.
DISCOVERED_CONVERTERS = ("pairs",)


def discover_prepared(data_dir: str | os.PathLike | None = None) -> list[DatasetConfig]:
    """A DatasetConfig for every folder `DATA_DIR/NAME` holding a complete split written by `mt3 prepare-data pairs`
    (built-in folders excluded), sorted by name, so such a dataset trains, evaluates and mixes with no Python written.

    Its tasks are the local corpus's: splits train/validation/test (validation = the train-eval split, validation and
    test evaluated by inference), the MIDI's programs kept ("full"), same-pitch overlaps trimmed in training targets as
    for MT3's multi-track datasets. A split that was never prepared (a small folder's hash split may leave one empty)
    fails only when read, naming the folder."""
    import json
    import re

    base = resolve_data_dir(data_dir)
    root = paths.as_epath(base) if paths.is_url(base) else Path(base)  # gs://...: listed through fsspec
    if not root.is_dir():
        return []
    builtin = {c.folder for c in ALL_CONFIGS} | {c.name for c in ALL_CONFIGS}
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in builtin or not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", folder.name):
            continue
        converters = set()
        for manifest in folder.glob("*.manifest.json"):
            try:
                converters.add(json.loads(manifest.read_text()).get("dataset"))
            except (OSError, ValueError, AttributeError):
                continue
        converter = next((c for c in DISCOVERED_CONVERTERS if c in converters), None)
        if converter is None:
            continue
        found.append(DatasetConfig(
            name=folder.name, folder=folder.name, converter=converter, splits=("train", "validation", "test"),
            train_split="train", train_eval_split="validation", infer_eval_splits=_VAL_TEST,
            program_mapping="full", trim_overlapping_notes=True))
    return found


@contextlib.contextmanager
def data_dir_override(data_dir: str | os.PathLike | None):
    """Temporarily points $MT3_DATA_DIR at `data_dir` (no-op for None). seqio resolves file lists while a dataset is
    built, so wrapping only the construction is enough, and nothing leaks into the caller's environment."""
    if not data_dir:
        yield
        return
    saved = os.environ.get(DATA_DIR_ENV)
    os.environ[DATA_DIR_ENV] = os.fspath(data_dir)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(DATA_DIR_ENV, None)
        else:
            os.environ[DATA_DIR_ENV] = saved


def prepared_hours(config: DatasetConfig, split: str, data_dir=None) -> float | None:
    """Hours of audio in a prepared split (from its manifest), or None if it is not prepared."""
    from mt3.data import records

    path = config.path(data_dir)
    if not paths.exists(records.manifest_path(path, split)):
        return None
    return float(records.read_manifest(path, split)["hours"])


def recorded_program_mapping(manifest: dict) -> str:
    """The program mapping a prepared split was written with (older manifests: what their converter always did)."""
    recorded = manifest.get("program_mapping")
    if recorded:
        return str(recorded)
    return LEGACY_PROGRAM_MAPPING.get(manifest.get("dataset", ""), LEGACY_PROGRAM_MAPPING_DEFAULT)


def check_program_mapping(config: DatasetConfig, split: str, data_dir=None) -> None:
    """InputError naming the manifest when a prepared split's programs are not the ones `config`'s tasks expect."""
    from mt3.data import records
    from mt3.errors import InputError

    if config.program_mapping is None:
        return
    path = config.path(data_dir)
    recorded = recorded_program_mapping(records.read_manifest(path, split))
    if recorded != config.program_mapping:
        option = (f" --option program_mapping={config.program_mapping}"
                  if config.program_mapping in ("full", "slakh_class") else "")
        raise InputError(records.manifest_path(path, split),
                         f"prepared with program_mapping={recorded}, but the {config.name!r} tasks expect "
                         f"program_mapping={config.program_mapping}; re-prepare it into an empty folder with "
                         f"`mt3 prepare-data {config.converter} --root ... --out {path}{option}`")


def make_data_source(config: DatasetConfig):
    """A seqio DataSource over the shards of a prepared dataset, resolved lazily at read time.

    Unlike seqio's FileDataSource it supports any number of hosts (sharding by file when there are enough shards,
    else by record) and takes file lists from the manifest, so a half-written split is never read. Built in a
    function so seqio and TensorFlow are imported only by the data layer.
    """
    import seqio
    import tensorflow as tf

    from mt3.data import records
    from mt3.errors import InputError

    class PreparedDataSource(seqio.DataSource):
        def __init__(self):
            super().__init__(splits=config.splits, num_input_examples=None, caching_permitted=True)

        @property
        def supports_arbitrary_sharding(self) -> bool:
            return True

        def list_shards(self, split: str) -> list[str]:
            path = config.path()
            if not records.split_is_complete(path, split):
                raise InputError(path, f"split {split!r} of dataset {config.name!r} is not prepared (no complete "
                                       f"{split}.manifest.json); run `mt3 prepare-data {config.converter} --root ... "
                                       f"--out {path}` or set ${DATA_DIR_ENV}")
            check_program_mapping(config, split)
            return records.shard_paths(path, split)

        def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, *, sequence_length=None,
                        use_cached=False, num_epochs=1):
            files = self.list_shards(split)
            files_ds = tf.data.Dataset.from_tensor_slices(files)
            by_file = shard_info is not None and len(files) >= shard_info.num_shards > 1
            if by_file:
                files_ds = files_ds.shard(shard_info.num_shards, shard_info.index)
            if shuffle:
                files_ds = files_ds.shuffle(len(files), seed=seed)
            ds = files_ds.interleave(tf.data.TFRecordDataset, cycle_length=4, block_length=1,
                                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            if shard_info is not None and shard_info.num_shards > 1 and not by_file:
                ds = ds.shard(shard_info.num_shards, shard_info.index)
            spec = records.feature_description()
            return ds.map(lambda x: tf.io.parse_single_example(x, spec), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)

    return PreparedDataSource()
