"""Tests for mt3.training.train_eval's pure parts: the loss shown anywhere is the loss per target token (never a bare
summed `loss`), eval batches pool by tokens, inference-eval lines group by task, and TensorBoard scalars land as
event files under MODEL_DIR/<kind>. The evals themselves run in tests/test_trainer.py's training runs."""

from __future__ import annotations

import pytest

from mt3.training import train_eval


def test_shown_metrics_name_token_losses_per_token_and_sum():
    shown = train_eval.shown_metrics({"loss": 30.0, "z_loss": 3.0, "cross_ent_loss": 27.0, "num_tokens": 10.0,
                                      "accuracy": 0.5})
    assert "loss" not in shown and "z_loss" not in shown
    assert shown["loss_per_token"] == pytest.approx(3.0) and shown["loss_sum"] == 30.0
    assert shown["cross_ent_loss_per_token"] == pytest.approx(2.7) and shown["accuracy"] == 0.5
    assert "loss_per_token" not in train_eval.shown_metrics({"loss": 1.0, "num_tokens": 0.0})


def test_eval_batches_pool_by_tokens():
    """A batch of 30 tokens weighs three times one of 10: accuracy and loss per token over all tokens."""
    pooled = train_eval.mean_eval_metrics([{"loss": 10.0, "accuracy": 1.0, "num_tokens": 10.0},
                                          {"loss": 90.0, "accuracy": 0.0, "num_tokens": 30.0}])
    assert pooled["accuracy"] == pytest.approx(0.25)
    assert pooled["loss_per_token"] == pytest.approx(2.5)
    assert train_eval.mean_eval_metrics([]) == {}


def test_infer_eval_lines_group_by_task():
    lines = train_eval.infer_eval_lines(7, {"slakh/onset_f1": 0.5, "slakh/offset_f1": 0.25, "maestro/onset_f1": 0.75})
    assert lines == ["step 7: infer_eval slakh: onset_f1=0.5, offset_f1=0.25",
                     "step 7: infer_eval maestro: onset_f1=0.75"]
    assert train_eval.infer_eval_lines(3, {"onset_f1": 0.5}) == ["step 3: infer_eval onset_f1=0.5"]


def test_summaries_write_event_files_per_kind_only_when_enabled(tmp_path):
    summaries = train_eval.Summaries(tmp_path / "run", enabled=True)
    summaries.write("train", 5, {"loss_per_token": 1.5})
    summaries.write("eval", 5, {"accuracy": 0.5})
    summaries.close()
    for kind in ("train", "eval"):
        files = list((tmp_path / "run" / kind).glob("events.out.tfevents.*"))
        assert files and files[0].stat().st_size > 0
    silent = train_eval.Summaries(tmp_path / "other", enabled=False)
    silent.write("train", 1, {"loss_per_token": 1.0})
    silent.close()
    assert not (tmp_path / "other").exists()
