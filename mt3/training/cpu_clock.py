"""A CPU clock for training runs on shared cores: samples a process's own CPU seconds (user + system, all threads,
from /proc/PID/stat) together with the model dir's newest checkpoint step, appending `wall_unix,cpu_seconds,step` to
MODEL_DIR/cpu_clock.csv every `--period` seconds until the process exits.

Why: wall time on a shared 2-core machine says more about the neighbours than about a recipe. CPU seconds of the
training process itself (input pipeline, compilation and checkpointing included; time spent waiting for a core not)
compare recipes fairly. Resumes continue the clock: each new sampler starts from the last CPU total in the file.

    python -m mt3.training.cpu_clock --pid PID --model-dir runs/study2/a0 [--period 20]
`benchmarks.learning_curves` reads the file (`cpu_minutes_at`) to put each evaluated checkpoint on a CPU-minutes axis.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

FILE = "cpu_clock.csv"


def process_cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent: done
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def newest_step(model_dir: Path) -> int:
    steps = [int(p.name) for p in (model_dir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=0)


def read_clock(model_dir: Path) -> list[tuple[float, float, int]]:
    path = Path(model_dir) / FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split(",")
        if len(parts) == 3 and parts[0][:1].isdigit():
            rows.append((float(parts[0]), float(parts[1]), int(parts[2])))
    return rows


def cpu_minutes_at(model_dir: Path, step: int) -> float | None:
    """CPU minutes the run had used when checkpoint `step` first appeared (None when the clock never saw it)."""
    for _, cpu, seen in read_clock(model_dir):
        if seen >= step:
            return cpu / 60.0
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--period", type=float, default=20.0)
    args = parser.parse_args(argv)
    rows = read_clock(args.model_dir)
    offset = rows[-1][1] if rows else 0.0
    args.model_dir.mkdir(parents=True, exist_ok=True)
    last = None
    with open(args.model_dir / FILE, "a", buffering=1) as f:
        while (cpu := process_cpu_seconds(args.pid)) is not None:
            last = (offset + cpu, newest_step(args.model_dir))
            f.write(f"{time.time():.0f},{last[0]:.1f},{last[1]}\n")
            time.sleep(args.period)
        # the checkpoint saved on exit (SIGTERM, end of a bounded run) appears after the last sample: one closing row
        # puts it on the clock at the last CPU total seen (at most one period short), so curves keep their last point
        if last is not None and newest_step(args.model_dir) > last[1]:
            f.write(f"{time.time():.0f},{last[0]:.1f},{newest_step(args.model_dir)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
