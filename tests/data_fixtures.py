"""Prepared-dataset fixtures for data-layer tests: real music21 scores with additive-synth audio, written through the
same `records.ShardWriter` that `mt3 prepare-data` uses (so tasks read exactly what converters write)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mt3.data import records

SR = records.SAMPLE_RATE


def synth(ns, seconds: float | None = None) -> np.ndarray:
    """Decaying harmonic tones for every note: cheap, deterministic audio aligned to the labels."""
    total = seconds if seconds is not None else ns.total_time + 0.5
    audio = np.zeros(int(total * SR), np.float32)
    for n in ns.notes:
        start = int(n.start_time * SR)
        length = max(int((n.end_time - n.start_time) * SR), 1)
        t = np.arange(length) / SR
        f0 = 440.0 * 2 ** ((n.pitch - 69) / 12)
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3)) * np.exp(-3 * t)
        end = min(start + length, len(audio))
        audio[start:end] += 0.05 * tone[: end - start].astype(np.float32)
    return audio


def sub_sequence(ns, start: float, end: float):
    """The notes of `ns` starting in [start, end), shifted to start at 0 (a shorter track from a real piece)."""
    import note_seq

    out = note_seq.NoteSequence(ticks_per_quarter=ns.ticks_per_quarter)
    for n in ns.notes:
        if start <= n.start_time < end:
            m = out.notes.add()
            m.CopyFrom(n)
            m.start_time -= start
            m.end_time = min(n.end_time, end) - start
    out.total_time = max((n.end_time for n in out.notes), default=0.0)
    return out


def windows(ns, count: int, *, stride: float, length: float, prefix: str) -> list[tuple[str, object]]:
    """`count` overlapping excerpts of one real piece as prepared-dataset tracks [(f"{prefix}{i}", ns)]: excerpt i
    spans [stride * i, stride * i + length) seconds, so neighbours share notes the way a corpus's tracks share style."""
    return [(f"{prefix}{i}", sub_sequence(ns, stride * i, stride * i + length)) for i in range(count)]


def write_prepared_dataset(root: Path, folder: str, tracks_by_split: dict[str, list[tuple[str, object]]],
                           dataset: str = "local", num_shards: int = 1) -> Path:
    """Writes {split: [(id, ns)]} as a prepared dataset under root/folder; audio synthesised from the notes."""
    out = Path(root) / folder
    for split, tracks in tracks_by_split.items():
        with records.ShardWriter(out, split, dataset, num_shards=num_shards) as writer:
            for track_id, ns in tracks:
                writer.write(records.TrackRecord(id=track_id, audio=synth(ns), sequence=ns, dataset=dataset))
    return out


def chorale_train_task(root: Path, chorale, num_tracks: int, monkeypatch):
    """The local corpus's seqio training task over `num_tracks` 8-second tracks of a real chorale, prepared under
    `root` (the data dir is set through the environment for this test only)."""
    import seqio

    from mt3 import configurables, datasets, tasks

    configurables.register([configurables.DATA])
    pieces = windows(chorale, num_tracks, stride=4.0, length=8.0, prefix="t")
    write_prepared_dataset(root, "local", {"train": pieces, "validation": pieces[:1], "test": pieces[:1]})
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(root))
    return seqio.get_mixture_or_task(f"{tasks._MT3_PREFIXES['local']}_train")


def gin_bound_train_examples(task, configurable: str, take: int, **bindings) -> list[dict]:
    """The first `take` training examples of `task` when `configurable` (mixing.MixConfig or
    augmentation.AugmentConfig) is built by gin with `configurable.NAME = VALUE` bound in a cleared config, and handed
    to the pipeline as the trainer hands its dataset config's (`preprocessors.training_options`). Callers clear gin
    again afterwards."""
    import gin

    from mt3 import preprocessors

    with gin.unlock_config():
        gin.clear_config()
        for name, value in bindings.items():
            gin.bind_parameter(f"{configurable}.{name}", value)
    key = "mix_config" if configurable.startswith("mixing.") else "augment_config"
    with preprocessors.training_options(**{key: gin.get_configurable(configurable)()}):
        ds = task.get_dataset({"inputs": 256, "targets": 1024}, split="train", shuffle=False, seed=0)
    return list(ds.take(take).as_numpy_iterator())
