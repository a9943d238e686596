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
    parser.set_defaults(gin_bindings=[])


def main(args: argparse.Namespace) -> int:
    from mt3 import gin_utils, train  # importing train registers train_script.train & co. with gin
    from mt3.errors import InputError

    if not args.gin_file:
        raise InputError(None, "no gin config: pass --gin_file=gin/mt3.gin (or local_tiny.gin, ismir2021.gin, ...)")
    flags = gin_utils.parse_gin_flags(args.gin_file, args.gin_bindings, search_paths=args.gin_search_path,
                                      model_dir=args.model_dir)
    train.train_from_gin(flags)
    return 0
