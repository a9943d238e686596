"""`mt3 eval --checkpoint DIR --gin_file=gin/eval.gin [--tasks T1,T2 | --mixture M] [--split S] [--out DIR]
[--all-checkpoints] [--max-tracks N]`: full-track inference + MT3's metrics -> results.json, results.md, PNGs, MIDI.

Thin: `mt3.evaluation.run_eval` does the work; this module parses flags and prints the headline table.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, metavar="DIR",
                        help="model dir written by `mt3 train` (default: the bundled model, else runs/local_tiny)")
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="gin file read after DIR/config.gin (gin/eval.gin is always read; repeatable)")
    parser.add_argument("--tasks", default=None, metavar="T1,T2",
                        help="comma-separated eval task names, e.g. local_notes_ties_vb1_test")
    parser.add_argument("--mixture", default=None, metavar="M", help="an eval mixture, e.g. mega_notes_ties_vb1_eval")
    parser.add_argument("--split", default=None, metavar="S",
                        help="evaluate this prepared split instead of each task's own (e.g. train, validation)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output dir and TensorBoard logdir (default: CHECKPOINT/infer_eval/step_N, with "
                             "--all-checkpoints CHECKPOINT/infer_eval: beside training's train/ and eval/ summaries; "
                             "scalars TASK/metric at the checkpoint's step)")
    parser.add_argument("--all-checkpoints", action="store_true",
                        help="evaluate every checkpoint step (OUT/step_N/) and plot each metric against step")
    parser.add_argument("--step", type=int, default=None, help="evaluate this checkpoint step (default: the latest)")
    parser.add_argument("--max-tracks", type=int, default=None, metavar="N", help="first N tracks of each split")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N", help="segments decoded together")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    from mt3.commands.train import add_module_import_argument

    add_module_import_argument(parser)
    parser.set_defaults(gin_bindings=[])


def main(args: argparse.Namespace) -> int:
    from mt3.errors import InputError
    from mt3.evaluation import HEADLINE_METRICS, run_eval
    from mt3.transcription import resolve_model_dir

    if args.max_tracks is not None and args.max_tracks < 1:
        raise InputError(None, f"--max-tracks must be >= 1, got {args.max_tracks}")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(None, f"--batch-size must be >= 1, got {args.batch_size}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else []
    checkpoint = resolve_model_dir(args.checkpoint, "eval")
    result = run_eval(checkpoint, tasks=tasks, mixture=args.mixture, split=args.split, out_dir=args.out,
                      all_checkpoints=args.all_checkpoints, step=args.step, max_tracks=args.max_tracks,
                      batch_size=args.batch_size, gin_files=args.gin_file, gin_bindings=args.gin_bindings,
                      progress=not args.no_progress, module_imports=args.module_import)
    per_step = result["results"] if "steps" in result else {result["step"]: result}
    for step, results in sorted(per_step.items()):
        for name, task in results["tasks"].items():
            m = task["metrics"]
            values = ", ".join(f"{label} {'-' if m.get(key) is None else format(m[key], '.4f')}"
                               for label, key in HEADLINE_METRICS)
            print(f"step {step} {name} ({task['num_tracks']} tracks): {values}")
    reports = sorted({r["out_dir"] for r in per_step.values() if r.get("out_dir")})
    logdirs = sorted({r["summary_dir"] for r in per_step.values() if r.get("summary_dir")})
    if reports:
        print(f"mt3 eval: reports in {', '.join(reports)}; TensorBoard scalars (TASK/metric per checkpoint step) in "
              f"{', '.join(logdirs)}")
    return 0
