"""Multi-host training on one machine: two CPU processes joined by `jax.distributed` on loopback.

Each process reads its own shard of the (synthetic) data, the global batch is assembled with
`jax.make_array_from_process_local_data`, one step runs, both processes report the same loss, and that loss equals a
single-process step on the two shards concatenated. Both processes also write the checkpoint together.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_trainer import REPO, subprocess_env, synthetic_batch, tiny_model

from mt3 import partitioning, trainer

WORKER = r"""
import json, sys
sys.path.insert(0, "tests")
from test_trainer import tiny_model
from mt3 import partitioning, train

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_step_and_agree(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], cwd=REPO, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=subprocess_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                            JAX_PROCESS_ID=str(i)))
        for i in range(2)
    ]
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
