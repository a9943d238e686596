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
    parser.set_defaults(gin_bindings=[])


def main(args: argparse.Namespace) -> int:
    from mt3 import gin_utils
    from mt3.errors import InputError
    from mt3.training import train

    if not args.gin_file:
        raise InputError(None, "no gin config: pass --gin_file=gin/mt3.gin (or local_tiny.gin, ismir2021.gin, ...)")
    flags = gin_utils.parse_gin_flags(args.gin_file, args.gin_bindings, search_paths=args.gin_search_path,
                                      model_dir=args.model_dir)
    gin_utils.build_bound_references("train_script.train")  # bad values first: they are the user's last edit
    check_before_writing()
    train.train_from_gin(flags, allow_config_change=args.allow_config_change)
    return 0


def check_before_writing() -> None:
    """What would otherwise fail after config.gin, gin/ and checkpoints/ are written (and ~15 s of start-up): a model
    dir that is a file or cannot be written, an unknown task or mixture (named with the closest registered names),
    and a training split that is not prepared. Reads the parsed gin macros; InputError on the first problem."""
    import difflib

    from mt3 import gin_utils
    from mt3.errors import InputError
    from mt3.output_dirs import check_writable_dir

    model_dir = gin_utils.query_macro(gin_utils.MODEL_DIR_MACRO)
    if model_dir:
        check_writable_dir(model_dir, "--model_dir")
    if gin_utils.query_macro("DATA_SOURCE") == "synthetic":
        return
    name = gin_utils.query_macro("MIXTURE_OR_TASK_NAME")
    if not isinstance(name, str):
        return
    import seqio

    from mt3 import datasets, tasks  # noqa: F401  (registers the tasks and mixtures)

    registered = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3, cutoff=0.5)
        common = [n for n in ("local_notes_ties_vb1_train", "mega_notes_ties_vb1_train", "maestrov3_notes_train")
                  if n in registered]
        hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(common or registered[:3])}"
        raise InputError(None, f"MIXTURE_OR_TASK_NAME: unknown task or mixture {name!r} ({hint}); "
                               f"{len(registered)} are registered in mt3/tasks.py")
    with datasets.data_dir_override(gin_utils.query_macro("DATA_DIR")):
        for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
            task.source.list_shards("train")  # InputError naming the folder when the split is not prepared
