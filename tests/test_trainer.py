"""Tests for mt3.training.trainer and mt3.training.train: MT3's Adafactor, LR schedules, microbatching, pure steps,
the `mt3 train` loop.

Also home of the tiny gin configuration the other trainer-side tests (checkpoints, partitioning, multi-host) reuse:
the real `network.Transformer` shrunk to a few thousand parameters, fed synthetic batches.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import MT3, REPO, TINY_RUN_BINDINGS, subprocess_env, synthetic_batch, tiny_model

from mt3.models import models, network
from mt3.training import partitioning, train, trainer

# ---------------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------------------------

def test_default_optimizer_is_optax_adafactor_with_mt3_settings():
    """Our chain must equal optax.adafactor with MT3's settings (REFERENCE §5.3) update for update."""
    rng = np.random.default_rng(0)
    params = {"big": jnp.asarray(rng.normal(size=(256, 130)), jnp.float32),
              "small": jnp.asarray(rng.normal(size=(7,)), jnp.float32)}
    ours = trainer.OptimizerConfig().make()
    reference = optax.adafactor(learning_rate=1e-3, decay_rate=0.8, decay_offset=0, multiply_by_parameter_scale=True,
                                clipping_threshold=1.0, momentum=None, eps=1e-30, factored=True,
                                min_dim_size_to_factor=128)
    s1, s2 = ours.init(params), reference.init(params)
    for step in range(3):
        grads = jax.tree_util.tree_map(lambda p, s=step: jnp.sin(p * (s + 1)), params)
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = reference.update(grads, s2, params)
        for a, b in zip(jax.tree_util.tree_leaves(u1), jax.tree_util.tree_leaves(u2), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
        params = optax.apply_updates(params, u1)
    # factored second moments for the 256x130 kernel: a row and a column vector, not a full matrix
    factored = [leaf.shape for leaf in jax.tree_util.tree_leaves(s1) if leaf.ndim == 1 and leaf.shape[0] in (256, 130)]
    assert (256,) in factored and (130,) in factored


@pytest.mark.parametrize("schedule, step, expected", [
    ("constant", 0, 1e-3),
    ("constant", 123456, 1e-3),
    ("constant * linear_warmup", 250, 1e-3 * 250 / 1000),
    ("constant * linear_warmup", 5000, 1e-3),
    ("constant * rsqrt_decay", 10, 1e-3 / np.sqrt(1000)),
    ("constant * rsqrt_decay", 40000, 1e-3 / 200.0),
    ("constant * linear_warmup * rsqrt_normalized_decay", 4000, 1e-3 * np.sqrt(1000) / np.sqrt(4000)),
])
def test_learning_rate_schedules(schedule, step, expected):
    lr = trainer.OptimizerConfig(schedule=schedule, warmup_steps=1000).learning_rate_fn()
    assert float(lr(step)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("schedule, step, expected", [
    ("constant * linear_cooldown", 999, 1e-3),
    ("constant * linear_cooldown", 1000 + 250, 1e-3 * 0.75),
    ("constant * linear_cooldown", 1000 + 999, 1e-3 / 1000),
    ("constant * linear_cooldown", 5000, 0.0),
    ("constant * cosine_cooldown", 1000 + 500, 1e-3 * 0.5),
    ("constant * cosine_cooldown", 1000 + 250, 1e-3 * 0.5 * (1 + np.cos(np.pi / 4))),
    ("constant * cosine_cooldown", 5000, 0.0),
])
def test_cooldown_schedules_hold_then_fall_to_zero(schedule, step, expected):
    lr = trainer.OptimizerConfig(schedule=schedule, cooldown_start=1000, cooldown_steps=1000).learning_rate_fn()
    assert float(lr(step)) == pytest.approx(expected, rel=1e-4, abs=1e-12)


def test_optimizer_config_validates():
    with pytest.raises(ValueError, match="cooldown_steps"):
        trainer.OptimizerConfig(schedule="constant * linear_cooldown")
    with pytest.raises(ValueError, match="cosine"):
        trainer.OptimizerConfig(schedule="constant * cosine")
    with pytest.raises(ValueError, match="adafactor"):
        trainer.OptimizerConfig(name="sgd")


# ---------------------------------------------------------------------------------------------------------------
# Pure steps
# ---------------------------------------------------------------------------------------------------------------

def test_microbatches_sum_to_the_full_batch_gradient():
    model = tiny_model()
    params = model.init_params(jax.random.PRNGKey(0))
    batch = {k: jnp.asarray(v) for k, v in synthetic_batch().items()}
    deterministic = lambda p, b, rng: model.loss_fn(p, b, None)
    grads = jax.jit(lambda p, b, n: trainer.compute_gradients(p, b, jax.random.PRNGKey(0), loss_fn=deterministic,
                                                              num_microbatches=n), static_argnums=2)
    (g1, m1), (g4, m4) = grads(params, batch, 1), grads(params, batch, 4)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g4), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    for key in ("loss", "num_tokens", "accuracy"):
        assert float(m4[key]) == pytest.approx(float(m1[key]), rel=1e-4), key


def test_train_step_is_pure_and_learns():
    model = tiny_model()
    tx = trainer.OptimizerConfig(base_learning_rate=1e-2).make()
    params = model.init_params(jax.random.PRNGKey(0))
    state = trainer.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                               rng=jax.random.key_data(jax.random.PRNGKey(1)))
    batch = {k: jnp.asarray(v) for k, v in synthetic_batch().items()}
    step = jax.jit(lambda s, b: trainer.train_step(s, b, jax.random.PRNGKey(2), loss_fn=model.loss_fn, tx=tx))
    again, _ = step(state, batch)
    losses = []
    for _ in range(15):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 15
    assert losses[-1] < 0.8 * losses[0]  # one repeated batch: the loss must fall
    first, _ = step(trainer.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                       rng=state.rng), batch)
    for a, b in zip(jax.tree_util.tree_leaves(first.params), jax.tree_util.tree_leaves(again.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same inputs -> same outputs


def test_trainer_step_and_eval_on_one_device():
    model = tiny_model(dropout_rate=0.1)
    part = partitioning.Partitioner()
    tr = trainer.Trainer(model, trainer.OptimizerConfig(), part)
    state = tr.init_state(seed=0)
    batch = part.make_global_batch(synthetic_batch(), 8)
    before = trainer.metrics_to_host(tr.eval_step(state.params, batch))
    state, metrics = tr.train_step(state, batch)
    host = trainer.metrics_to_host(metrics)
    assert int(state.step) == 1
    assert host["num_tokens"] == float(synthetic_batch()["decoder_loss_weights"].sum())
    assert host["learning_rate"] == pytest.approx(1e-3)
    assert 0.0 <= host["accuracy"] <= 1.0 and np.isfinite(host["loss"]) and host["grad_norm"] > 0
    assert before == trainer.metrics_to_host(tr.eval_step(tr.init_state(seed=0).params, batch))  # eval is deterministic
    assert trainer.count_params(state.params) == models.expected_param_count(model.config)


def test_heavy_modules_do_not_import_tensorflow():
    code = ("import sys; import mt3.training.trainer, mt3.training.partitioning, mt3.training.checkpoints, "
            "mt3.training.train; "
            "bad = [m for m in ('tensorflow', 'seqio', 'mt3.tasks') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_synthetic_batches_follow_the_feature_contract():
    batch = synthetic_batch(batch_size=4)
    assert batch["encoder_input_tokens"].shape == (4, 16, 16) and batch["encoder_input_tokens"].dtype == np.float32
    targets = batch["decoder_target_tokens"]
    assert targets.dtype == np.int32 and batch["decoder_input_tokens"].dtype == np.int32
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], targets[:, :-1])
    assert (batch["decoder_input_tokens"][:, 0] == 0).all()
    np.testing.assert_array_equal(batch["decoder_loss_weights"], (targets > 0).astype(np.float32))
    for row in targets:  # ids, then one EOS, then padding
        n = int((row > 0).sum())
        assert row[n - 1] == 1 and (row[: n - 1] >= 3).all() and (row[n:] == 0).all()
    np.testing.assert_array_equal(synthetic_batch(index=3)["encoder_input_tokens"],
                                  synthetic_batch(index=3)["encoder_input_tokens"])
    assert not np.array_equal(synthetic_batch(index=3)["decoder_target_tokens"], targets)


# ---------------------------------------------------------------------------------------------------------------
# The `mt3 train` command end to end
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_mt3_train_cli_end_to_end(tmp_path):
    model_dir = tmp_path / "run"
    args = ["train", "--gin_file=gin/train.gin", f"--model_dir={model_dir}",
            *[f"--gin.{b.replace(' = ', '=')}" for b in TINY_RUN_BINDINGS],
            "--gin.TRAIN_STEPS=12", "--gin.CHECKPOINT_PERIOD=5", "--gin.EVAL_PERIOD=6", "--gin.CHECKPOINTS_TO_KEEP=2"]
    result = subprocess.run(MT3 + args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters" in result.stdout and "stopped at step 12 (total_steps)" in result.stdout
    assert "step 6: eval" in result.stdout and "step 12: eval" in result.stdout
    assert "TRAIN_STEPS = 12" in (model_dir / "config.gin").read_text()
    assert "OptimizerConfig.decay_rate = 0.8" in (model_dir / "operative_config.gin").read_text()
    assert (model_dir / "gin" / "train.gin").read_text() == (REPO / "gin" / "train.gin").read_text()
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "12"]
    assert list((model_dir / "train").glob("events.out.tfevents.*"))
    assert list((model_dir / "eval").glob("events.out.tfevents.*"))


def test_time_budget_stops_with_a_checkpoint(tmp_path):
    cfg = train.DatasetConfig(task_feature_lengths={"inputs": 16, "targets": 16}, batch_size=8, source="synthetic")
    result = train.train(model=tiny_model(), model_dir=str(tmp_path), train_dataset_cfg=cfg,
                         loop_cfg=train.TrainLoopConfig(total_steps=1000, max_train_seconds=0.0, summary_period=1),
                         checkpoint_cfg=train.CheckpointConfig(period=100, async_save=False))
    assert (result.step, result.stop_reason) == (1, "time_budget")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == ["1"]
    assert np.isfinite(result.last_metrics["loss"]) and result.last_metrics["examples_per_sec"] > 0


@pytest.mark.slow
def test_local_tiny_preset_trains_on_the_real_seqio_pipeline(tmp_path, music21_sequences):
    """The CPU quickstart path: local corpus -> seqio -> tiny real model (log-mel frontend) -> checkpoint + eval."""
    from data_fixtures import sub_sequence, windows, write_prepared_dataset

    chorale = music21_sequences["bach_chorale"]
    write_prepared_dataset(tmp_path / "prepared", "local", {
        "train": windows(chorale, 2, stride=4.0, length=5.0, prefix="chorale_"),
        "validation": [("chorale_val", sub_sequence(chorale, 12.0, 16.0))],
    })
    model_dir = tmp_path / "run"
    args = ["train", "--gin_file=gin/local_tiny.gin", f"--model_dir={model_dir}", "--gin.BATCH_SIZE=2",
            "--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=2", "--gin.EVAL_BATCH_SIZE=2", "--gin.EVAL_STEPS=1"]
    result = subprocess.run(MT3 + args, cwd=REPO, capture_output=True, text=True, timeout=400,
                            env=subprocess_env(MT3_DATA_DIR=str(tmp_path / "prepared")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stopped at step 2 (total_steps)" in result.stdout and "step 2: eval" in result.stdout
    assert "local_mix_notes_ties_vb1_train" in (model_dir / "config.gin").read_text()
    assert (model_dir / "checkpoints" / "2").is_dir()


@pytest.mark.slow
def test_teacher_forced_eval_on_a_mixture_reports_each_task(tmp_path, music21_sequences, capsys):
    """A training-eval mixture of two prepared datasets: each task evaluated on its own batches (T5X's training eval),
    summarised as TASK/loss_per_token etc. beside the pooled numbers, and printed; losses shown per token."""
    import seqio
    from data_fixtures import windows, write_prepared_dataset
    from tb_events import read_scalars

    from mt3 import tasks

    chorale, quartet = music21_sequences["bach_chorale"], music21_sequences["string_quartet"]
    data = tmp_path / "data"
    write_prepared_dataset(data, "local", {"train": windows(chorale, 2, stride=4.0, length=5.0, prefix="c"),
                                           "validation": windows(chorale, 2, stride=6.0, length=5.0, prefix="cv")})
    write_prepared_dataset(data, "strings", {"train": windows(quartet, 2, stride=4.0, length=5.0, prefix="q"),
                                             "validation": windows(quartet, 2, stride=6.0, length=5.0, prefix="qv")},
                           dataset="pairs")  # as `mt3 prepare-data pairs` writes it: it registers itself
    members = ["local_notes_ties_vb1_train", "strings_notes_ties_vb1_train"]
    mixture = "test_local_strings_mix"
    assert tasks.register_prepared_datasets(data) == ["strings_notes_ties_vb1"]
    seqio.MixtureRegistry.add(mixture, [(members[0], 3.0), (members[1], 1.0)])
    try:
        config = network.T5Config(vocab_size=1536, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                                  num_encoder_layers=1, num_decoder_layers=1, input_depth=128,
                                  input_frontend="features")
        lengths = {"inputs": 32, "targets": 64}
        result = train.train(
            model=models.ContinuousInputsEncoderDecoderModel(network.Transformer(config)),
            model_dir=str(tmp_path / "run"),
            train_dataset_cfg=train.DatasetConfig(task_feature_lengths=lengths, batch_size=2, source="synthetic"),
            train_eval_dataset_cfg=train.DatasetConfig(mixture_or_task_name=mixture, task_feature_lengths=lengths,
                                                       split="eval", batch_size=2, shuffle=False, data_dir=str(data)),
            loop_cfg=train.TrainLoopConfig(total_steps=2, eval_period=2, eval_steps=2, summary_period=1),
            checkpoint_cfg=train.CheckpointConfig(period=100, async_save=False))
    finally:
        seqio.MixtureRegistry.remove(mixture)
        for name in [n for n in seqio.TaskRegistry.names() if n.startswith("strings_")]:
            seqio.TaskRegistry.remove(name)
        seqio.MixtureRegistry.remove("strings_notes_ties_vb1_eval")
        tasks._PREPARED.pop("strings", None)
    scalars = read_scalars(tmp_path / "run" / "eval")
    last = {tag: values[-1][1] for tag, values in scalars.items()}
    assert "loss" not in last and not any(tag.endswith("/loss") for tag in last)
    for task in members:
        assert last[f"{task}/loss_per_token"] == pytest.approx(last[f"{task}/loss_sum"] / last[f"{task}/num_tokens"],
                                                               rel=1e-5)
        assert 0.0 <= last[f"{task}/accuracy"] <= 1.0
    # the pooled numbers are over both tasks' batches (each task eval_steps batches): token-weighted
    tokens = [last[f"{t}/num_tokens"] for t in members]
    assert last["loss_per_token"] == pytest.approx(
        sum(last[f"{t}/loss_per_token"] * n for t, n in zip(members, tokens)) / sum(tokens), rel=1e-4)
    assert result.eval_metrics["loss_per_token"] == pytest.approx(last["loss_per_token"], rel=1e-5)
    assert last[f"{members[0]}/num_tokens"] != last[f"{members[1]}/num_tokens"], "two datasets, two sets of batches"
    printed = capsys.readouterr().out
    for task in members:
        match = re.search(rf"step 2: eval {task}: loss_per_token=(\S+), accuracy=(\S+)", printed)
        assert match, printed
        assert float(match[1]) == pytest.approx(last[f"{task}/loss_per_token"], rel=1e-3)
        assert float(match[2]) == pytest.approx(last[f"{task}/accuracy"], abs=1e-3)
    assert {"loss_per_token", "loss_sum"} <= set(read_scalars(tmp_path / "run" / "train"))


def test_summaries_fetch_step_n_minus_1_after_dispatching_step_n(tmp_path, monkeypatch):
    """nanodo's pattern: a due summary's device->host transfer waits until the next step is queued, so it never stalls
    the device; the last one is fetched after the loop, so every due step is still summarised."""
    events: list[tuple[str, int]] = []
    dispatch, summarize = trainer.Trainer.train_step, train._summarize

    def counting_dispatch(self, state, batch):
        out = dispatch(self, state, batch)
        events.append(("dispatch", int(out[0].step)))
        return out

    def recording_summarize(step, metrics, *args):
        events.append(("summarize", step))
        return summarize(step, metrics, *args)

    monkeypatch.setattr(trainer.Trainer, "train_step", counting_dispatch)
    monkeypatch.setattr(train, "_summarize", recording_summarize)
    cfg = train.DatasetConfig(task_feature_lengths={"inputs": 16, "targets": 16}, batch_size=8, source="synthetic")
    result = train.train(model=tiny_model(), model_dir=str(tmp_path), train_dataset_cfg=cfg,
                         loop_cfg=train.TrainLoopConfig(total_steps=4, summary_period=2, eval_period=0),
                         checkpoint_cfg=train.CheckpointConfig(period=100, async_save=False))
    assert events == [("dispatch", 1), ("dispatch", 2), ("dispatch", 3), ("summarize", 2), ("dispatch", 4),
                      ("summarize", 4)]
    assert result.step == 4 and np.isfinite(result.last_metrics["loss"])


def test_input_wait_is_summarised_per_period_and_shows_an_input_bound_run(tmp_path, monkeypatch):
    """timing/input_wait_seconds and _fraction: the seconds the loop waited for its next batch in a summary period.
    An iterator that sleeps 0.5 s per batch (far longer than a tiny model's step) makes the run input-bound, and the
    summaries say so: the last period (the first holds compilation) waited >= 0.5 s per step, most of its time."""
    from tb_events import read_scalars

    make = train.input_pipeline.make_batch_iterator

    def slow_iterator(cfg, **kwargs):
        for batch in make(cfg, **kwargs):
            time.sleep(0.5)
            yield batch

    monkeypatch.setattr(train.input_pipeline, "make_batch_iterator", slow_iterator)
    cfg = train.DatasetConfig(task_feature_lengths={"inputs": 16, "targets": 16}, batch_size=8, source="synthetic")
    result = train.train(model=tiny_model(), model_dir=str(tmp_path), train_dataset_cfg=cfg,
                         loop_cfg=train.TrainLoopConfig(total_steps=6, summary_period=3, eval_period=0),
                         checkpoint_cfg=train.CheckpointConfig(period=100, async_save=False))
    scalars = read_scalars(tmp_path / "train")
    seconds, fraction = scalars["timing/input_wait_seconds"], scalars["timing/input_wait_fraction"]
    assert [s for s, _ in seconds] == [s for s, _ in fraction] == [3, 6]
    assert seconds[-1][1] >= 0.5 * 2  # the period's waits: step 6's batch, and those fetched after step 3's summary
    assert 0.6 < fraction[-1][1] <= 1.0, fraction
    assert result.last_metrics["timing/input_wait_fraction"] == pytest.approx(fraction[-1][1], rel=1e-5)


def test_the_loop_logs_on_the_console_as_mt3_train_lines():
    """train() logs (chief host only); under `mt3 train` (train_from_gin) the lines show as 'mt3 train: ...', info on
    stdout and warnings on stderr, as the prints did."""
    code = ("from mt3.training import train\n"
            "with train.console_logging():\n"
            "    train._say('restored checkpoint step 3'); train._say('step 4 does not restore', warning=True)\n"
            "train._say('after the run: not shown')\n"
            "import logging; logging.basicConfig()\n"  # a root handler (libraries add one): each line still once
            "with train.console_logging():\n"
            "    train._say('once')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["mt3 train: restored checkpoint step 3", "mt3 train: once"]
    assert result.stderr.splitlines() == ["mt3 train: warning: step 4 does not restore"]
