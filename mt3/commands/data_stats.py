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


def main(args: argparse.Namespace) -> int:
    from mt3.data import data_stats

    stats = data_stats.dataset_statistics(
        args.name, split=args.split, num_examples=args.num, seed=args.seed, data_dir=args.data_dir,
        task_feature_lengths={"inputs": args.inputs_length, "targets": args.targets_length})
    print(json.dumps(stats, indent=2) if args.json else data_stats.format_statistics(stats))
    return 0
