"""Tests for mt3.training.indexed_records: records located by a header scan read back exactly what the shard holds
(real prepared records: music21 Bach excerpts, synthesised audio, written by the converters' ShardWriter); hosts split
a split's records disjointly; a cut shard, an unprepared split and too many hosts are one-line errors naming the
path."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from data_fixtures import sub_sequence, windows, write_prepared_dataset

from mt3.data import records
from mt3.errors import InputError
from mt3.training import indexed_records

TASK = "local_mix_notes_ties_vb1_train"


@pytest.fixture(scope="module")
def prepared(music21_sequences, tmp_path_factory):
    chorale, rag = music21_sequences["bach_chorale"], music21_sequences["piano_piece"]
    root = tmp_path_factory.mktemp("prepared")
    write_prepared_dataset(root, "local", {
        "train": windows(chorale, 5, stride=1.0, length=12.0, prefix="chorale_"),
        "validation": [("rag_val", sub_sequence(rag, 0.0, 20.0)), ("rag_val2", sub_sequence(rag, 20.0, 56.0))],
    }, num_shards=2)
    return root


def test_offsets_read_back_every_record_of_a_shard(prepared):
    out = prepared / "local"
    for shard in records.shard_paths(out, "train"):
        expected = list(records.read_records([shard]))
        offsets = indexed_records.record_offsets(shard)
        assert len(offsets) == len(expected) >= 2 and offsets[0] == 0 and offsets == sorted(offsets)
        for offset, record in zip(offsets, expected, strict=True):
            got = indexed_records.read_record(shard, offset)
            assert got.id == record.id
            np.testing.assert_array_equal(got.audio, record.audio)
            assert got.sequence == record.sequence


def test_a_cut_shard_is_named(prepared, tmp_path):
    shard = records.shard_paths(prepared / "local", "train")[0]
    cut = tmp_path / "cut.tfrecord"
    shutil.copy(shard, cut)
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size - 100)
    with pytest.raises(InputError, match="truncated TFRecord") as err:
        indexed_records.record_offsets(cut)
    assert str(cut) in str(err.value)


def test_hosts_take_disjoint_shares_of_a_split(prepared):
    (task,) = indexed_records.indexed_tasks(TASK, data_dir=str(prepared))
    assert task.name == "local_notes_ties_vb1_train" and task.rate > 0  # the mixture's one task
    everything = indexed_records.host_records(task, "train", 0, 1, data_dir=str(prepared))
    shares = [indexed_records.host_records(task, "train", h, 2, data_dir=str(prepared)) for h in range(2)]
    assert len(everything) == 5
    assert sorted(shares[0] + shares[1]) == sorted(everything) and not set(shares[0]) & set(shares[1])
    ids = {indexed_records.read_record(path, offset).id for path, offset in everything}
    assert ids == {f"chorale_{i}" for i in range(5)}
    with pytest.raises(InputError, match="too few for 6 hosts"):
        indexed_records.host_records(task, "train", 5, 6, data_dir=str(prepared))


def test_an_unprepared_split_says_how_to_prepare_it(prepared, tmp_path):
    (task,) = indexed_records.indexed_tasks(TASK, data_dir=str(tmp_path))
    with pytest.raises(InputError, match="is not prepared") as err:
        indexed_records.host_records(task, "train", 0, 1, data_dir=str(tmp_path))
    assert "mt3 prepare-data" in str(err.value)


def test_examples_per_track_counts_2000_frame_chunks(prepared):
    """Training tracks of at most 12 s are one chunk (2,000 frames = 16 s at 125 frames/s) each; the validation tracks
    of ~20 s and ~36 s are two and three chunks."""
    (task,) = indexed_records.indexed_tasks(TASK, data_dir=str(prepared))
    assert indexed_records.examples_per_track(task, "train", data_dir=str(prepared)) == 1.0
    assert indexed_records.examples_per_track(task, "eval", data_dir=str(prepared)) == 2.5
