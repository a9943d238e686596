"""Tests for mt3.registry: seqio's registry is the one list of what exists. A dataset registered by hand, a mixture
registered the plain seqio way, one declared in gin (MIXTURES) and one from a user's module (--module_import /
MIXTURE_OR_TASK_MODULE) all train on the indexed sampler with their rates (shares of EXAMPLES, whatever the tracks'
lengths), evaluate by name, and are listed by `mt3 tasks`; unknown names answer with the closest ones. Real prepared
records: music21 pieces with synthesised audio (6 s chorale excerpts: one example per track; 20 s quartet excerpts:
two)."""

from __future__ import annotations

import json
import sys

import pytest
import seqio
from data_fixtures import sub_sequence, windows, write_prepared_dataset

from mt3 import datasets, registry, tasks
from mt3.errors import InputError

LOCAL = "local_notes_ties_vb1_train"
QUARTETS = "quartets_notes_ties_vb1_train"
QUARTETS_CONFIG = datasets.DatasetConfig(
    name="quartets", folder="quartets", converter="slakh", splits=("train", "validation"), train_split="train",
    train_eval_split="validation", infer_eval_splits=(datasets.InferEvalSplit("validation", "validation"),))
LENGTHS = {"inputs": 256, "targets": 1024}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, music21_sequences):
    root = tmp_path_factory.mktemp("prepared")
    chorale, quartet = music21_sequences["bach_chorale"], music21_sequences["string_quartet"]
    write_prepared_dataset(root, "local", {
        "train": windows(chorale, 12, stride=2.0, length=6.0, prefix="c"),
        "validation": [("c_val", sub_sequence(chorale, 20.0, 26.0))],
        "test": [("c_test", sub_sequence(chorale, 30.0, 36.0))]})
    write_prepared_dataset(root, "quartets", {
        "train": windows(quartet, 6, stride=5.0, length=20.0, prefix="q"),
        "validation": [("q_val", sub_sequence(quartet, 40.0, 52.0))]}, dataset="quartets")
    tasks.add_transcription_task_to_registry(QUARTETS_CONFIG, tasks.SPECTROGRAM_CONFIG, tasks.MT3_VOCAB)
    return root


@pytest.fixture()
def clean_mixtures():
    """Mixture names a test registers, removed afterwards (seqio's registries are process-wide)."""
    added: list[str] = []
    yield added
    for name in added:
        seqio.MixtureRegistry.remove(name)
        registry._FROM_GIN.pop(name, None)


def test_registering_a_dataset_twice_is_a_no_op_and_a_clash_is_one_line(data_dir):
    again = tasks.add_transcription_task_to_registry(QUARTETS_CONFIG, tasks.SPECTROGRAM_CONFIG, tasks.MT3_VOCAB)
    assert again == "quartets_notes_ties_vb1"  # e.g. a config in datasets.ALL_CONFIGS registered by hand as well
    for config in datasets.ALL_CONFIGS:  # the built-ins again: no "duplicate provider" traceback
        tasks.add_transcription_task_to_registry(config, tasks.SPECTROGRAM_CONFIG, tasks.MT3_VOCAB)
    other = datasets.DatasetConfig(**{**QUARTETS_CONFIG.__dict__, "folder": "elsewhere"})
    with pytest.raises(InputError, match="'quartets_notes_ties_vb1_train' is already registered for another dataset"):
        tasks.add_transcription_task_to_registry(other, tasks.SPECTROGRAM_CONFIG, tasks.MT3_VOCAB)


