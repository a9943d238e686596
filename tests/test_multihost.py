"""Multi-host training on one machine: two CPU processes joined by `jax.distributed` on loopback.

Each process reads its own shard of the (synthetic) data, the global batch is assembled with
`jax.make_array_from_process_local_data`, one step runs, both processes report the same loss, and that loss equals a
single-process step on the two shards concatenated. Both processes also write the checkpoint together.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, free_port, subprocess_env, synthetic_batch, tiny_model

from mt3.training import partitioning, trainer

# end-to-end: `scripts/test.sh --fast` (-m 'not slow') leaves these out
pytestmark = pytest.mark.slow

WORKER = r"""
import json, sys
sys.path.insert(0, "tests")
from helpers import tiny_model
from mt3.training import partitioning
from mt3.training import train

result = train.train(
    model=tiny_model(), model_dir=sys.argv[1],
    train_dataset_cfg=train.DatasetConfig(task_feature_lengths={"inputs": 16, "targets": 16}, batch_size=8,
                                          source="synthetic", seed=0),
    loop_cfg=train.TrainLoopConfig(total_steps=1, summary_period=1),
    checkpoint_cfg=train.CheckpointConfig(period=100, async_save=False))
import jax
print("RESULT " + json.dumps({"process": jax.process_index(), "count": jax.process_count(),
                              "devices": jax.device_count(), "layout": partitioning.Partitioner().data_layout(),
                              "loss": result.last_metrics["loss"], "step": result.step}), flush=True)
"""


def test_two_processes_train_one_step_and_agree(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    results = _run_pair(tmp_path, script, tmp_path / "run")
    results.sort(key=lambda r: r["process"])
    assert [(r["process"], r["count"], r["devices"], r["step"]) for r in results] == [(0, 2, 2, 1), (1, 2, 2, 1)]
    assert [tuple(r["layout"]) for r in results] == [(0, 2), (1, 2)]  # each host reads its own shard
    assert results[0]["loss"] == results[1]["loss"]
    assert (tmp_path / "run" / "checkpoints" / "1").is_dir()

    # the same step in one process on the two host shards concatenated
    local = [synthetic_batch(batch_size=4, shard_id=s) for s in (0, 1)]
    batch = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
    part = partitioning.Partitioner()
    tr = trainer.Trainer(tiny_model(), trainer.OptimizerConfig(), part)
    _, metrics = tr.train_step(tr.init_state(seed=0), part.make_global_batch(batch, 8))
    assert results[0]["loss"] == pytest.approx(float(metrics["loss"]), rel=1e-5)


INDEXED_WORKER = r"""
import json, sys
sys.path.insert(0, "tests")
from mt3.training import train
from mt3.models import models, network

model_dir, data_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = network.T5Config(vocab_size=1536, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=1,
                          num_decoder_layers=1, dropout_rate=0.0, input_depth=128, input_frontend="features")
result = train.train(
    model=models.ContinuousInputsEncoderDecoderModel(network.Transformer(config)), model_dir=model_dir,
    train_dataset_cfg=train.DatasetConfig(mixture_or_task_name="local_mix_notes_ties_vb1_train",
                                          task_feature_lengths={"inputs": 16, "targets": 32}, batch_size=4,
                                          data_dir=data_dir, block_tracks=2),
    loop_cfg=train.TrainLoopConfig(total_steps=steps, summary_period=1),
    checkpoint_cfg=train.CheckpointConfig(period=100, async_save=False))
print("RESULT " + json.dumps({"loss": result.last_metrics["loss"], "step": result.step}), flush=True)
"""


def _run_pair(tmp_path, script, *args) -> list[dict]:
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=subprocess_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                                 JAX_PROCESS_ID=str(i))) for i in range(2)]
    try:
        outputs = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT "))))
    return results


def test_two_processes_save_and_restore_their_own_input_positions(tmp_path, music21_sequences):
    """Each host reads its own records through the indexed sampler; the checkpoint holds both positions; resuming
    both processes from step 2 and training to 4 equals an uninterrupted 4-step run."""
    from data_fixtures import sub_sequence, windows, write_prepared_dataset

    chorale = music21_sequences["bach_chorale"]
    write_prepared_dataset(tmp_path / "prepared", "local", {
        "train": windows(chorale, 6, stride=3.0, length=6.0, prefix="chorale_"),
        "validation": [("chorale_val", sub_sequence(chorale, 12.0, 16.0))]})
    script = tmp_path / "worker.py"
    script.write_text(INDEXED_WORKER)
    straight = _run_pair(tmp_path, script, tmp_path / "straight", tmp_path / "prepared", 4)
    _run_pair(tmp_path, script, tmp_path / "resumed", tmp_path / "prepared", 2)
    meta = json.loads((tmp_path / "resumed" / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert [s["kind"] for s in meta["data_states"]] == ["indexed", "indexed"]
    resumed = _run_pair(tmp_path, script, tmp_path / "resumed", tmp_path / "prepared", 4)
    assert [r["step"] for r in resumed] == [4, 4]
    assert resumed[0]["loss"] == pytest.approx(straight[0]["loss"], rel=1e-6)
