"""Every gin configurable, in one table: the names the gin files use (MT3's and T5X's), what they build, and the stage
that needs them.

Why one table: library code never imports gin (it takes typed configs as arguments), so something has to tell gin
which functions and dataclasses the files may name. Spread over the modules that define them, registration needed
import tricks (a module registering itself on import) and hand-kept lists of what an inference command may leave
unregistered. Here the names are data: `register(stages)` imports only the modules of those stages and registers their
entries, and `unregistered_names()` is what a config file may still name without its module being imported (a model
directory's config.gin names the training loop, which `mt3 transcribe` never imports). Importing this module imports
nothing of mt3, so `mt3 --help` stays instant and nothing here can close an import circle.

Stages:
- `model`: the network, the model wrapper, the vocabulary (NUM_EMBEDDINGS is derived from it, as MT3's model.gin);
- `data`: the training data's mixing and augmentation configs (read by `mt3 data-stats` too);
- `inference`: decoding and evaluation settings (`mt3 transcribe`, `eval`, `serve`, and the trainer's infer-eval);
- `training`: optimizer, checkpoints, partitioning and the training loop (`mt3 train` only).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Collection

MODEL, DATA, INFERENCE, TRAINING = "model", "data", "inference", "training"
STAGES = (MODEL, DATA, INFERENCE, TRAINING)
SERVING_STAGES = (MODEL, DATA, INFERENCE)  # what reading a model directory for inference or eval needs


@dataclasses.dataclass(frozen=True)
class Configurable:
    """`gin_module.name` in gin files builds `target` ("package.module:attribute")."""

    gin_module: str
    target: str
    stage: str

    @property
    def name(self) -> str:
        return self.target.rpartition(":")[2]

    @property
    def gin_name(self) -> str:
        return f"{self.gin_module}.{self.name}"


TABLE: tuple[Configurable, ...] = (
    # MT3 model.gin's names
    Configurable("network", "mt3.models.network:T5Config", MODEL),
    Configurable("network", "mt3.models.network:Transformer", MODEL),
    Configurable("models", "mt3.models.models:ContinuousInputsEncoderDecoderModel", MODEL),
    Configurable("vocabularies", "mt3.vocabularies:VocabularyConfig", MODEL),
    Configurable("vocabularies", "mt3.vocabularies:build_codec", MODEL),
    Configurable("vocabularies", "mt3.vocabularies:num_embeddings", MODEL),
    # the training data (bound on utils.DatasetConfig in train.gin)
    Configurable("mixing", "mt3.mixing:MixConfig", DATA),
    Configurable("augmentation", "mt3.data.augmentation:AugmentConfig", DATA),
    # decoding and evaluation (infer.gin, eval.gin)
    Configurable("inference", "mt3.inference:InferenceConfig", INFERENCE),
    Configurable("evaluation", "mt3.evaluation:EvalConfig", INFERENCE),
    # T5X's names for the training side (MT3's train.gin)
    Configurable("trainer", "mt3.training.trainer:OptimizerConfig", TRAINING),
    Configurable("checkpoints", "mt3.training.checkpoints:CheckpointConfig", TRAINING),
    Configurable("checkpoints", "mt3.training.checkpoints:RestoreCheckpointConfig", TRAINING),
    Configurable("partitioning", "mt3.training.partitioning:PartitionConfig", TRAINING),
    Configurable("partitioning", "mt3.training.partitioning:standard_logical_axis_rules", TRAINING),
    Configurable("train_script", "mt3.training.train:train", TRAINING),
    Configurable("train_script", "mt3.training.train:TrainLoopConfig", TRAINING),
    Configurable("utils", "mt3.training.train:DatasetConfig", TRAINING),
)

# Macros that code reads (`gin_utils.query_macro`) though no gin file has to define them, e.g. in a model directory's
# config.gin written before the macro existed: binding one on the command line is not an unknown macro.
CODE_MACROS = frozenset({
    "MODEL_DIR",  # --model_dir
    "MODEL",  # the model object every command builds
    "INFER_EVAL_TASKS", "EVAL_TASKS", "EVAL_MIXTURE", "TASK_PREFIX", "DATA_DIR",  # what eval reads
    "MIXTURE_OR_TASK_MODULE", "MIXTURES",  # the task registry (mt3.registry)
    "NUM_VELOCITY_BINS", "USE_TIES", "ONSETS_ONLY", "TASK_FEATURE_LENGTHS", "INPUT_PEAK_DB",  # the model's vocabulary,
})  # segment length and input level, read by mt3.model_loading

_registered: set[str] = set()


def entries(stages: Collection[str] = STAGES) -> tuple[Configurable, ...]:
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown configurable stage(s) {sorted(unknown)}; stages are {STAGES}")
    return tuple(entry for entry in TABLE if entry.stage in stages)


def register(stages: Collection[str] = STAGES) -> None:
    """Registers the entries of `stages` with gin (idempotent), importing only their modules."""
    import gin

    todo = [entry for entry in entries(stages) if entry.gin_name not in _registered]
    if not todo:
        return
    with gin.unlock_config():  # a finalized config (e.g. after training in this process) locks registration
        for entry in todo:
            module, _, attribute = entry.target.partition(":")
            gin.external_configurable(getattr(importlib.import_module(module), attribute), module=entry.gin_module)
            _registered.add(entry.gin_name)


def registered_names() -> frozenset[str]:
    return frozenset(_registered)


def unregistered_names() -> tuple[str, ...]:
    """Names (full and short, as config.gin writes them) of the entries not registered in this process: a gin file
    may name them (gin's skip_unknown) without their modules being imported."""
    missing = [entry for entry in TABLE if entry.gin_name not in _registered]
    return tuple(dict.fromkeys([e.gin_name for e in missing] + [e.name for e in missing]))