def test_a_plain_seqio_mixture_trains_on_the_indexed_sampler_with_shares_of_examples(data_dir, clean_mixtures):
    """3:1 in examples although a quartet track yields twice the examples of a chorale track."""
    from mt3.data import data_stats
    from mt3.training import input_pipeline, train

    seqio.MixtureRegistry.add("test_3to1_train", [(LOCAL, 3.0), (QUARTETS, 1.0)])
    clean_mixtures.append("test_3to1_train")
    cfg = train.DatasetConfig(mixture_or_task_name="test_3to1_train", task_feature_lengths=LENGTHS, batch_size=2,
                              data_dir=str(data_dir), block_tracks=2)
    stream = input_pipeline.make_batch_iterator(cfg, host_batch_size=2, shard_id=0, num_shards=1)
    assert isinstance(stream, input_pipeline.IndexedStream)
    assert [t.name for t in stream.tasks] == [LOCAL, QUARTETS] and [t.rate for t in stream.tasks] == [3.0, 1.0]
    assert stream.examples_per_block[1] == pytest.approx(2 * stream.examples_per_block[0])
    stream.close()
    stats = data_stats.dataset_statistics("test_3to1_train", num_examples=240, data_dir=str(data_dir), block_tracks=2)
    assert stats["pipeline"] == "indexed" and stats["distinct_tracks"] > 10
    shares = {row["task"]: row for row in stats["tasks"]}
    for task, expected in ((LOCAL, 0.75), (QUARTETS, 0.25)):
        assert shares[task]["rate_share"] == pytest.approx(expected)
        assert abs(shares[task]["realised_share"] - expected) < 0.1 * expected, shares
        assert abs(shares[task]["share_read"] - expected) < 0.1 * expected, shares
    assert shares[QUARTETS]["block_probability"] < 0.2  # blocks twice as large are drawn half as often


def test_names_the_indexed_sampler_cannot_read_say_why_and_how_to_fix(data_dir, clean_mixtures):
    seqio.MixtureRegistry.add("test_eval_mix", [("local_notes_ties_vb1_validation", 1.0), (LOCAL, 1.0)])
    clean_mixtures.append("test_eval_mix")
    with pytest.raises(InputError, match="inference-eval task .* mixture of \\*_train tasks"):
        registry.training_members("test_eval_mix")
    with pytest.raises(InputError, match=r"unknown task or mixture 'local_notes_ties_vb1_trian' \(did you mean "
                                         r"local_notes_ties_vb1_train"):
        registry.training_members("local_notes_ties_vb1_trian")


def test_gin_mixtures_with_rates_or_a_temperature(data_dir, clean_mixtures):
    spec = {"gin_3to1_train": {LOCAL: 3, QUARTETS: 1.0},
            "gin_temp_train": {"tasks": [LOCAL, QUARTETS], "temperature": 2.0}}
    clean_mixtures.extend(spec)
    assert registry.register_mixtures(spec) == list(spec)
    assert registry.register_mixtures(spec) == list(spec)  # gin parsed again (eval after train): replaced, no clash
    members = registry.training_members("gin_temp_train", data_dir=str(data_dir))
    hours = {m.task: datasets.prepared_hours(m.info.dataset_config, "train", data_dir) for m in members}
    for m in members:  # MT3's rule: (16 s examples)^(1/T)
        assert m.rate == pytest.approx((hours[m.task] * 3600 / 16) ** 0.5)
    assert [m.rate for m in registry.training_members("gin_3to1_train")] == [3.0, 1.0]
    with pytest.raises(InputError, match=r"MIXTURES.*unknown task 'local_notes_ties_vb1_trian' \(did you mean "
                                         r"local_notes_ties_vb1_train"):
        registry.register_mixtures({"bad_train": {"local_notes_ties_vb1_trian": 1.0}})
    with pytest.raises(InputError, match="'mega_notes_ties_vb1_train' is already registered"):
        registry.register_mixtures({"mega_notes_ties_vb1_train": {LOCAL: 1.0}})
    with pytest.raises(InputError, match="rate of .* must be a number >= 0"):
        registry.register_mixtures({"neg_train": {LOCAL: -1.0}})


