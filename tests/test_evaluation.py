"""Tests for mt3.evaluation and `mt3 eval`: task names, the end-to-end eval on a
trained tiny checkpoint (reports, plots, metrics equal to `mt3 score` on `mt3 transcribe`'s MIDI), the checkpoint sweep
and the trainer hook."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from helpers import CHECKPOINT_PERIOD, TRAIN_STEPS, build_tiny_model
from tb_events import read_scalars

from mt3 import datasets, evaluation
from mt3.errors import InputError

TASK = "local_notes_ties_vb1_test"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory)


def test_resolve_tasks():
    (task,) = evaluation.resolve_tasks([TASK])
    assert (task.dataset, task.split) == (datasets.LOCAL_CONFIG, "test")
    mega = evaluation.resolve_tasks(mixture="mega_notes_ties_vb1_eval")
    assert len(mega) == 6 and {t.split for t in mega} == {"validation"}
    assert [t.name for t in evaluation.resolve_tasks(mixture="slakh_notes_ties_vb1_eval")] == [
        "slakh_notes_ties_vb1_validation", "slakh_notes_ties_vb1_test"]
    assert evaluation.resolve_tasks(["maestrov3_notes_test"])[0].dataset == datasets.MAESTROV3_CONFIG  # ismir2021
    assert evaluation.resolve_tasks([TASK], split="train")[0].name == "local_notes_ties_vb1_train"
    with pytest.raises(InputError, match="unknown eval task 'nope_test'"):
        evaluation.resolve_tasks(["nope_test"])
    with pytest.raises(InputError, match=r"'local_notes_ties_vb1_tset' \(did you mean local_notes_ties_vb1_test"):
        evaluation.resolve_tasks(["local_notes_ties_vb1_tset"])
    with pytest.raises(InputError, match="no split 'test'"):
        evaluation.resolve_tasks(["guitarset_notes_ties_vb1_validation"], split="test")
    with pytest.raises(InputError, match="no eval tasks"):
        evaluation.resolve_tasks()


def _check_metric_values(obj, path=""):
    """Every F1/precision/recall in a results tree is in [0, 1] or None."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key.endswith(("_f1", "_precision", "_recall")) or "_f1_" in key:
                assert value is None or 0.0 <= value <= 1.0, f"{path}/{key} = {value}"
            _check_metric_values(value, f"{path}/{key}")
    elif isinstance(obj, list):
        for item in obj:
            _check_metric_values(item, path)


def test_eval_end_to_end_equals_score_on_transcribed_midi(tiny, tmp_path, capsys):
    from mt3 import cli

    out = tmp_path / "eval"
    assert cli.main(["eval", "--checkpoint", str(tiny.model_dir), "--gin_file=gin/eval.gin", "--tasks", TASK,
                     "--out", str(out), "--no-progress", *tiny.gin_flags]) == 0
    assert TASK in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == TRAIN_STEPS
    task = results["tasks"][TASK]
    assert task["num_tracks"] == 2 and [t["id"] for t in task["tracks"]] == ["Track00003", "Track00004"]
    _check_metric_values(results)
    assert task["metrics"]["onset_f1"] > 0.0  # the tiny model learned something: not a vacuous comparison
    md = (out / "results.md").read_text()
    assert f"| {TASK} | local | 2 |" in md and "per instrument class" in md and "Reed" in md
    for track in task["tracks"]:
        png = out / track["plot"]
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
        assert (out / track["midi"]).exists()

    # mt3 transcribe on the same audio + mt3 score against the reference MIDI: the same numbers, key for key
    midi_dir = tmp_path / "transcribed"
    assert cli.main(["transcribe", str(tiny.wav(3)), str(tiny.wav(4)), "-o", str(midi_dir), "--no-progress",
                     "--checkpoint", str(tiny.model_dir), *tiny.gin_flags]) == 0
    capsys.readouterr()
    for i, track in zip((3, 4), task["tracks"], strict=True):
        est = midi_dir / f"track{i}.mid"
        assert est.read_bytes() == (out / track["midi"]).read_bytes()
        assert cli.main(["score", str(tiny.reference_midi(i)), str(est), "--json"]) == 0
        scored = json.loads(capsys.readouterr().out)
        for key, value in track["metrics"].items():
            expected = scored[key]
            expected = None if isinstance(expected, float) and math.isnan(expected) else expected
            assert value == expected, (i, key, value, expected)
        assert track["instrument_classes"] == scored["instrument_classes"]
    # the dataset row is MT3's mean over tracks
    for key in ("onset_f1", "onset_offset_f1", "frame_f1"):
        values = [t["metrics"][key] for t in task["tracks"] if t["metrics"][key] is not None]
        assert task["metrics"][key] == pytest.approx(float(np.mean(values)))


