"""Learning curves of CPU training recipes: full-track validation F1 against CPU minutes, one PNG and one table.

Each recipe is a `mt3 train` model dir whose checkpoints were scored with
`mt3 eval --checkpoint DIR --tasks local_notes_ties_vb1_validation --all-checkpoints --out DIR/eval_val`, plus the CPU
seconds the training process used per step (user + system time from `/usr/bin/time -v`, which counts the input
pipeline, compilation and checkpointing too, and does not count time the process waited for a shared core). The x axis
is then checkpoint step x CPU seconds per step: recipes that ran beside other work are still compared fairly.

    python -m benchmarks.learning_curves --run "baseline=runs/study/r1_baseline:0.556" ... \
        --out docs/cpu_recipes.png --table docs/cpu_recipes_table.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = (("onset_f1", "Onset F1"), ("multi_instrument_f1", "Multi-instrument F1"), ("drum_onset_f1", "Drum F1"))
TASK = "local_notes_ties_vb1_validation"


def load_curve(model_dir: Path, task: str = TASK) -> tuple[list[int], dict[str, list[float | None]]]:
    """(steps, {metric: values}) of one model dir: the sweep in MODEL_DIR/eval_val/results.json (`mt3 eval
    --all-checkpoints`) and/or single-step evals in MODEL_DIR/eval_val_*/results.json (`mt3 eval --step N`)."""
    points: dict[int, dict[str, float | None]] = {}
    sweep = model_dir / "eval_val" / "results.json"
    if sweep.is_file():
        results = json.loads(sweep.read_text())
        for i, step in enumerate(results["steps"]):
            points[int(step)] = {key: values[i] for key, values in results["curves"][task].items()}
    for single in sorted(model_dir.glob("eval_val_*/results.json")):
        results = json.loads(single.read_text())
        points[int(results["step"])] = results["tasks"][task]["metrics"]
    if not points:
        raise SystemExit(f"{model_dir}: no eval_val/results.json or eval_val_*/results.json")
    steps = sorted(points)
    return steps, {key: [points[s].get(key) for s in steps] for key, _ in METRICS}


def load_runs(dirs: str) -> tuple[list[int], dict[str, list[float | None]]]:
    """Several model dirs joined by '+' (a run continued in another dir) as one curve."""
    steps: list[int] = []
    curves: dict[str, list[float | None]] = {}
    for part in dirs.split("+"):
        more_steps, more = load_curve(Path(part))
        keep = [i for i, s in enumerate(more_steps) if s not in steps]
        steps += [more_steps[i] for i in keep]
        for key, values in more.items():
            curves.setdefault(key, []).extend(values[i] for i in keep)
    order = sorted(range(len(steps)), key=steps.__getitem__)
    return [steps[i] for i in order], {k: [v[i] for i in order] for k, v in curves.items()}


def parse_run(text: str) -> tuple[str, str, float]:
    name, _, rest = text.partition("=")
    dirs, _, seconds = rest.rpartition(":")
    if not (name and dirs and seconds):
        raise SystemExit(f"--run needs NAME=MODEL_DIR[+MODEL_DIR...]:CPU_SECONDS_PER_STEP, got {text!r}")
    return name, dirs, float(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR[+DIR]:CPU_S_PER_STEP",
                        help="a recipe: its model dir(s) ('+' joins a run continued elsewhere) and CPU s per step")
    parser.add_argument("--out", default="docs/cpu_recipes.png", help="PNG with one panel per metric")
    parser.add_argument("--table", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mt3.data.records import atomic_write

    runs = [parse_run(r) for r in args.run]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4), sharex=True)
    rows = ["| recipe | CPU s/step | step | CPU min | " + " | ".join(label for _, label in METRICS) + " |",
            "|---|---:|---:|---:|" + "---:|" * len(METRICS)]
    for name, dirs, cpu_per_step in runs:
        steps, curves = load_runs(dirs)
        minutes = [s * cpu_per_step / 60 for s in steps]
        for ax, (key, label) in zip(axes, METRICS, strict=True):
            values = [float("nan") if v is None else v for v in curves[key]]
            ax.plot(minutes, values, marker="o", label=name)
            ax.set_title(label)
            ax.set_xlabel("training CPU minutes")
            ax.grid(alpha=0.3)
        for step, minute, *values in zip(steps, minutes, *(curves[k] for k, _ in METRICS), strict=True):
            cells = " | ".join("–" if v is None else f"{v:.3f}" for v in values)
            rows.append(f"| {name} | {cpu_per_step:.2f} | {step} | {minute:.1f} | {cells} |")
    axes[0].set_ylabel("full-track F1, validation split")
    axes[-1].legend(fontsize=8)
    fig.suptitle("CPU recipes: validation F1 (full-track greedy decoding) vs training CPU minutes")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=110)
    table = "\n".join(rows) + "\n"
    print(table)
    if args.table:
        with atomic_write(args.table, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
