"""Loading a model directory written by `mt3 train` (or a bundled / imported one) for inference: its config.gin
rebuilds the model and says which vocabulary, ties, segment length, decode length and input level it was trained
with; orbax (or the bundle's own format) restores only the parameters.

Why apart from `mt3.inference`: decoding needs none of this (a server or a notebook may build an InferenceModel from
params in memory), and every command that reads a model dir (`transcribe`, `eval`, `serve`, `export-model`, the
trainer's full-track eval) goes through these few functions, so they are one small module.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mt3 import configurables, vocabularies
from mt3.errors import InputError
from mt3.inference import (
    DEFAULT_MAX_DECODE_LEN,
    InferenceConfig,
    InferenceModel,
    OutputSpec,
)
from mt3.training import compilation

INFER_GIN = "infer.gin"


def restore_params(model_dir: str | os.PathLike, model, step: int | None = None) -> tuple[Any, int]:
    """(params on the default device, step) from the orbax checkpoint at `step` (default: the latest).

    Only the parameters are read (orbax partial restore): the optimizer state, often as large again, stays on disk.
    """
    import jax
    import orbax.checkpoint as ocp

    from mt3 import pretrained
    from mt3.training import checkpoints

    if pretrained.is_bundled_model(model_dir):  # the package's own model: bf16 arrays + model.json, not orbax
        params, bundled_step = pretrained.load_params(model_dir, model.abstract_params(), step)
        return jax.device_put(params), bundled_step
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          {"params": model.abstract_params()})
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)

    def restore_step(s: int):
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            return checkpointer.restore(checkpoints.checkpoint_dir(model_dir) / str(s), args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)))

    # the newest step that restores; a cut-short one is named on one line and skipped (`checkpoints.restore_newest`)
    restored, step, _ = checkpoints.restore_newest(model_dir, restore_step, step=step, warn=_warn_bad_checkpoint)
    return restored["state"]["params"], step


def _warn_bad_checkpoint(bad) -> None:
    import sys

    print(f"mt3: warning: {bad.describe()}; trying an older one", file=sys.stderr, flush=True)


def spec_from_gin(model) -> OutputSpec:
    """The vocabulary / ties / segment length a model dir was trained with, from its config.gin macros.

    `mt3 train` presets record NUM_VELOCITY_BINS, USE_TIES, ONSETS_ONLY and TASK_FEATURE_LENGTHS; without them the
    embedding rows decide (1664 = ismir2021, else MT3), as MT3's checkpoints do.
    """
    from mt3 import gin_utils

    default = OutputSpec.for_vocab("ismir2021" if model.module.config.vocab_size == 1664 else "mt3")
    bins = gin_utils.query_macro("NUM_VELOCITY_BINS", default.vocab_config.num_velocity_bins)
    lengths = gin_utils.query_macro("TASK_FEATURE_LENGTHS", None) or {}
    return OutputSpec(vocab_config=vocabularies.VocabularyConfig(num_velocity_bins=int(bins)),
                      include_ties=bool(gin_utils.query_macro("USE_TIES", default.include_ties)),
                      input_frames=int(lengths.get("inputs", default.input_frames)),
                      onsets_only=bool(gin_utils.query_macro("ONSETS_ONLY", False)))


def parse_model_dir_gin(model_dir: str | os.PathLike, gin_files: Sequence[str | os.PathLike] = (),
                        gin_bindings: Sequence[str] = (), *, role_gin: str = INFER_GIN):
    """Parses MODEL_DIR/config.gin, then the role's gin file (infer.gin / eval.gin), then the user's files and
    bindings (later wins). Returns the model object gin builds from the MODEL macro."""
    import gin

    from mt3 import gin_utils, paths

    if paths.is_url(model_dir):  # gs://...: gin parses local files, so config.gin is read into a temporary copy
        paths.require(model_dir, "--checkpoint")
        if not paths.isfile(paths.join(model_dir, "config.gin")):
            raise InputError(model_dir, "no config.gin under this URL (expected a model dir written by `mt3 train`)")
        config_gin = _local_config_gin(model_dir)
    else:
        model_dir = Path(model_dir)
        config_gin = model_dir / "config.gin"
        if not model_dir.is_dir():
            raise InputError(model_dir, "checkpoint directory not found (expected a model dir written by `mt3 train`)")
        if not config_gin.is_file():
            raise InputError(model_dir, "no config.gin in the checkpoint directory (is it a model dir from `mt3 "
                                        "train`?)")
    given = {Path(f).name for f in gin_files}
    files = [config_gin, *([role_gin] if role_gin and role_gin not in given else []), *gin_files]
    gin_utils.parse_gin_flags(files, list(gin_bindings), finalize=False,
                              stages=configurables.SERVING_STAGES)  # no training loop needed
    try:
        reference = gin.query_parameter("MODEL/macro.value")
        model = reference.scoped_configurable_fn() if hasattr(reference, "scoped_configurable_fn") else reference
    except (ValueError, TypeError) as err:
        raise InputError(config_gin, f"cannot build the model from the MODEL macro ({err})") from err
    return model


def _local_config_gin(model_dir: str) -> Path:
    """A local copy of a URL model dir's config.gin (kept for the process: gin names the file in its messages)."""
    import atexit
    import shutil
    import tempfile

    from mt3 import paths

    folder = Path(tempfile.mkdtemp(prefix="mt3-model-config-"))
    atexit.register(shutil.rmtree, folder, True)
    local = folder / "config.gin"
    local.write_text(paths.read_text(paths.join(model_dir, "config.gin")))
    return local


