"""MT3 parity of the data configuration (issue #13): which programs each dataset's tasks expect (and the error when the
prepared data carries others), where same-pitch overlaps are trimmed, and the mt3_compat task variants."""

from __future__ import annotations

import json

import note_seq
import numpy as np
import pytest
from native_fixtures import make_slakh

from mt3 import datasets, metrics_utils, note_sequences, vocabularies
from mt3.converters.base import prepare_dataset
from mt3.converters.slakh import SLAKH_CLASS_PROGRAMS
from mt3.data import track_examples
from mt3.errors import InputError

MT3_CODEC = vocabularies.build_codec(vocabularies.MT3_VOCAB_CONFIG)


def E(event_type: str, value: int) -> int:
    return MT3_CODEC.encode_event(note_sequences.event_codec.Event(event_type, value))


def task_config(name: str) -> track_examples.TokenizeConfig:
    """The TokenizeConfig a registered task tokenizes with."""
    import seqio

    from mt3 import tasks  # noqa: F401  (registers the tasks)

    task = seqio.get_mixture_or_task(name)
    (config,) = [p.keywords["config"] for p in task.preprocessors if "config" in getattr(p, "keywords", {})]
    return config


# --------------------------------------------------------------------------------------------------------------------
# same-pitch overlaps: trimmed for Slakh/Cerberus4 training only, as MT3


def test_trim_flags_follow_mt3_and_reach_the_tasks():
    trims = {c.name: c.trim_overlapping_notes for c in datasets.ALL_CONFIGS}
    assert trims == {"maestrov3": False, "slakh": True, "cerberus4": True, "guitarset": False, "urmp": False,
                     "musicnet": False, "local": True}  # local: unchanged (Slakh-like corpus, always trimmed)
    for name, config in [(c.name, c) for c in datasets.ALL_CONFIGS]:
        assert task_config(f"{name}_notes_ties_vb1_train").trim_overlapping_notes == config.trim_overlapping_notes
    assert not task_config("maestrov3_notes_train").trim_overlapping_notes  # ismir2021 piano task too


def _overlapping_piano():
    """MAESTRO-like: one pitch struck again while still held (0-1 s and 0.5-1.5 s)."""
    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    ns.notes.add(pitch=60, velocity=80, start_time=0.0, end_time=1.0)
    ns.notes.add(pitch=60, velocity=80, start_time=0.5, end_time=1.5)
    ns.total_time = 1.5
    return ns


def _targets(task: str, ns) -> list[int]:
    config = task_config(task)
    track = track_examples.tokenize_track(np.zeros(32000, np.float32), ns, config)
    ids = track_examples.segment_ids(track, 0, 256, config)
    return list(vocabularies.decode_tokens(ids, MT3_CODEC.num_classes))


def test_maestro_overlaps_are_tokenized_as_they_are():
    ns = _overlapping_piano()
    EOS = vocabularies.DECODED_EOS_ID
    got = _targets("maestrov3_notes_ties_vb1_train", ns)
    # MT3's events: onset, onset (no offset in between), offset at 1.0 s, offset at 1.5 s
    assert got == [E("tie", 0), E("program", 0), E("velocity", 1), E("pitch", 60), E("shift", 50), E("pitch", 60),
                   E("shift", 100), E("velocity", 0), E("pitch", 60), E("shift", 150), E("pitch", 60), EOS]
    # its decoder ends the first note at the second onset; the last offset has no note left to end
    result = metrics_utils.event_predictions_to_ns([{"est_tokens": np.asarray(got[:-1]), "start_time": 0.0}],
                                                   MT3_CODEC, note_sequences.NoteEncodingWithTiesSpec)
    assert sorted((n.start_time, n.end_time) for n in result["est_ns"].notes) == [(0.0, 0.5), (0.5, 1.0)]
    assert result["est_invalid_events"] == 1
    # Slakh training targets: the first note is trimmed to the second's onset first
    assert _targets("slakh_notes_ties_vb1_train", ns) == [
        E("tie", 0), E("program", 0), E("velocity", 1), E("pitch", 60), E("shift", 50), E("velocity", 0),
        E("pitch", 60), E("velocity", 1), E("pitch", 60), E("shift", 150), E("velocity", 0), E("pitch", 60), EOS]


