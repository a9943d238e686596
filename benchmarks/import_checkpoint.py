"""Benchmark: seconds and peak memory of `mt3 import-checkpoint` on an MT3-size T5X checkpoint (45,896,704 params).

The checkpoint is written by tests/t5x_fixture.py in the released layout (msgpack + one gzip zarr folder per array,
small arrays and factored Adafactor statistics inline) with random float32 parameters: reading cost depends on bytes,
not on what the weights learned. Each import runs in a fresh process (`python -m mt3.cli import-checkpoint ...`),
so its wall time includes starting Python and importing JAX, and its peak RSS (ru_maxrss of the child) is the whole
process's. A baseline process that only imports JAX/flax/orbax is measured the same way, so the difference is what
the import itself holds: the parameters once as numpy, once as JAX arrays, plus orbax's write buffers.

Usage: .venv/bin/python -m benchmarks.import_checkpoint [--preset mt3|ismir2021] [--form file] [--repeats 2]
       [--workdir DIR] [--json]
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]  # benchmarks/tokenize.py shadowing
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))  # the fixture writer

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def _child(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one fresh child process. ru_maxrss of RUSAGE_CHILDREN is the max
    over children waited for so far, so each measurement runs in its own intermediate process."""
    probe = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
             "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(json.dumps({'rc': p.returncode, 'seconds': time.perf_counter() - t, 'out': p.stdout, "
             "'err': p.stderr[-2000:], 'kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    if report["rc"] != 0:
        raise SystemExit(f"command failed ({report['rc']}): {' '.join(argv)}\n{report['err']}")
    return report["seconds"], report["kib"] / 1024.0, report["out"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="mt3", choices=("mt3", "ismir2021"))
    parser.add_argument("--form", default="file", help="storage form of the written checkpoint (t5x_fixture)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from t5x_fixture import adafactor_statistics, write_t5x_checkpoint

    from mt3.models import models
    from mt3.training.checkpoint_import import build_preset_model

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mt3_import_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    model, _, _ = build_preset_model(args.preset, model_dir=work / "unused")
    from flax.traverse_util import flatten_dict

    shapes = flatten_dict(model.abstract_params(), sep="/")
    rng = np.random.default_rng(0)
    params = {name: (rng.standard_normal(s.shape, dtype=np.float32) * 0.05) for name, s in shapes.items()}
    num_params = models.count_params(params)
    src = work / args.preset
    shutil.rmtree(src, ignore_errors=True)
    started = time.perf_counter()
    write_t5x_checkpoint(src, params, step=1_000_000, param_states=adafactor_statistics(params), form=args.form)
    write_seconds = time.perf_counter() - started
    disk_mib = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / 2**20
    del params

    baseline_s, baseline_mib, _ = _child([sys.executable, "-c", "import jax, flax, optax, orbax.checkpoint, gin"])
    runs = []
    for i in range(args.repeats):
        out = work / f"model_{i}"
        shutil.rmtree(out, ignore_errors=True)
        seconds, peak_mib, stdout = _child([sys.executable, "-m", "mt3.cli", "import-checkpoint", str(src),
                                            "--preset", args.preset, "-o", str(out)])
        info = json.loads((out / "import.json").read_text())
        runs.append({"wall_seconds": round(seconds, 2), "import_seconds": round(info["seconds"], 2),
                     "peak_rss_mib": round(peak_mib, 1), "optimizer_state": info["optimizer_state"]})
        shutil.rmtree(out, ignore_errors=True)
    result = {"preset": args.preset, "form": args.form, "params": num_params, "arrays": len(shapes),
              "checkpoint_mib_on_disk": round(disk_mib, 1), "write_fixture_seconds": round(write_seconds, 2),
              "baseline_process": {"seconds": round(baseline_s, 2), "peak_rss_mib": round(baseline_mib, 1)},
              "runs": runs, "cpus": os.cpu_count()}
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.preset}: {num_params:,} params in {len(shapes)} arrays, {disk_mib:.0f} MiB on disk "
          f"({args.form} form)")
    print(f"  baseline process (import jax/flax/optax/orbax): {baseline_s:.1f} s, peak RSS {baseline_mib:.0f} MiB")
    for i, run in enumerate(runs):
        print(f"  import run {i}: {run['wall_seconds']:.1f} s wall ({run['import_seconds']:.1f} s inside "
              f"import_checkpoint), peak RSS {run['peak_rss_mib']:.0f} MiB, optimizer {run['optimizer_state']}")


if __name__ == "__main__":
    main()