def resolved_input_peak(config: InferenceConfig | None) -> float | None:
    """The peak (dBFS) a loaded model presents its input at, or None when it decodes the input as given."""
    peak = getattr(config, "input_peak_db", None)
    return float(peak) if isinstance(peak, (int, float)) and not isinstance(peak, bool) else None


def with_model_defaults(config: InferenceConfig) -> InferenceConfig:
    """`config` with the model-dependent defaults resolved from the parsed model config: decode length, input peak."""
    return with_model_input_peak(with_model_decode_length(config))


def with_model_input_peak(config: InferenceConfig) -> InferenceConfig:
    """`config` with input_peak_db 'model' replaced by the parsed model config's INPUT_PEAK_DB macro (None if absent:
    MT3's released models and models trained before the macro existed decode their input as given)."""
    if config.input_peak_db != "model":
        return config
    from mt3 import gin_utils

    return dataclasses.replace(config, input_peak_db=gin_utils.query_macro("INPUT_PEAK_DB", None))


def with_model_decode_length(config: InferenceConfig) -> InferenceConfig:
    """`config` with max_decode_len None replaced by the target length the parsed model config trained with
    (its TASK_FEATURE_LENGTHS['targets']), or MT3's 1024 when the config names none."""
    if config.max_decode_len is not None:
        return config
    from mt3 import gin_utils

    lengths = gin_utils.query_macro("TASK_FEATURE_LENGTHS", None) or {}
    return dataclasses.replace(config, max_decode_len=int(lengths.get("targets", DEFAULT_MAX_DECODE_LEN)))


def load_inference_model(model_dir: str | os.PathLike, *, gin_files: Sequence[str | os.PathLike] = (),
                         gin_bindings: Sequence[str] = (), step: int | None = None, role_gin: str = INFER_GIN,
                         config: InferenceConfig | None = None, batch_size: int | None = None) -> InferenceModel:
    """An InferenceModel from a model dir of `mt3 train`: its config.gin rebuilds the model and vocabulary settings,
    gin/infer.gin (+ extra --gin_file / --gin.X bindings) sets decoding, and orbax restores the parameters.

    `config` (if given) replaces the gin-bound InferenceConfig; `batch_size` (a command-line flag) overrides its batch.
    """
    import gin

    compilation.enable_compilation_cache()
    model = parse_model_dir_gin(model_dir, gin_files, gin_bindings, role_gin=role_gin)
    spec = spec_from_gin(model)
    if config is None:
        try:
            config = gin.get_configurable("inference.InferenceConfig")()
        except (ValueError, TypeError) as err:
            raise InputError(None, f"bad inference configuration: {err}") from err
    if batch_size is not None:
        config = dataclasses.replace(config, batch_size=batch_size)
    config = with_model_defaults(config)
    params, restored_step = restore_params(model_dir, model, step)
    from mt3 import paths

    info = {"model_dir": paths.absolute(model_dir) if paths.is_url(model_dir) else os.fspath(Path(model_dir).resolve()),
            "step": restored_step}
    return InferenceModel(model, params, spec=spec, config=config, info=info)