def test_eval_targets_keep_overlaps_as_mt3():
    """MT3 trims only its training data: a Slakh inference-eval segment with a re-struck held note reads as the
    dataset has it (onset, onset, offset, offset), the training task's as trimmed (issue #17)."""
    import seqio

    from mt3 import tasks  # noqa: F401

    ns = _overlapping_piano()
    task = seqio.get_mixture_or_task("slakh_notes_ties_vb1_validation")
    (eval_config,) = [p.keywords["config"] for p in task.preprocessors if "config" in getattr(p, "keywords", {})]
    assert not eval_config.trim_overlapping_notes and task_config("slakh_notes_ties_vb1_train").trim_overlapping_notes
    track = track_examples.tokenize_track(np.zeros(32000, np.float32), ns, eval_config)
    ids = track_examples.segment_ids(track, 0, 256, eval_config)
    got = list(vocabularies.decode_tokens(ids, MT3_CODEC.num_classes))
    assert got == _targets("maestrov3_notes_ties_vb1_train", ns)  # untrimmed, as MAESTRO's
    assert got != _targets("slakh_notes_ties_vb1_train", ns)


def test_onsets_only_trims_like_mt3_under_mt3_compat():
    """Two same-pitch, same-program notes starting together: onsets-only targets keep both onsets by default; with
    mt3_compat the trim runs first, as MT3's, and the second note is gone."""
    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    ns.notes.add(pitch=60, velocity=80, start_time=0.5, end_time=1.0, program=29)
    ns.notes.add(pitch=60, velocity=80, start_time=0.5, end_time=1.5, program=29)
    ns.notes.add(pitch=64, velocity=80, start_time=0.5, end_time=1.5, program=52)
    ns.total_time = 1.5
    pitch_60 = E("pitch", 60)
    counts = {}
    for compat in (False, True):
        config = track_examples.TokenizeConfig(onsets_only=True, include_ties=False, trim_overlapping_notes=True,
                                              mt3_compat=compat)
        track = track_examples.tokenize_track(np.zeros(32000, np.float32), ns, config)
        got = list(vocabularies.decode_tokens(track_examples.segment_ids(track, 0, 256, config), MT3_CODEC.num_classes))
        counts[compat] = got.count(pitch_60)
        assert E("pitch", 64) in got
    assert counts == {False: 2, True: 1}


# --------------------------------------------------------------------------------------------------------------------
# the end-of-track tie section: compat task variants


def test_mt3compat_variants_exist_only_where_asked():
    import seqio

    assert not task_config("slakh_notes_ties_vb1_train").mt3_compat
    compat = task_config("slakh_notes_ties_vb1_mt3compat_train")
    assert compat.mt3_compat and compat.trim_overlapping_notes
    assert not task_config("maestrov3_notes_ties_vb1_mt3compat_train").trim_overlapping_notes
    mix = seqio.get_mixture_or_task("mega_notes_ties_vb1_mt3compat_train")
    assert sorted(t.name for t in mix.tasks) == sorted(
        f"{c.name}_notes_ties_vb1_mt3compat_train"
        for c in (datasets.MAESTROV3_CONFIG, datasets.GUITARSET_CONFIG, datasets.URMP_CONFIG,
                  datasets.MUSICNET_CONFIG, datasets.CERBERUS4_CONFIG, datasets.SLAKH_CONFIG))
    # a track whose last note ends at 1.0 s: a segment from 2.048 s reads `tie` here and lists the note in MT3
    ns = _overlapping_piano()
    del ns.notes[1]
    ns.total_time = 1.0
    for task, want in [("maestrov3_notes_ties_vb1_train", [E("tie", 0)]),
                       ("maestrov3_notes_ties_vb1_mt3compat_train", [E("program", 0), E("pitch", 60), E("tie", 0)])]:
        config = task_config(task)
        track = track_examples.tokenize_track(np.zeros(48000, np.float32), ns, config)
        ids = track_examples.segment_ids(track, 256, 375, config)
        assert list(vocabularies.decode_tokens(ids, MT3_CODEC.num_classes)) == want + [vocabularies.DECODED_EOS_ID]


