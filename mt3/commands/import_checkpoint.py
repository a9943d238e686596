"""`mt3 import-checkpoint SRC_DIR --preset {mt3,ismir2021} -o MODEL_DIR [--step N]`.

Thin: `mt3.training.checkpoint_import.import_checkpoint` does the work. SRC_DIR is a T5X checkpoint as Magenta
released it
(`gsutil -m cp -r gs://mt3/checkpoints/mt3 .` -> `mt3/`), or a T5X model dir holding checkpoint_N/ folders.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC_DIR", help="T5X checkpoint folder (holding the 'checkpoint' msgpack)")
    parser.add_argument("--preset", default="mt3", metavar="{mt3,ismir2021}|FILE.gin",
                        help="the network and vocabulary the checkpoint was trained with (gin/mt3.gin, "
                             "gin/ismir2021.gin) or a gin file of your own (default: mt3)")
    parser.add_argument("-o", "--output", required=True, metavar="MODEL_DIR",
                        help="model dir to create (must not exist, or be empty)")
    parser.add_argument("--step", type=int, default=None,
                        help="which checkpoint_N of a T5X model dir (default: the latest); for a single checkpoint "
                             "folder, the step it must hold")
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="extra gin file read after the preset (repeatable), e.g. a model-size override")
    parser.add_argument("--workers", type=int, default=None, help="threads reading arrays (default: min(8, CPUs))")
    parser.set_defaults(gin_bindings=[])


def main(args: argparse.Namespace) -> int:
    from mt3.training.checkpoint_import import import_checkpoint

    result = import_checkpoint(args.src, args.output, preset=args.preset, gin_files=args.gin_file,
                               gin_bindings=args.gin_bindings, step=args.step, workers=args.workers)
    print(f"mt3 import-checkpoint: imported {result.source} (T5X version {result.version}, step {result.step:,}) "
          f"as preset {result.preset}")
    print(f"  parameters: {result.num_params:,} in {result.num_arrays} arrays, sha256 {result.checksum[:16]}")
    if result.optimizer_state == "converted":
        print(f"  optimizer: MT3's Adafactor statistics converted into optax Adafactor state (count {result.step:,})")
    else:
        print(f"  optimizer: {result.optimizer_state.replace('fresh:', 'fresh optimizer state:', 1)}")
    print(f"  wrote {result.model_dir} (config.gin, checkpoints/{result.step}, import.json) in {result.seconds:.1f} s")
    print(f"  next: mt3 transcribe AUDIO -o OUT_DIR --checkpoint {result.model_dir}")
    return 0
