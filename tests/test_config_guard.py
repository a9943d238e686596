"""Tests for mt3.training.config_guard: a resume with another model, vocabulary, task or batch size is refused in one
line naming each binding's old and new value; learning-rate and eval changes pass and are recorded."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from helpers import MT3, REPO, TINY_RUN_BINDINGS, subprocess_env

from mt3.errors import InputError
from mt3.training import config_guard

OLD = """
# gin file: gin/train.gin
BATCH_SIZE = 8
LEARNING_RATE = 0.001
EVAL_PERIOD = 100
MIXTURE_OR_TASK_NAME = 'local_mix_notes_ties_vb1_train'
NUM_EMBEDDINGS = 1536
MODEL_DIR = '/runs/a'
MODEL = @models.ContinuousInputsEncoderDecoderModel()
T5Config.emb_dim = 512
T5Config.vocab_size = %NUM_EMBEDDINGS
train/DatasetConfig.batch_size = %BATCH_SIZE
train/DatasetConfig.mixture_or_task_name = %MIXTURE_OR_TASK_NAME
train/DatasetConfig.task_feature_lengths = {'inputs': 256, 'targets': 1024}
train_eval/DatasetConfig.batch_size = 16
OptimizerConfig.base_learning_rate = %LEARNING_RATE
TrainLoopConfig.eval_period = %EVAL_PERIOD
train.model = %MODEL
"""


def _changes(new_text: str, **kwargs) -> list[config_guard.Change]:
    return config_guard.diff(config_guard.parse_bindings(OLD), config_guard.parse_bindings(new_text), **kwargs)


def test_the_same_config_elsewhere_is_no_change():
    assert _changes(OLD.replace("'/runs/a'", "'gs://bucket/runs/a'")) == []


def test_guarded_changes_are_named_by_macro_or_binding_with_both_values():
    new = (OLD.replace("BATCH_SIZE = 8", "BATCH_SIZE = 4").replace("T5Config.emb_dim = 512", "T5Config.emb_dim = 256")
           .replace("'targets': 1024", "'targets': 512").replace("NUM_EMBEDDINGS = 1536", "NUM_EMBEDDINGS = 1664")
           .replace("LEARNING_RATE = 0.001", "LEARNING_RATE = 0.01").replace("batch_size = 16", "batch_size = 32"))
    described = {c.name: (c.describe(), c.guarded) for c in _changes(new)}
    assert described == {
        "BATCH_SIZE": ("BATCH_SIZE 8 -> 4", True),
        "NUM_EMBEDDINGS": ("NUM_EMBEDDINGS 1536 -> 1664", True),
        "T5Config.emb_dim": ("T5Config.emb_dim 512 -> 256", True),
        "train/DatasetConfig.task_feature_lengths": (
            "train/DatasetConfig.task_feature_lengths {'inputs': 256, 'targets': 1024} -> "
            "{'inputs': 256, 'targets': 512}", True),
        "LEARNING_RATE": ("LEARNING_RATE 0.001 -> 0.01", False),
        "train_eval/DatasetConfig.batch_size": ("train_eval/DatasetConfig.batch_size 16 -> 32", False),
    }
    # guarded first, so the refusal line leads with them
    assert [c.guarded for c in _changes(new)] == [True] * 4 + [False] * 2


def test_activation_dtype_and_dropout_may_change_with_the_model_guarded():
    base = OLD + "T5Config.dtype = 'float32'\nT5Config.dropout_rate = 0.1\n"
    new = base.replace("'float32'", "'bfloat16'").replace("= 0.1", "= 0.0")
    changes = config_guard.diff(config_guard.parse_bindings(base), config_guard.parse_bindings(new))
    assert [(c.describe(), c.guarded) for c in changes] == [("T5Config.dropout_rate 0.1 -> 0.0", False),
                                                            ("T5Config.dtype 'float32' -> 'bfloat16'", False)]


def test_a_literal_replacing_a_macro_is_compared_by_value():
    same = OLD.replace("train/DatasetConfig.batch_size = %BATCH_SIZE", "train/DatasetConfig.batch_size = 8")
    assert _changes(same) == []
    other = OLD.replace("train/DatasetConfig.batch_size = %BATCH_SIZE", "train/DatasetConfig.batch_size = 2")
    assert [c.describe() for c in _changes(other)] == ["train/DatasetConfig.batch_size 8 -> 2"]


def test_a_binding_added_with_its_default_value_is_no_change():
    new = OLD + "train/DatasetConfig.pipeline = 'indexed'\n"
    # a binding the previous config did not have is reported, not refused: there is no old value to contradict
    assert [(c.describe(), c.guarded) for c in _changes(new)] == [
        ("train/DatasetConfig.pipeline (unset) -> 'indexed'", False)]
    assert _changes(new, default=lambda key: "indexed" if key.endswith(".pipeline") else None) == []
    dropped = OLD.replace("T5Config.emb_dim = 512\n", "")
    assert [(c.describe(), c.guarded) for c in _changes(dropped)] == [("T5Config.emb_dim 512 -> (unset)", True)]


def test_check_resume_refuses_in_one_line_unless_allowed(tmp_path):
    (tmp_path / "config.gin").write_text(OLD)
    new = OLD.replace("BATCH_SIZE = 8", "BATCH_SIZE = 4").replace("MIXTURE_OR_TASK_NAME = 'local_mix",
                                                                  "MIXTURE_OR_TASK_NAME = 'slakh")
    with pytest.raises(InputError) as err:
        config_guard.check_resume(tmp_path, new, resuming=True, allow=False, note=lambda line: None)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "config.gin"))
    assert "BATCH_SIZE 8 -> 4" in message and "--allow_config_change" in message
    assert "MIXTURE_OR_TASK_NAME 'local_mix_notes_ties_vb1_train' -> 'slakh_notes_ties_vb1_train'" in message

    notes = []
    changes = config_guard.check_resume(tmp_path, new, resuming=True, allow=True, note=notes.append)
    assert [c.name for c in changes] == ["BATCH_SIZE", "MIXTURE_OR_TASK_NAME"]
    assert len(notes) == 1 and notes[0].startswith("warning: resuming with a changed BATCH_SIZE 8 -> 4")
    # not a resume (no checkpoint): any change is fine and nothing is reported
    assert config_guard.check_resume(tmp_path, new, resuming=False, allow=False, note=notes.append) == []
    assert config_guard.check_resume(tmp_path / "fresh", new, resuming=True, allow=False) == []


@pytest.mark.slow
def test_resume_refuses_a_new_batch_size_and_lets_the_learning_rate_change(tmp_path):
    """The issue's scenario on the real CLI: train 2 steps at batch 8; `--gin.BATCH_SIZE=4` is refused (exit 2, one
    line, nothing written); a new LEARNING_RATE resumes; `--allow_config_change` takes batch 4; each start recorded."""
    model_dir = tmp_path / "run"
    base = ["train", "--gin_file=gin/train.gin", f"--model_dir={model_dir}",
            *[f"--gin.{b.replace(' = ', '=')}" for b in TINY_RUN_BINDINGS], "--gin.CHECKPOINT_PERIOD=100"]

    def mt3(*extra):
        return subprocess.run(MT3 + base + list(extra), cwd=REPO, env=subprocess_env(), capture_output=True,
                              text=True, timeout=400)

    first = mt3("--gin.TRAIN_STEPS=2")
    assert first.returncode == 0, first.stderr[-3000:]
    config_before = (model_dir / "config.gin").read_text()

    refused = mt3("--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=4")
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "BATCH_SIZE 8 -> 4" in errors[0] and "--allow_config_change" in errors[0]
    assert "restored checkpoint" not in refused.stdout  # refused before any work
    assert (model_dir / "config.gin").read_text() == config_before
    assert sorted(p.name for p in (model_dir / "runs").iterdir()) == ["0.config.gin", "0.json"]

    lr = mt3("--gin.TRAIN_STEPS=3", "--gin.LEARNING_RATE=0.01", "--gin.EVAL_PERIOD=3")
    assert lr.returncode == 0, lr.stderr[-3000:]
    assert "config changed since the last start: " in lr.stdout and "LEARNING_RATE 0.001 -> 0.01" in lr.stdout
    assert "stopped at step 3 (total_steps)" in lr.stdout

    allowed = mt3("--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=4", "--gin.LEARNING_RATE=0.01", "--allow_config_change")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "warning: resuming with a changed BATCH_SIZE 8 -> 4 (--allow_config_change)" in allowed.stdout
    assert "stopped at step 4 (total_steps)" in allowed.stdout

    runs = model_dir / "runs"
    assert sorted(p.name for p in runs.iterdir()) == [
        "0.config.gin", "0.json", "2.config.gin", "2.json", "3.config.gin", "3.json"]
    records = {s: json.loads((runs / f"{s}.json").read_text()) for s in (0, 2, 3)}
    assert [records[s]["start_step"] for s in (0, 2, 3)] == [0, 2, 3]
    assert records[2]["allow_config_change"] is False and records[3]["allow_config_change"] is True
    lr_changes = {c["name"]: (c["old"], c["new"], c["guarded"]) for c in records[2]["config_changes"]}
    assert lr_changes["LEARNING_RATE"] == ("0.001", "0.01", False)
    assert {c["name"]: (c["old"], c["new"], c["guarded"]) for c in records[3]["config_changes"]}["BATCH_SIZE"] == (
        "8", "4", True)
    # one config per start, never overwritten; config.gin is the newest start's
    assert (runs / "0.config.gin").read_text() == config_before
    assert "LEARNING_RATE = 0.01" in (runs / "2.config.gin").read_text()
    assert (runs / "3.config.gin").read_text() == (model_dir / "config.gin").read_text()
    assert "BATCH_SIZE = 4" in (model_dir / "config.gin").read_text()


def test_turning_the_auxiliary_heads_on_is_guarded_but_reweighting_them_is_not():
    base = OLD + ("AUX_FRAME_LOSS_WEIGHT = 0.0\n"
                  "ContinuousInputsEncoderDecoderModel.aux_frame_loss_weight = %AUX_FRAME_LOSS_WEIGHT\n")
    on = config_guard.parse_bindings(base.replace("WEIGHT = 0.0", "WEIGHT = 10.0"))
    assert [(c.describe(), c.guarded) for c in config_guard.diff(config_guard.parse_bindings(base), on)] == [
        ("AUX_FRAME_LOSS_WEIGHT 0.0 -> 10.0", True)]
    less = config_guard.parse_bindings(base.replace("WEIGHT = 0.0", "WEIGHT = 5.0"))
    assert [(c.describe(), c.guarded) for c in config_guard.diff(on, less)] == [
        ("AUX_FRAME_LOSS_WEIGHT 10.0 -> 5.0", False)]


def test_a_derived_value_equal_to_the_old_literal_is_no_change():
    new = OLD.replace("NUM_EMBEDDINGS = 1536", "NUM_EMBEDDINGS = @vocabularies.num_embeddings()")
    assert [c.describe() for c in _changes(new)] == ["NUM_EMBEDDINGS 1536 -> @vocabularies.num_embeddings()"]
    assert _changes(new, evaluate=lambda reference: 1536) == []
    assert [c.describe() for c in _changes(new, evaluate=lambda reference: 1664)] == ["NUM_EMBEDDINGS 1536 -> 1664"]


def test_the_long_runs_checkpoint_resumes_under_its_current_recipe():
    """The committed resume tarball's config.gin (written by the mt3 that started or resumed the run) against
    scripts/train_local_cpu.sh's recipe as parsed today: gin refactors (a derived NUM_EMBEDDINGS, new dataset
    fields) are no guarded change; a real vocabulary change still is."""
    import tarfile

    import gin

    from mt3 import gin_utils

    with tarfile.open(REPO / "training" / "local_cpu" / "resume.tar.gz") as tar:
        old = tar.extractfile("config.gin").read().decode()
    recipe = re.search(r"^RECIPE=(\S+)", (REPO / "scripts" / "train_local_cpu.sh").read_text(), re.M).group(1)

    def guarded(*bindings: str) -> list[str]:
        gin_utils.parse_gin_flags([REPO / recipe], list(bindings), model_dir="runs/local_cpu")
        changes = config_guard.diff(config_guard.parse_bindings(old), config_guard.parse_bindings(gin.config_str()),
                                    config_guard.registered_default, config_guard.evaluate_reference)
        return [c.describe() for c in changes if c.guarded]

    try:
        assert guarded() == []
        # An older config.gin holds the literal 1536, which the new vocabulary's 1664 changes; one written since the
        # refactor holds the same derived reference on both sides, and the velocity bins alone name the change.
        embeddings = ["NUM_EMBEDDINGS 1536 -> 1664"] if "NUM_EMBEDDINGS = 1536" in old else []
        assert guarded("NUM_VELOCITY_BINS = 127") == [*embeddings, "NUM_VELOCITY_BINS 1 -> 127"]
    finally:
        gin.clear_config()