# --------------------------------------------------------------------------------------------------------------------
# programs: MT3's Slakh classes for its Slakh task, GM programs for the local corpus


def test_program_mappings_expected_by_the_tasks():
    expected = {c.name: c.program_mapping for c in datasets.ALL_CONFIGS}
    assert expected == {"maestrov3": None, "slakh": "slakh_class", "cerberus4": "track_specs", "guitarset": None,
                        "urmp": None, "musicnet": None, "local": "full"}


def _write_manifest(root, folder: str, dataset: str, **fields) -> None:
    path = root / folder / "train.manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataset": dataset, "split": "train", "shards": [], **fields}))


def test_manifests_without_a_mapping_are_read_as_their_converter_always_wrote_them(tmp_path):
    _write_manifest(tmp_path, "local", "slakh")  # the local corpus prepared before manifests recorded the mapping
    _write_manifest(tmp_path, "cerberus4", "cerberus4")
    _write_manifest(tmp_path, "slakh", "slakh")
    datasets.check_program_mapping(datasets.LOCAL_CONFIG, "train", data_dir=tmp_path)
    datasets.check_program_mapping(datasets.CERBERUS4_CONFIG, "train", data_dir=tmp_path)
    datasets.check_program_mapping(datasets.MAESTROV3_CONFIG, "train", data_dir=tmp_path)  # not checked: no file
    with pytest.raises(InputError, match="prepared with program_mapping=full, but the 'slakh' tasks expect "
                                         "program_mapping=slakh_class") as info:
        datasets.check_program_mapping(datasets.SLAKH_CONFIG, "train", data_dir=tmp_path)
    assert info.value.path == str(tmp_path / "slakh" / "train.manifest.json")
    assert "--option program_mapping=slakh_class" in str(info.value)
    _write_manifest(tmp_path, "local", "slakh", program_mapping="slakh_class")
    with pytest.raises(InputError, match="'local' tasks expect program_mapping=full"):
        datasets.check_program_mapping(datasets.LOCAL_CONFIG, "train", data_dir=tmp_path)


@pytest.fixture(scope="module")
def slakh_prepared(tmp_path_factory):
    """A Slakh-layout fixture prepared twice: as `mt3 prepare-data slakh` does by default, and with GM programs."""
    root, _ = make_slakh(tmp_path_factory.mktemp("slakh"))
    default = tmp_path_factory.mktemp("default")
    prepare_dataset("slakh", root, default / "slakh", splits=["train"])
    full = tmp_path_factory.mktemp("full")
    prepare_dataset("slakh", root, full / "slakh", splits=["train"], options={"program_mapping": "full"})
    return default, full


def test_data_stats_shows_slakh_class_programs_under_mt3s_task(slakh_prepared, capsys):
    from mt3 import cli

    default, _ = slakh_prepared
    assert cli.main(["data-stats", "slakh_notes_ties_vb1_train", "--num", "6", "--json", "--data-dir",
                     str(default)]) == 0
    stats = json.loads(capsys.readouterr().out)
    seen = {int(p) for p in stats["programs_seen"]}
    # Track00001's stems: piano 0, distorted guitar 30 -> 29, electric bass 33, acoustic guitar 25 -> 24
    assert seen <= {0, 29, 33, 24} and {29, 24} <= seen
    assert seen <= set(SLAKH_CLASS_PROGRAMS.values())
    assert stats["drum_events"] > 0


def test_training_mt3s_slakh_task_on_gm_programs_is_a_clear_error(slakh_prepared, capsys):
    from mt3 import cli

    _, full = slakh_prepared
    assert cli.main(["data-stats", "slakh_notes_ties_vb1_train", "--num", "2", "--data-dir", str(full)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.manifest.json: prepared with program_mapping=full" in err[0]
