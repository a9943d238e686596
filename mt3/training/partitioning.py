"""Device mesh ('data', 'model'), T5X logical-axis rules, and multi-host start-up and data layout.

Partitioning is data: parameters carry logical axis names (`embed`, `mlp`, `heads`, ...) and one rules table maps them
onto mesh axes, so the same model runs data-parallel on one GPU, on a pod slice, or with tensor parallelism by changing
`num_partitions` in gin. Multi-host runs call `jax.distributed.initialize` when the launcher's environment says so;
each host then reads its own shard of the data and global batches are assembled with
`jax.make_array_from_process_local_data`. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "model")
LogicalRules = tuple[tuple[str, str | None], ...]


def standard_logical_axis_rules() -> LogicalRules:
    """T5X's standard rules for 1-D model parallelism: batch over 'data'; wide dims over 'model'."""
    return (
        ("batch", "data"),
        ("vocab", "model"),
        ("mlp", "model"),
        ("heads", "model"),
        ("joined_kv", "model"),
        ("embed", None),
        ("kv", None),
        ("length", None),
        ("mel", None),
    )


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    """How devices are arranged. model size = num_partitions, or prod(model_parallel_submesh) when given (T5X's
    TPU-topology spelling, e.g. (1, 1, 1, 2)); data size = number of devices / model size."""

    num_partitions: int = 1
    model_parallel_submesh: tuple[int, ...] | None = None
    logical_axis_rules: LogicalRules = dataclasses.field(default_factory=standard_logical_axis_rules)

    def __post_init__(self):
        if self.model_parallel_submesh is not None:
            sub = tuple(int(x) for x in self.model_parallel_submesh)
            if not sub or min(sub) < 1:
                raise ValueError(f"model_parallel_submesh must be positive ints, got {self.model_parallel_submesh}")
            object.__setattr__(self, "model_parallel_submesh", sub)
        if not isinstance(self.num_partitions, int) or self.num_partitions < 1:
            raise ValueError(f"num_partitions must be a positive int, got {self.num_partitions!r}")
        rules = tuple((str(name), axis) for name, axis in self.logical_axis_rules)
        bad = [axis for _, axis in rules if axis is not None and axis not in MESH_AXES]
        if bad:
            raise ValueError(f"logical_axis_rules map onto unknown mesh axes {bad}; allowed: {MESH_AXES} or None")
        object.__setattr__(self, "logical_axis_rules", rules)

    @property
    def model_size(self) -> int:
        return math.prod(self.model_parallel_submesh) if self.model_parallel_submesh else self.num_partitions


# ---------------------------------------------------------------------------------------------------------------
# Multi-host start-up
# ---------------------------------------------------------------------------------------------------------------

def distributed_launch_kind(env: Mapping[str, str] | None = None) -> str | None:
    """Which multi-process launcher started us: 'explicit' (JAX_COORDINATOR_ADDRESS etc.), 'slurm', 'tpu', or None."""
    env = os.environ if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
        return "explicit"
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MT3_DISTRIBUTED") == "1":
        return "tpu" if env.get("TPU_WORKER_HOSTNAMES") else "auto"
    return None


def initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Calls `jax.distributed.initialize` once when the environment describes a multi-process job; True if it did.

    'explicit': JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES, JAX_PROCESS_ID (or SLURM_PROCID under srun;
    our launch scripts, tests).
    'slurm' / 'tpu' / MT3_DISTRIBUTED=1: JAX's own cluster auto-detection. Must run before anything touches devices.
    """
    env = os.environ if env is None else env
    kind = distributed_launch_kind(env)
    if kind is None or jax.distributed.is_initialized():
        return False
    if kind == "explicit":
        local = env.get("JAX_LOCAL_DEVICE_IDS")
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env.get("JAX_PROCESS_ID", env.get("SLURM_PROCID", "0"))),
            local_device_ids=[int(x) for x in local.split(",")] if local else None,
        )
    else:
        jax.distributed.initialize()
    return True


# ---------------------------------------------------------------------------------------------------------------
# Mesh and shardings
# ---------------------------------------------------------------------------------------------------------------

def make_mesh(config: PartitionConfig | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'model') mesh over all (global) devices; model-parallel groups are physically close devices."""
    config = config or PartitionConfig()
    devices = list(jax.devices() if devices is None else devices)
    model = config.model_size
    if len(devices) % model:
        raise ValueError(f"{len(devices)} devices cannot be split into model-parallel groups of {model}")
    shape = (len(devices) // model, model)
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        # CPU / mixed topologies: keep each process's devices contiguous so host-local batches are contiguous slices.
        ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
        grid = np.asarray(ordered, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


class Partitioner:
    """Owns the mesh and rules: logical specs -> NamedShardings; host-local batches -> global arrays."""

    def __init__(self, config: PartitionConfig | None = None, devices: Sequence[jax.Device] | None = None):
        self.config = config or PartitionConfig()
        self.mesh = make_mesh(self.config, devices)
        self.rules = self.config.logical_axis_rules

    @property
    def data_size(self) -> int:
        return self.mesh.shape["data"]

    @property
    def model_size(self) -> int:
        return self.mesh.shape["model"]

    @contextlib.contextmanager
    def activate(self):
        """Mesh + logical rules in context, so `nn.with_logical_constraint` in the model shards activations."""
        import flax.linen as nn

        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def logical_to_sharding(self, logical_specs):
        """Tree of logical PartitionSpecs (e.g. `nn.get_partition_spec(boxed_params)`) -> tree of NamedShardings."""
        import flax.linen as nn

        return nn.logical_to_mesh_sharding(logical_specs, self.mesh, self.rules)

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def batch_sharding(self) -> NamedSharding:
        """Leading (batch) dimension split over 'data'; replicated over 'model'."""
        return NamedSharding(self.mesh, P("data"))

    def data_layout(self) -> tuple[int, int]:
        """(shard_id, num_shards): which shard of the data this host reads.

        Hosts whose devices cover the same 'data' rows of the mesh (model parallelism spanning hosts) read the same
        shard; with the usual layout this is (jax.process_index(), jax.process_count()).
        """
        grid = self.mesh.devices
        rows_of: dict[int, set[int]] = {}
        for row in range(grid.shape[0]):
            for device in grid[row]:
                rows_of.setdefault(device.process_index, set()).add(row)
        keys = sorted({tuple(sorted(rows)) for rows in rows_of.values()})
        return keys.index(tuple(sorted(rows_of[jax.process_index()]))), len(keys)

    def host_batch_size(self, global_batch_size: int) -> int:
        """Rows of the global batch this host feeds (its data shard's share)."""
        _, num_shards = self.data_layout()
        if global_batch_size % self.data_size or global_batch_size % num_shards:
            raise ValueError(f"batch size {global_batch_size} must divide evenly over {self.data_size} data-parallel "
                             f"replicas and {num_shards} host shards")
        return global_batch_size // num_shards

    def make_global_batch(self, local_batch: Mapping[str, np.ndarray], global_batch_size: int) -> dict:
        """Host-local numpy batch (this host's rows) -> dict of global jax.Arrays sharded over 'data'."""
        sharding = self.batch_sharding()
        out = {}
        for key, value in local_batch.items():
            value = np.asarray(value)
            out[key] = jax.make_array_from_process_local_data(sharding, value, (global_batch_size,) + value.shape[1:])
        return out
