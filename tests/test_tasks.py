"""The seqio registry end to end on a prepared dataset: names, batches, determinism, sharding, mixtures, data-stats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_fixtures import sub_sequence, windows, write_prepared_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, music21_sequences):
    root = tmp_path_factory.mktemp("prepared")
    chorale = music21_sequences["bach_chorale"]
    quartet = music21_sequences["string_quartet"]
    tracks = {
        "train": windows(chorale, 3, stride=4.0, length=6.0, prefix="chorale_")
        + windows(quartet, 2, stride=10.0, length=20.0, prefix="quartet_"),
        "validation": [("quartet_val", sub_sequence(quartet, 40.0, 52.0))],
        "test": [("chorale_test", sub_sequence(chorale, 12.0, 18.0))],
    }
    write_prepared_dataset(root, "local", tracks, num_shards=2)
    return root


@pytest.fixture()
def env_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("MT3_DATA_DIR", str(data_dir))
    return data_dir


LENGTHS = {"inputs": 256, "targets": 1024}


def _batches(n, **kwargs):
    from mt3 import tasks

    ds = tasks.get_dataset("local_notes_ties_vb1_train", task_feature_lengths=LENGTHS, split="train",
                           batch_size=4, **kwargs)
    return list(ds.take(n).as_numpy_iterator())


def test_registry_has_mt3_names():
    import seqio

    from mt3 import tasks  # noqa: F401

    for name in ["slakh_notes_ties_vb1_train", "slakh_notes_ties_vb1_validation", "slakh_notes_ties_vb1_test",
                 "maestrov3_notes_train", "maestrov3_notes_ties_vb1_train", "cerberus4_notes_ties_vb1_train",
                 "guitarset_notes_ties_vb1_validation", "urmp_notes_ties_vb1_train", "musicnet_notes_ties_vb1_test",
                 "local_notes_ties_vb1_train"]:
        assert name in seqio.TaskRegistry.names(), name
    for name in ["mega_notes_ties_vb1_train", "mega_notes_ties_vb1_eval", "piano_notes_train",
                 "local_mix_notes_ties_vb1_train", "slakh_notes_ties_vb1_eval"]:
        assert name in seqio.MixtureRegistry.names(), name
    assert len(seqio.get_mixture_or_task("mega_notes_ties_vb1_train").tasks) == 6


def test_train_batches_have_model_features(env_data_dir):
    batches = _batches(3, seed=0)
    b = batches[0]
    assert b["encoder_input_tokens"].shape == (4, 256, 128) and b["encoder_input_tokens"].dtype == np.float32
    for k in ("decoder_target_tokens", "decoder_input_tokens"):
        assert b[k].shape == (4, 1024) and b[k].dtype == np.int32
    assert b["decoder_loss_weights"].dtype == np.float32
    np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:], b["decoder_target_tokens"][:, :-1])
    assert np.all(b["decoder_input_tokens"][:, 0] == 0)
    np.testing.assert_array_equal(b["decoder_loss_weights"], (b["decoder_target_tokens"] > 0).astype(np.float32))
    # every example ends with EOS (1) then padding, and carries real audio
    for row in b["decoder_target_tokens"]:
        n = int(np.sum(row > 0))
        assert row[n - 1] == 1
    assert np.abs(b["encoder_input_tokens"]).max() > 0.01


def test_same_seed_same_stream_and_skip_resumes_exactly(env_data_dir):
    a = _batches(6, seed=3)
    b = _batches(6, seed=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["decoder_target_tokens"], y["decoder_target_tokens"])
        np.testing.assert_array_equal(x["encoder_input_tokens"], y["encoder_input_tokens"])
    c = _batches(6, seed=4)
    assert any(not np.array_equal(x["decoder_target_tokens"], y["decoder_target_tokens"]) for x, y in zip(a, c))
    from mt3 import tasks

    resumed = tasks.get_dataset("local_notes_ties_vb1_train", task_feature_lengths=LENGTHS, split="train",
                                batch_size=4, seed=3).skip(4)
    for x, y in zip(a[4:], resumed.take(2).as_numpy_iterator()):
        np.testing.assert_array_equal(x["decoder_target_tokens"], y["decoder_target_tokens"])


def test_host_shards_are_disjoint(env_data_dir):
    import seqio

    from mt3 import datasets, tasks  # noqa: F401

    task = seqio.get_mixture_or_task("local_notes_ties_vb1_train")
    seen = []
    for index in range(2):
        ds = task.get_dataset(LENGTHS, split="train", shuffle=False, shard_info=seqio.ShardInfo(index, 2),
                              num_epochs=1)
        seen.append({ex["id"] for ex in ds.as_numpy_iterator()})
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    assert len(seen[0] | seen[1]) == 5


def test_eval_task_yields_consecutive_segments_with_reference(env_data_dir):
    import seqio

    from mt3 import tasks  # noqa: F401

    task = seqio.get_mixture_or_task("local_notes_ties_vb1_validation")
    examples = list(task.get_dataset(LENGTHS, split="eval", shuffle=False, num_epochs=1).as_numpy_iterator())
    starts = [float(e["start_time"]) for e in examples]
    assert starts == sorted(starts) and starts[0] == 0.0
    np.testing.assert_allclose(np.diff(starts), 256 / 125)
    assert examples[0]["sequence"] != b"" and all(e["sequence"] == b"" for e in examples[1:])


def test_unprepared_split_names_the_folder(tmp_path, monkeypatch):
    from mt3 import tasks
    from mt3.errors import InputError

    monkeypatch.setenv("MT3_DATA_DIR", str(tmp_path))
    with pytest.raises(InputError, match="not prepared"):
        tasks.get_dataset("slakh_notes_ties_vb1_train", task_feature_lengths=LENGTHS, split="train", batch_size=2)


def test_mixture_rates_follow_hours(env_data_dir):
    import seqio

    from mt3 import datasets, tasks  # noqa: F401

    mix = seqio.get_mixture_or_task("local_mix_notes_ties_vb1_train")
    (task,) = mix.tasks
    hours = datasets.prepared_hours(datasets.LOCAL_CONFIG, "train")
    assert hours > 0
    assert mix.get_rate(task) == pytest.approx((hours * 3600 / 16) ** 0.3)


def test_data_stats_cli_json(env_data_dir, capsys):
    from mt3 import cli

    assert cli.main(["data-stats", "local_mix_notes_ties_vb1_train", "--num", "12", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_examples"] == 12
    assert stats["inputs_shape"] == [256, 128]
    assert 0.0 <= stats["fraction_targets_truncated"] <= 1.0
    # the fixture's programs (chorale: 73, 71, 70, 32; quartet: 40, 41, 42) show up as program events
    assert set(stats["programs_seen"]) <= {"73", "71", "70", "32", "40", "41", "42"}
    assert len(stats["programs_seen"]) >= 3
    assert stats["target_length_percentiles"]["50"] > 1


def test_data_stats_unknown_name_exit_2(env_data_dir, capsys):
    from mt3 import cli

    assert cli.main(["data-stats", "no_such_task", "--num", "1"]) == 2
    assert "no_such_task" in capsys.readouterr().err