def test_module_import_registers_a_users_mixture(data_dir, tmp_path, monkeypatch, clean_mixtures):
    (tmp_path / "my_project_tasks.py").write_text(
        "import seqio\n"
        f"seqio.MixtureRegistry.add('module_3to1_train', [('{LOCAL}', 3.0), ('{QUARTETS}', 1.0)])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clean_mixtures.append("module_3to1_train")
    registry.import_modules(["my_project_tasks"])
    assert [m.rate for m in registry.training_members("module_3to1_train")] == [3.0, 1.0]
    sys.modules.pop("my_project_tasks")
    with pytest.raises(InputError, match="--module_import=no_such_project.tasks: no module 'no_such_project'"):
        registry.import_modules(["no_such_project.tasks"])


def test_eval_names_come_from_the_registry(data_dir, clean_mixtures):
    from mt3 import evaluation

    seqio.MixtureRegistry.add("eval_3to1_train", [(LOCAL, 3.0), (QUARTETS, 1.0)])
    clean_mixtures.append("eval_3to1_train")
    targets = evaluation.resolve_tasks(mixture="eval_3to1_train")  # each member's eval split
    assert [(t.name, t.dataset.name, t.split) for t in targets] == [
        ("local_notes_ties_vb1_validation", "local", "validation"),
        ("quartets_notes_ties_vb1_validation", "quartets", "validation")]
    (task,) = evaluation.resolve_tasks(["quartets_notes_ties_vb1_validation"])  # registered by hand: evaluates
    assert task.dataset == QUARTETS_CONFIG
    with pytest.raises(InputError, match=r"unknown eval task 'quartets_notes_ties_vb1_valdation' \(did you mean "
                                         r"quartets_notes_ties_vb1_validation"):
        evaluation.resolve_tasks(["quartets_notes_ties_vb1_valdation"])


def test_tasks_command_lists_tasks_mixtures_hours_and_shares(data_dir, capsys, clean_mixtures):
    from mt3 import cli

    seqio.MixtureRegistry.add("list_3to1_train", [(LOCAL, 3.0), (QUARTETS, 1.0)])
    clean_mixtures.append("list_3to1_train")
    assert cli.main(["tasks", "quartets", "--json", "--data-dir", str(data_dir)]) == 0
    listing = json.loads(capsys.readouterr().out)
    rows = {t["name"]: t for t in listing["tasks"]}
    assert set(rows) == {QUARTETS, "quartets_notes_ties_vb1_validation"}
    expected_hours = datasets.prepared_hours(QUARTETS_CONFIG, "train", data_dir)
    assert rows[QUARTETS]["prepared"] and rows[QUARTETS]["splits"]["train"] == pytest.approx(expected_hours)
    (mix,) = [m for m in listing["mixtures"] if m["name"] == "list_3to1_train"]
    assert [(r["task"], r["share"]) for r in mix["tasks"]] == [(LOCAL, 0.75), (QUARTETS, 0.25)]
    assert cli.main(["tasks", "list_3to1", "--data-dir", str(data_dir)]) == 0
    text = capsys.readouterr().out
    assert "list_3to1_train" in text and "0.750" in text
    assert cli.main(["tasks", "quartetz_notes"]) == 2
    assert "did you mean" in capsys.readouterr().err


@pytest.mark.slow
def test_train_refuses_a_mixture_it_cannot_index_before_writing_anything(data_dir, tmp_path, capsys, clean_mixtures):
    from mt3 import cli

    seqio.MixtureRegistry.add("test_bad_train", [("local_notes_ties_vb1_validation", 1.0), (LOCAL, 1.0)])
    clean_mixtures.append("test_bad_train")
    model_dir = tmp_path / "run"
    assert cli.main(["train", "--gin_file=gin/local_tiny.gin", "--gin.MIXTURE_OR_TASK_NAME='test_bad_train'",
                     f"--gin.DATA_DIR='{data_dir}'", "--model_dir", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "MIXTURE_OR_TASK_NAME: 'test_bad_train': task 'local_notes_ties_vb1_validation' is an inference-eval" in err
    assert len(err.strip().splitlines()) == 1 and not (model_dir / "config.gin").exists()
