"""Tests for mt3.data.records: atomic shards + manifest, and the TensorFlow-free reader checked against TensorFlow's
own."""

from __future__ import annotations

from pathlib import Path

import note_seq
import numpy as np
import pytest

from mt3.data import records
from mt3.errors import InputError


def _track(track_id: str, seconds: float, pitch: int) -> records.TrackRecord:
    rng = np.random.default_rng(pitch)
    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    ns.notes.add(pitch=pitch, velocity=90, start_time=0.25, end_time=0.75, program=41, instrument=1)
    ns.notes.add(pitch=38, velocity=100, start_time=0.5, end_time=0.51, is_drum=True, instrument=9)
    ns.total_time = 0.75
    audio = rng.standard_normal(int(seconds * records.SAMPLE_RATE)).astype(np.float32) * 0.1
    return records.TrackRecord(id=track_id, audio=audio, sequence=ns, dataset="fixture")


@pytest.fixture()
def shards(tmp_path):
    tracks = [_track("a", 1.0, 60), _track("b", 0.5, 62), _track("c", 0.25, 64)]
    with records.ShardWriter(tmp_path, "train", "fixture", num_shards=2) as writer:
        for t in tracks:
            writer.write(t)
    return tracks, records.shard_paths(tmp_path, "train")


def test_reader_equals_tensorflow_and_the_written_tracks(shards):
    import tensorflow as tf

    tracks, paths = shards
    assert len(paths) == 2 and records.split_is_complete(Path(paths[0]).parent, "train")
    ours = list(records.read_records(paths))
    assert [r.id for r in ours] == ["a", "c", "b"]  # round-robin over two shards, read shard by shard
    by_id = {t.id: t for t in tracks}
    for path in paths:
        for raw in tf.data.TFRecordDataset([path]).as_numpy_iterator():
            ex = tf.train.Example.FromString(raw).features.feature
            mine = records.parse_example(raw)
            assert mine["id"] == list(ex["id"].bytes_list.value)
            assert mine["sample_rate"] == list(ex["sample_rate"].int64_list.value) == [16000]
            assert mine["audio"] == list(ex["audio"].bytes_list.value)
    for rec in ours:
        np.testing.assert_array_equal(rec.audio, by_id[rec.id].audio)
        assert rec.sequence == by_id[rec.id].sequence and rec.dataset == "fixture" and rec.sample_rate == 16000


def test_parse_example_handles_floats_and_negative_ints():
    import tensorflow as tf

    feature = {"f": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5, -2.25])),
               "i": tf.train.Feature(int64_list=tf.train.Int64List(value=[-3, 7, 1 << 40]))}
    data = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    assert records.parse_example(data) == {"f": [0.5, -2.25], "i": [-3, 7, 1 << 40]}


def test_truncated_or_foreign_shard_is_an_input_error_naming_it(shards, tmp_path):
    _, paths = shards
    data = open(paths[0], "rb").read()
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="bad.tfrecord.*truncated"):
        list(records.read_records([bad]))
    import tensorflow as tf

    foreign = tmp_path / "foreign.tfrecord"
    with tf.io.TFRecordWriter(str(foreign)) as w:
        w.write(tf.train.Example().SerializeToString())
    with pytest.raises(InputError, match="foreign.tfrecord.*not a prepared-dataset record"):
        list(records.read_records([foreign]))
