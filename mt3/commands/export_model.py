"""`mt3 export-model MODEL_DIR -o OUT [--overwrite] [--name NAME] [--step N] [--average-last K]`: a trained model
dir -> the bundled-model format.

Thin: `export_model` restores the checkpoint and `mt3.pretrained.write_bundle` writes the bundle (bf16 params.npz +
config.gin + model.json with a sha256). `-o` is required and must be new or empty; `--overwrite` replaces a folder only
when it is itself a bundle (never a folder of the user's files). Why no default: writing into the package's own
`mt3/pretrained/local_cpu` silently replaced the model that `mt3 transcribe` / `serve` / `load_model()` use; doing that
now takes `-o mt3/pretrained/local_cpu --overwrite` and prints a line saying so. The target is checked before the
checkpoint is restored, so a bad -o costs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mt3 import pretrained

    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model dir written by `mt3 train`")
    parser.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="bundle folder to create (must not exist, or be empty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DIR if it already holds a bundled model (and nothing else)")
    parser.add_argument("--name", default=pretrained.DEFAULT_MODEL_NAME,
                        help=f"model name recorded in model.json (default {pretrained.DEFAULT_MODEL_NAME})")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--average-last", type=int, default=1, metavar="K",
                        help="average the parameters of the K newest checkpoints up to --step (default 1: none)")
    parser.add_argument("--info", action="append", default=[], metavar="KEY=VALUE",
                        help="extra model.json entries, e.g. --info recipe=gin/local_cpu.gin (repeatable)")


def export_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, name: str, step: int | None = None,
                 extra_info: Mapping[str, Any] | None = None, overwrite: bool = False,
                 average_last: int = 1) -> dict[str, Any]:
    """Checkpoint `step` (default: the latest) of a `mt3 train` model dir -> a bundled model in `out_dir` (new or
    empty; an existing bundle only with `overwrite`).

    `average_last` K > 1 writes the mean of the K newest checkpoints up to `step` instead (checkpoint averaging, as
    Vaswani et al. 2017 did for the Transformer): at a constant learning rate, neighbouring checkpoints of a small
    model differ by more than their training progress, and their mean sits nearer the middle of that noise. model.json
    records the averaged steps; `step` is the newest of them."""
    import jax
    import numpy as np

    from mt3 import model_loading, pretrained
    from mt3.errors import InputError
    from mt3.training import checkpoints

    pretrained.check_bundle_target(out_dir, overwrite=overwrite)  # before the (slow) restore
    model = model_loading.parse_model_dir_gin(model_dir)
    if average_last < 1:
        raise InputError(model_dir, f"--average-last must be >= 1, got {average_last}")
    extra_info = dict(extra_info or {})
    if average_last == 1:
        params, step = model_loading.restore_params(model_dir, model, step)
    else:
        steps = [s for s in checkpoints.complete_steps(model_dir) if step is None or s <= step][-average_last:]
        if len(steps) < average_last:
            raise InputError(model_dir, f"--average-last {average_last}: only {len(steps)} checkpoints "
                                        f"{steps} up to step {step if step is not None else 'latest'}")
        trees = [jax.device_get(model_loading.restore_params(model_dir, model, s)[0]) for s in steps]
        params = jax.tree.map(lambda *leaves: np.mean(np.stack(leaves).astype(np.float64), axis=0), *trees)
        step = steps[-1]
        extra_info["averaged_steps"] = steps
    from mt3 import paths

    return pretrained.write_bundle(jax.device_get(params), paths.join(model_dir, pretrained.CONFIG_FILE), out_dir,
                                   name=name, step=step, extra_info=extra_info, overwrite=overwrite)


def main(args: argparse.Namespace) -> int:
    from mt3 import pretrained
    from mt3.errors import InputError

    extra = {}
    for item in args.info:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(None, f"--info needs KEY=VALUE, got {item!r}")
        extra[key] = value
    out = Path(args.out)
    pretrained.check_bundle_target(out, overwrite=args.overwrite)
    if out.resolve() == (pretrained.BUNDLED_DIR / pretrained.DEFAULT_MODEL_NAME).resolve():
        print(f"mt3 export-model: replacing the package's default model {out}: `mt3 transcribe`, `mt3 serve` and "
              "`mt3.load_model()` will use this one", flush=True)
    info = export_model(args.model_dir, out, name=args.name, step=args.step, extra_info=extra,
                        overwrite=args.overwrite, average_last=args.average_last)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"mt3 export-model: {args.model_dir} step {info['step']} -> {out} ({info['num_params']:,} params, "
          f"{size / 1e6:.1f} MB, sha256 {info['params_sha256'][:16]})")
    print(json.dumps(info, indent=2))
    return 0
