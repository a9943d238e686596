"""`mt3 train --gin_file=gin/mt3.gin [--gin_file=...] [--gin.NAME=VALUE ...] --model_dir DIR`.

Resumes from the latest checkpoint in DIR by default. Gin problems are reported (exit code 2) before anything heavy
starts. Multi-host: start one process per host (see launch/README.md); JAX's distributed runtime is initialised from
the launcher's environment.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="gin config file (repeatable; searched in the working directory, then the package gin/)")
    parser.add_argument("--gin_search_path", action="append", default=[], metavar="DIR",
                        help="extra directory to search for gin files and their includes (repeatable)")
    parser.add_argument("--model_dir", default=None,
                        help="where checkpoints, summaries and config.gin go (same as --gin.MODEL_DIR='\"DIR\"')")
    parser.add_argument("--allow_config_change", action="store_true",
                        help="resume although the model, vocabulary, task/mixture or batch size differ from the "
                             "run's previous config (refused otherwise; recorded in MODEL_DIR/runs/)")
    add_module_import_argument(parser)
    parser.set_defaults(gin_bindings=[])


def add_module_import_argument(parser: argparse.ArgumentParser) -> None:
    """T5X's `--module_import`: modules that register tasks/mixtures (or gin configurables), imported first."""
    parser.add_argument("--module_import", action="append", default=[], metavar="MODULE",
                        help="import this module before gin and the task registry are read, e.g. my_project.tasks "
                             "(repeatable; T5X's flag; the gin macro MIXTURE_OR_TASK_MODULE does the same)")


def main(args: argparse.Namespace) -> int:
    from mt3 import gin_utils
    from mt3.errors import InputError
    from mt3.training import train

    if not args.gin_file:
        raise InputError(None, "no gin config: pass --gin_file=gin/mt3.gin (or local_tiny.gin, ismir2021.gin, ...)")
    if args.module_import:
        from mt3 import registry

        registry.import_modules(args.module_import)
    flags = gin_utils.parse_gin_flags(args.gin_file, args.gin_bindings, search_paths=args.gin_search_path,
                                      model_dir=args.model_dir)
    gin_utils.build_bound_references("train_script.train")  # bad values first: they are the user's last edit
    check_before_writing()
    try:
        train.train_from_gin(flags, allow_config_change=args.allow_config_change)
    except Exception as err:  # noqa: BLE001 - only an out-of-memory error is translated; the rest propagate as they are
        message = out_of_memory_message(err)
        if message is None:
            raise
        raise InputError(None, message) from err
    return 0


def out_of_memory_message(err: BaseException) -> str | None:
    """One line for XLA's out-of-memory error (otherwise a long traceback ending in 'Out of memory allocating N
    bytes', repeated once per dispatch level), naming the knobs that size a step; None for any other error. Why here:
    the usual cause is a recipe sized for an accelerator (gin/local.gin, gin/mt3.gin) started on a laptop."""
    import re

    text = str(err)
    if "RESOURCE_EXHAUSTED" not in text and "Out of memory" not in text:
        return None
    found = re.search(r"allocating (\d+) bytes", text)
    size = f" (XLA could not allocate {int(found.group(1)) / 2**30:.1f} GiB)" if found else ""
    return (f"the training step ran out of device memory{size}: lower BATCH_SIZE, split each batch with "
            "NUM_MICROBATCHES=K (same batch, 1/K of the activations), or shorten TASK_FEATURE_LENGTHS; "
            "gin/local.gin and gin/mt3.gin are sized for accelerators, gin/local_cpu.gin and gin/local_tiny.gin "
            "for a CPU")


def check_before_writing() -> None:
    """What would otherwise fail after config.gin, gin/ and checkpoints/ are written (and ~15 s of start-up): a model
    dir that is a file or cannot be written, an unknown task or mixture (named with the closest registered names), a
    mixture the indexed sampler cannot read (why, and the fix), and a training split that is not prepared. Reads the
    parsed gin macros (MIXTURE_OR_TASK_MODULE and MIXTURES register first); InputError on the first problem."""
    from mt3 import gin_utils
    from mt3.errors import InputError
    from mt3.output_dirs import check_writable_dir

    model_dir = gin_utils.query_macro(gin_utils.MODEL_DIR_MACRO)
    if model_dir:
        check_writable_dir(model_dir, "--model_dir")  # a gs:// dir: is its library (gcsfs) installed?
    if gin_utils.query_macro("DATA_SOURCE") == "synthetic":
        return
    from mt3 import datasets, paths

    data_root = datasets.resolve_data_dir(gin_utils.query_macro("DATA_DIR"))
    paths.require(data_root, "DATA_DIR" if gin_utils.query_macro("DATA_DIR") else f"${datasets.DATA_DIR_ENV}")
    name = gin_utils.query_macro("MIXTURE_OR_TASK_NAME")
    if not isinstance(name, str):
        return
    import gin

    from mt3 import registry

    gin_utils.load_registry()  # MIXTURE_OR_TASK_MODULE, MIXTURES
    data_dir = gin_utils.query_macro("DATA_DIR")
    try:
        pipeline = gin.query_parameter("train/utils.DatasetConfig.pipeline")
    except ValueError:
        pipeline = "indexed"
    try:
        if pipeline == "indexed":  # one line with the fix when the indexed sampler cannot read it
            subtasks = [registry.get(m.task) for m in registry.training_members(name, data_dir=data_dir)]
        else:
            import seqio

            subtasks = seqio.get_subtasks(registry.get(name))
    except InputError as err:
        raise InputError(None, f"MIXTURE_OR_TASK_NAME: {err.problem}") from err
    with datasets.data_dir_override(data_dir):
        for task in subtasks:
            task.source.list_shards("train")  # InputError naming the folder when the split is not prepared
