"""Tests for mt3.training.run_records: what each start of a run writes into the model directory."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from mt3.training import run_records


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory, music21_sequences):
    """A real prepared dataset (records + manifests) from a real piece."""
    from data_fixtures import sub_sequence, write_prepared_dataset

    root = tmp_path_factory.mktemp("prepared")
    chorale = music21_sequences["bach_chorale"]
    write_prepared_dataset(root, "local", {"train": [("chorale_0", sub_sequence(chorale, 0.0, 4.0))],
                                           "validation": [("chorale_1", sub_sequence(chorale, 4.0, 8.0))]})
    return root


def test_data_dir_from_the_environment_is_recorded_resolved_with_manifest_hashes(prepared_root, monkeypatch):
    monkeypatch.setenv("MT3_DATA_DIR", str(prepared_root))
    facts = run_records.data_facts(data_dir=None, source="seqio", mixture_or_task_name="local_mix_notes_ties_vb1_train")
    assert facts["DATA_DIR"] is None and facts["resolved"] == str(prepared_root) == facts["MT3_DATA_DIR"]
    expected = {f"local/{s}.manifest.json": hashlib.sha256((prepared_root / "local" / f"{s}.manifest.json")
                                                           .read_bytes()).hexdigest() for s in ("train", "validation")}
    assert facts["manifests"] == expected
    # an explicit DATA_DIR wins over the environment; synthetic data reads no manifests
    other = run_records.data_facts(data_dir=str(prepared_root / "local"), source="synthetic", mixture_or_task_name=None)
    assert other["resolved"] == str(prepared_root / "local") and other["manifests"] == {}


def test_each_start_writes_a_record_and_a_config_copy_never_overwritten(tmp_path, prepared_root, monkeypatch):
    monkeypatch.setenv("MT3_DATA_DIR", str(prepared_root))
    monkeypatch.setenv("MT3_SECRET_TOKEN", "do-not-record")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "config.gin").write_text("BATCH_SIZE = 8\n")
    data = run_records.data_facts(data_dir=None, source="seqio", mixture_or_task_name="local_mix_notes_ties_vb1_train")
    recorder = run_records.RunRecorder(model_dir, argv=["mt3", "train", "--model_dir", str(model_dir)], data=data)
    first = recorder.start(0)
    (model_dir / "config.gin").write_text("BATCH_SIZE = 4\n")
    again = run_records.RunRecorder(model_dir, argv=["mt3", "train"], allow_config_change=True, data=data).start(0)
    assert (first, again) == (str(model_dir / "runs" / "0.json"), str(model_dir / "runs" / "0.2.json"))
    assert (model_dir / "runs" / "0.config.gin").read_text() == "BATCH_SIZE = 8\n"
    assert (model_dir / "runs" / "0.2.config.gin").read_text() == "BATCH_SIZE = 4\n"

    record = json.loads((model_dir / "runs" / "0.json").read_text())
    assert record["command"] == ["mt3", "train", "--model_dir", str(model_dir)]
    assert record["start_step"] == 0 and record["config_file"] == "runs/0.config.gin"
    assert record["allow_config_change"] is False
    assert record["devices"]["process_count"] == 1 and record["devices"]["platform"] == "cpu"
    assert record["devices"]["device_count"] >= 1
    assert record["data"]["resolved"] == str(prepared_root) and len(record["data"]["manifests"]) == 2
    assert record["packages"]["jax"] and record["packages"]["gin-config"]
    assert record["environment"]["JAX_NUM_PROCESSES"] == "1" and "MT3_SECRET_TOKEN" not in record["environment"]
    assert record["git"] is None or len(record["git"]["commit"]) == 40
    assert [r["start_step"] for r in run_records.list_records(model_dir)] == [0, 0]


def test_git_state_names_the_commit_and_tracked_changes_only(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    clean = run_records.git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "untracked_data.bin").write_bytes(b"\0")
    assert run_records.git_state(tmp_path)["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert run_records.git_state(tmp_path) == {**clean, "dirty": True, "changed": ["a.py"]}
    assert run_records.git_state(tmp_path / "not_a_repo") is None


def test_the_operative_config_is_a_tensorboard_text_summary(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    recorder = run_records.RunRecorder(tmp_path)
    recorder.start_step = 170
    recorder.operative_config_summary("BATCH_SIZE = 8\nLEARNING_RATE = 0.001")
    events = event_accumulator.EventAccumulator(str(tmp_path / "train"), size_guidance={"tensors": 0})
    events.Reload()
    [tag] = [t for t in events.Tags()["tensors"] if "operative_config" in t]
    [event] = events.Tensors(tag)
    assert event.step == 170
    assert event.tensor_proto.string_val[0].decode() == "    BATCH_SIZE = 8\n    LEARNING_RATE = 0.001"


def test_a_url_model_dir_and_data_root_are_recorded_through_fsspec(tmp_path, prepared_root):
    """file:// stands for gs:// here (the same mt3.paths code path; tests/test_paths.py runs a GCS emulator)."""
    pytest.importorskip("mt3.paths")
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "config.gin").write_text("BATCH_SIZE = 8\n")
    url = f"file://{model_dir}"
    assert run_records.manifest_hashes(f"file://{prepared_root}") == run_records.manifest_hashes(str(prepared_root))
    recorder = run_records.RunRecorder(url, argv=["mt3"], data={})
    assert recorder.start(3) == f"{url}/runs/3.json" and recorder.start(3) == f"{url}/runs/3.2.json"
    assert (model_dir / "runs" / "3.config.gin").read_text() == "BATCH_SIZE = 8\n"
    recorder.operative_config_summary("A = 1")
    assert list((model_dir / "train").glob("events.out.tfevents.*"))
