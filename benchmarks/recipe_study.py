"""The recipe study of issue 16: arms' checkpoints scored on the held-out selection set, against training CPU minutes.

Each arm is a model dir written by `scripts/study_arm.sh` (a continuation of the bundled model's training checkpoint
with some levers on), with its CPU clock (`mt3/training/cpu_clock.py`: the training process's own CPU seconds when each
checkpoint appeared). Every `--every`-th checkpoint is scored once by full-track decoding on the `timbre` set of
`benchmarks/heldout.py` (validation pieces, a synth never used in training or test) at 0 dB and at -30 dB, ours only;
scores are cached in MODEL_DIR/heldout_eval/step_N.json, so the script can be rerun while arms train. Selection
happens on this validation set only; the MuseScore test sets are for reporting the chosen recipe.

    python -m benchmarks.recipe_study --arm "baseline=runs/study2/a0_baseline" --arm "augment=runs/study2/a1_augment" \
        [--every 2] [--max-tracks N] --out docs/recipe_study.png --table docs/recipe_study_table.md
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

LEVELS = ((0.0, "0 dB"), (-30.0, "-30 dB"))
METRICS = (("onset_f1", "onset F1"), ("onset_offset_f1", "onset+offset F1"), ("multi_instrument_f1", "multi-instr. F1"))


def score_step(model_dir: Path, step: int, root: Path, max_tracks: int | None) -> dict:
    """Scores (cached) of one checkpoint on the timbre set at each level."""
    from benchmarks import compare_peers
    from mt3 import api
    from mt3.data import records

    cache = model_dir / "heldout_eval" / f"step_{step}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    # the input as given, whatever the arm's config says about INPUT_PEAK_DB: the -30 dB column measures the
    # network's own level robustness (inference-time normalisation would make it equal the 0 dB column for any arm)
    transcriber = api.load_model(model_dir, step=step, gin_bindings=["inference.InferenceConfig.input_peak_db = None"])
    out: dict = {"step": step, "levels": {}}
    for db, label in LEVELS:
        run_args = argparse.Namespace(data_dir=root / "timbre", split="test", max_tracks=max_tracks, checkpoint=None,
                                      basic_pitch_python=None, gain_db=db, peer=False, transcriber=transcriber)
        report = compare_peers.run(run_args)
        mean = report["systems"][0]["mean"]
        out["levels"][label] = {k: mean.get(k) for k, _ in METRICS}
        out["tracks"] = report["data"]["tracks"]
    records.atomic_write_json(cache, out)
    return out


def cached_steps(model_dir: Path) -> set[int]:
    """Steps whose scores `score_step` has cached in MODEL_DIR/heldout_eval (checkpoint kept or not)."""
    return {int(p.stem.removeprefix("step_")) for p in (model_dir / "heldout_eval").glob("step_*.json")
            if p.stem.removeprefix("step_").isdigit()}


def main(argv=None) -> int:
    from mt3.training import cpu_clock
    from mt3.training.checkpoints import complete_steps

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", action="append", required=True, metavar="NAME=MODEL_DIR")
    parser.add_argument("--root", type=Path, default=Path("data/heldout"), help="benchmarks/heldout.py's sets")
    parser.add_argument("--every", type=int, default=2, help="score every N-th checkpoint (and the newest)")
    parser.add_argument("--max-tracks", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/recipe_study.png"))
    parser.add_argument("--table", type=Path, default=Path("docs/recipe_study_table.md"))
    parser.add_argument("--title", default="Recipe study", help="the figure's title, before the set's name")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mt3.data.records import atomic_write

    arms = [(name, Path(d)) for name, _, d in (a.partition("=") for a in args.arm)]
    rows = ["| arm | step | CPU min | " + " | ".join(f"{label} {lv}" for _, lv in LEVELS for _, label in METRICS[:2])
            + f" | {METRICS[2][1]} 0 dB |", "|---|---:|---:|" + "---:|" * (2 * len(LEVELS) + 1)]
    fig, axes = plt.subplots(1, len(LEVELS) + 1, figsize=(5 * (len(LEVELS) + 1), 4), sharex=True)
    for name, model_dir in arms:
        # a long run keeps only its newest checkpoints: the steps scored while it trained stay in its score cache
        steps = sorted(set(complete_steps(model_dir)) | cached_steps(model_dir))
        first = steps[0] if steps else 0
        chosen = sorted({s for i, s in enumerate(steps) if i % args.every == 0} | set(steps[-1:]))
        points = []
        for step in chosen:
            minutes = cpu_clock.cpu_minutes_at(model_dir, step)
            if minutes is None and step == first:
                minutes = 0.0
            if minutes is None:
                continue
            print(f"{name}: step {step} ({minutes:.1f} CPU min)", flush=True)
            points.append((minutes, score_step(model_dir, step, args.root, args.max_tracks)))
        for minutes, res in points:
            cells = [res["levels"][lv][k] for _, lv in LEVELS for k, _ in METRICS[:2]]
            cells.append(res["levels"][LEVELS[0][1]][METRICS[2][0]])
            rows.append(f"| {name} | {res['step']} | {minutes:.1f} | "
                        + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |")
        xs = [m for m, _ in points]
        for ax, (_, lv) in zip(axes, LEVELS, strict=False):
            ax.plot(xs, [r["levels"][lv]["onset_f1"] for _, r in points], marker="o", label=name)
            ax.set_title(f"onset F1, timbre set, {lv}")
        axes[-1].plot(xs, [r["levels"][LEVELS[0][1]]["multi_instrument_f1"] for _, r in points], marker="o",
                      label=name)
        axes[-1].set_title("multi-instrument F1, timbre set, 0 dB")
    for ax in axes:
        ax.set_xlabel("training CPU minutes (the run's clock)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"{args.title}: held-out timbre set (validation pieces, TiMidity++ + freepats), full-track F1")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as f:
        fig.savefig(f, format="png", dpi=110)
    table = "\n".join(rows) + "\n"
    with atomic_write(args.table, "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
