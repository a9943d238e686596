"""Tests for mt3.training.partitioning: T5X's logical-axis rules, mesh shapes, launcher detection, and that 1x1, 8x1
and 4x2
meshes (8 fake CPU devices, in a subprocess so the device count does not leak) train to the same loss."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import pytest
from helpers import REPO, subprocess_env
from jax.sharding import PartitionSpec as P

from mt3.training import partitioning

MESH_SCRIPT = r"""
import json, sys
sys.path.insert(0, "tests")
import jax
from helpers import synthetic_batch, tiny_model
from mt3.training import partitioning
from mt3.training import trainer

out = {}
batch = synthetic_batch(batch_size=8)
for name, devices, model in [("1x1", jax.devices()[:1], 1), ("8x1", jax.devices(), 1), ("4x2", jax.devices(), 2)]:
    part = partitioning.Partitioner(partitioning.PartitionConfig(num_partitions=model), devices=devices)
    tr = trainer.Trainer(tiny_model(), trainer.OptimizerConfig(), part, num_microbatches=2 if name == "4x2" else 1)
    state = tr.init_state(seed=0)
    losses = []
    for _ in range(2):
        state, metrics = tr.train_step(state, part.make_global_batch(batch, 8))
        losses.append(float(metrics["loss"]))
    wi = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    out[name] = {"mesh": dict(part.mesh.shape), "losses": losses, "wi_spec": str(wi.sharding.spec),
                 "wi_shard": list(wi.addressable_shards[0].data.shape), "wi_shape": list(wi.shape),
                 "devices": len(wi.sharding.device_set)}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_meshes_1x1_8x1_4x2_give_the_same_loss():
    result = subprocess.run([sys.executable, "-c", MESH_SCRIPT], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(next(line[7:] for line in result.stdout.splitlines() if line.startswith("RESULT ")))
    assert out["1x1"]["mesh"] == {"data": 1, "model": 1} and out["1x1"]["devices"] == 1
    assert out["8x1"]["mesh"] == {"data": 8, "model": 1} and out["8x1"]["devices"] == 8
    assert out["4x2"]["mesh"] == {"data": 4, "model": 2}
    # 'mlp' -> 'model': the 4x2 mesh splits the MLP kernel's columns in two (the 4x2 run also accumulates 2
    # microbatches, which must not change the summed loss either)
    assert out["4x2"]["wi_spec"] == str(P(None, "model"))
    assert out["4x2"]["wi_shard"] == [out["4x2"]["wi_shape"][0], out["4x2"]["wi_shape"][1] // 2]
    reference = out["1x1"]["losses"]
    for name in ("8x1", "4x2"):
        assert out[name]["losses"] == pytest.approx(reference, rel=1e-5), name
    assert reference[1] < reference[0]


def test_standard_rules_are_t5x():
    rules = dict(partitioning.standard_logical_axis_rules())
    assert rules["batch"] == "data"
    assert all(rules[name] == "model" for name in ("mlp", "heads", "joined_kv", "vocab"))
    assert all(rules[name] is None for name in ("embed", "kv", "length"))


def test_partition_config_validates():
    assert partitioning.PartitionConfig(model_parallel_submesh=(1, 2, 1, 2)).model_size == 4
    assert partitioning.PartitionConfig(num_partitions=2).model_size == 2
    with pytest.raises(ValueError, match="unknown mesh axes"):
        partitioning.PartitionConfig(logical_axis_rules=(("mlp", "tensor"),))
    with pytest.raises(ValueError, match="num_partitions"):
        partitioning.PartitionConfig(num_partitions=0)
    with pytest.raises(ValueError, match="model-parallel groups"):
        partitioning.make_mesh(partitioning.PartitionConfig(num_partitions=3), devices=jax.devices() * 2)


@pytest.mark.parametrize("env, kind", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "1"}, "explicit"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),  # a one-task SLURM job is single-process
    ({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}, "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # a single-host TPU VM
    ({"MT3_DISTRIBUTED": "1"}, "auto"),
])
def test_distributed_launch_detection(env, kind):
    assert partitioning.distributed_launch_kind(env) == kind


def test_single_process_layout_and_batch_split():
    part = partitioning.Partitioner()
    assert part.data_layout() == (0, 1)
    assert part.host_batch_size(8) == 8
    assert not partitioning.initialize_distributed({})  # nothing to join