def test_all_checkpoints_sweep(tiny, tmp_path):
    out = tmp_path / "sweep"
    summary = evaluation.run_eval(tiny.model_dir, tasks=[TASK], out_dir=out, all_checkpoints=True, max_tracks=1,
                                  gin_bindings=tiny.bindings, progress=False)
    assert summary["steps"] == [CHECKPOINT_PERIOD, TRAIN_STEPS]
    written = json.loads((out / "results.json").read_text())
    assert written["steps"] == [CHECKPOINT_PERIOD, TRAIN_STEPS]
    assert len(written["curves"][TASK]["onset_f1"]) == 2
    for step in written["steps"]:
        per_step = json.loads((out / f"step_{step}" / "results.json").read_text())
        assert per_step["step"] == step and per_step["tasks"][TASK]["num_tracks"] == 1
    assert (out / f"curves_{TASK}.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 160 |" in (out / "results.md").read_text()
    # TensorBoard: each task's headline metrics at each checkpoint's step, the numbers of its results.json
    scalars = read_scalars(out)
    assert [step for step, _ in scalars[f"{TASK}/onset_f1"]] == [CHECKPOINT_PERIOD, TRAIN_STEPS]
    for step, value in scalars[f"{TASK}/onset_offset_f1"]:
        metrics = json.loads((out / f"step_{step}" / "results.json").read_text())["tasks"][TASK]["metrics"]
        assert value == pytest.approx(metrics["onset_offset_f1"], abs=1e-6)


def test_default_out_is_beside_training_summaries_with_tensorboard_scalars(tiny, tmp_path, capsys):
    """No --out: reports in MODEL_DIR/infer_eval/step_N/ (where training's INFER_EVAL_TASKS puts them), scalars in
    MODEL_DIR/infer_eval, nothing in MODEL_DIR/eval (training's teacher-forced summaries)."""
    import shutil

    from mt3 import cli

    model_dir = tmp_path / "model"
    shutil.copytree(tiny.model_dir, model_dir)
    assert cli.main(["eval", "--checkpoint", str(model_dir), "--tasks", TASK, "--max-tracks", "1", "--no-progress",
                     *tiny.gin_flags]) == 0
    printed = capsys.readouterr().out
    results = json.loads((model_dir / "infer_eval" / f"step_{TRAIN_STEPS}" / "results.json").read_text())
    assert results["step"] == TRAIN_STEPS and results["tasks"][TASK]["num_tracks"] == 1
    assert not (model_dir / "eval").exists()
    scalars = read_scalars(model_dir / "infer_eval")
    onset = results["tasks"][TASK]["metrics"]["onset_f1"]
    assert scalars[f"{TASK}/onset_f1"] == [(TRAIN_STEPS, pytest.approx(onset, abs=1e-6))]
    assert f"reports in {model_dir / 'infer_eval' / f'step_{TRAIN_STEPS}'}" in printed
    assert f"in {model_dir / 'infer_eval'}" in printed


def test_eval_scalars_reach_a_url_logdir(tmp_path):
    """A URL --out (here file://; gs:// goes through the same fsspec upload): the events file is written locally and
    uploaded after each step and at close, so the bucket holds every step's scalars."""
    scalars = evaluation.EvalScalars(f"file://{tmp_path}/runs/m/infer_eval")
    scalars.write(100, {f"{TASK}/onset_f1": 0.25})
    scalars.write(200, {f"{TASK}/onset_f1": 0.5, f"{TASK}/frame_f1": 0.75})
    scalars.close()
    assert read_scalars(tmp_path / "runs" / "m" / "infer_eval") == {
        f"{TASK}/onset_f1": [(100, 0.25), (200, 0.5)], f"{TASK}/frame_f1": [(200, 0.75)]}


def test_trainer_hook(tiny, tmp_path):
    from mt3 import model_loading

    im = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
    fn = evaluation.make_infer_eval_fn(im.model, tasks=[TASK], spec=im.spec, infer_config=im.config,
                                       eval_config=evaluation.EvalConfig(max_tracks=1, num_plots=1,
                                                                         data_dir=str(tiny.data_dir)),
                                       out_dir=tmp_path / "hook")
    metrics = fn(TRAIN_STEPS, im.params)
    assert f"{TASK}/onset_f1" in metrics and all(0.0 <= v <= 1.0 for v in metrics.values())
    assert (tmp_path / "hook" / f"step_{TRAIN_STEPS}" / "results.json").exists()
    assert fn(TRAIN_STEPS + 1, im.params) == metrics  # the same params again: the same numbers


def test_missing_split_and_bad_checkpoint_are_input_errors(tiny, tmp_path):
    with pytest.raises(InputError, match="not prepared"):
        evaluation.run_eval(tiny.model_dir, tasks=["slakh_notes_ties_vb1_test"], out_dir=tmp_path,
                            gin_bindings=tiny.bindings, progress=False)
    with pytest.raises(InputError, match="checkpoint directory not found"):
        evaluation.run_eval(tmp_path / "nope", tasks=[TASK])


@pytest.mark.slow
def test_infer_eval_during_training_from_gin(tiny, tmp_path, capsys):
    """`INFER_EVAL_TASKS` in gin makes `mt3 train` run full-track eval every EVAL_PERIOD, into MODEL_DIR/infer_eval;
    its metrics are printed and logged, and the losses shown are per token (`loss_per_token`, `loss_sum`)."""
    from mt3 import gin_utils
    from mt3.training import train

    bindings = ["network.T5Config.emb_dim = 32", "network.T5Config.num_heads = 2", "network.T5Config.head_dim = 8",
                "network.T5Config.mlp_dim = 32", "network.T5Config.num_encoder_layers = 1",
                "network.T5Config.num_decoder_layers = 1", "TRAIN_STEPS = 2", "BATCH_SIZE = 2", "EVAL_PERIOD = 2",
                "EVAL_STEPS = 1", "TASK_FEATURE_LENGTHS = {'inputs': 256, 'targets': 128}", "MAX_TRAIN_SECONDS = None",
                f"DATA_DIR = '{tiny.data_dir}'", f"INFER_EVAL_TASKS = ['{TASK}']",
                "inference.InferenceConfig.max_decode_len = 16", "inference.InferenceConfig.batch_size = 2"]
    flags = gin_utils.parse_gin_flags(["local_tiny.gin"], bindings, model_dir=tmp_path / "model")
    train.train_from_gin(flags)
    results = json.loads((tmp_path / "model" / "infer_eval" / "step_2" / "results.json").read_text())
    assert results["tasks"][TASK]["num_tracks"] == 2
    metrics = results["tasks"][TASK]["metrics"]
    printed = capsys.readouterr().out
    assert f"step 2: infer_eval {TASK}: onset_f1={metrics['onset_f1']:.4g}" in printed
    assert read_scalars(tmp_path / "model" / "infer_eval")[f"{TASK}/onset_f1"] == [
        (2, pytest.approx(metrics["onset_f1"], abs=1e-6))]
    # one loss definition everywhere it is shown: per token, the sum only as loss_sum
    train_scalars, eval_scalars = (read_scalars(tmp_path / "model" / kind) for kind in ("train", "eval"))
    for scalars in (train_scalars, eval_scalars):
        assert "loss" not in scalars and {"loss_per_token", "loss_sum", "num_tokens"} <= set(scalars)
        (_, per_token), = scalars["loss_per_token"]
        (_, total), = scalars["loss_sum"]
        (_, tokens), = scalars["num_tokens"]
        assert per_token == pytest.approx(total / tokens, rel=1e-5) and 0.5 < per_token < 20
    (_, eval_loss), = eval_scalars["loss_per_token"]
    match = re.search(r"step 2: eval .*\bloss_per_token=(\S+?),", printed)
    assert match and float(match[1]) == pytest.approx(eval_loss, rel=1e-3), printed
