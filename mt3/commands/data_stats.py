"""`mt3 data-stats TASK_OR_MIXTURE --split S --num N [--json]`."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="seqio task or mixture, e.g. local_notes_ties_vb1_train")
    parser.add_argument("--split", default="train",
                        help="seqio split: 'train' or 'eval' for a *_train task (eval = its train-eval split, e.g. "
                             "validation), 'eval' for a *_validation/*_test task (default train)")
    parser.add_argument("--num", type=int, default=100, help="examples to read")
    parser.add_argument("--inputs-length", type=int, default=256, help="input frames per example (MT3: 256)")
    parser.add_argument("--targets-length", type=int, default=1024, help="target tokens per example (MT3: 1024)")
    parser.add_argument("--data-dir", default=None, help="prepared data root (default: $MT3_DATA_DIR or data/prepared)")
    parser.add_argument("--seed", type=int, default=0,
                        help="shuffle and random-crop seed: the same seed reads the same examples (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="gin files of the run (repeatable): their MIXTURES, MIXTURE_OR_TASK_MODULE, DATA_DIR "
                             "and audio mixing/augmentation are read as training reads them, e.g. "
                             "gin/mixtures/local_3to1.gin")
    from mt3.commands.train import add_module_import_argument

    add_module_import_argument(parser)
    parser.set_defaults(gin_bindings=[])


def main(args: argparse.Namespace) -> int:
    from mt3.data import data_stats

    options = load_registry_from_flags(args)
    stats = data_stats.dataset_statistics(
        args.name, split=args.split, num_examples=args.num, seed=args.seed,
        data_dir=args.data_dir or options.pop("data_dir", None),
        task_feature_lengths={"inputs": args.inputs_length, "targets": args.targets_length}, **options)
    print(json.dumps(stats, indent=2) if args.json else data_stats.format_statistics(stats))
    return 0


def load_registry_from_flags(args: argparse.Namespace) -> dict:
    """`--module_import`, then the gin files and bindings (MIXTURE_OR_TASK_MODULE, MIXTURES), then the registry.
    Returns what the gin config says about the data (data_dir, mix_config, augment_config) for a reader that should
    see training's examples ({} without gin)."""
    from mt3 import configurables, gin_utils, registry

    registry.import_modules(args.module_import)
    if not (args.gin_file or args.gin_bindings):
        registry.load(data_dir=args.data_dir)
        return {}
    import gin

    gin_utils.parse_gin_flags(args.gin_file, args.gin_bindings, finalize=False,
                              stages=configurables.SERVING_STAGES)  # the data configs, not the training loop
    gin_utils.load_registry(data_dir=args.data_dir)
    options = {"data_dir": gin_utils.query_macro("DATA_DIR")}
    for key, configurable in (("mix_config", "mixing.MixConfig"), ("augment_config", "augmentation.AugmentConfig")):
        options[key] = gin.get_configurable(configurable)()
    return options
