"""Resume cost: seconds from `mt3 train` process start to the first trained step after resuming at step 0, 1k, 10k.

For each input pipeline ('seqio': rebuild + skip the consumed batches, what checkpoints without a pipeline state do;
'indexed': the index-based sampler's stored position) and each step N, a checkpoint of gin/local_tiny.gin's model is
written at step N with the data position of N batches (batch 8), then `mt3 train` resumes it for one step. The first
step is over when train.py writes operative_config.gin (its after-first-step hook); that file's mtime minus the
process start is the number. Step 0 is a fresh start (no checkpoint). Faking the checkpoint instead of training N
steps is exact for this purpose: the resume cost depends on the position, not on the weights.

    python -m benchmarks.resume [--steps 0 1000 10000] [--data-dir data/prepared] [--pipelines seqio indexed]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 8
GIN = "gin/local_tiny.gin"


def indexed_position(steps: int, data_dir: str) -> dict:
    """The stored position of an indexed stream after `steps` batches of 8 (walked by block sizes, no examples made
    past the last block)."""
    from mt3.training import input_pipeline, train

    cfg = train.DatasetConfig(mixture_or_task_name="local_mix_notes_ties_vb1_train",
                              task_feature_lengths={"inputs": 256, "targets": 256}, batch_size=BATCH,
                              data_dir=data_dir)
    stream = input_pipeline.make_batch_iterator(cfg, host_batch_size=BATCH, shard_id=0, num_shards=1)
    # block sizes are chunk counts (one crop per 2000-frame chunk): from the first block's examples per record
    per_block = len(stream.block_examples(0, 0))
    stream.close()
    examples = steps * BATCH
    block, offset = divmod(examples, per_block)
    return input_pipeline.IndexedPosition(block, offset, (block,)).to_json()


def write_checkpoint(model_dir: Path, steps: int, state_json: dict | None) -> None:
    import jax.numpy as jnp

    from mt3.training import checkpoints, partitioning, trainer
    from mt3.training.checkpoint_import import build_preset_model

    model, optimizer_cfg, _ = build_preset_model(str(REPO / GIN), model_dir=model_dir)
    tr = trainer.Trainer(model, optimizer_cfg, partitioning.Partitioner())
    state = tr.init_state(0).replace(step=jnp.asarray(steps, jnp.int32))
    ckpt = checkpoints.Checkpointer(model_dir, checkpoints.CheckpointConfig(async_save=False))
    extra = {"data_states": [state_json]} if state_json is not None else None
    ckpt.save(state, data_position=steps, force=True, extra=extra)
    ckpt.close()


def time_to_first_step(model_dir: Path, steps: int, pipeline: str, data_dir: str) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MT3_DATA_DIR": data_dir}
    args = [sys.executable, "-m", "mt3.cli", "train", f"--gin_file={GIN}", f"--model_dir={model_dir}",
            f"--gin.TRAIN_STEPS={steps + 1}", "--gin.EVAL_PERIOD=0", "--gin.MAX_TRAIN_SECONDS=None",
            f"--gin.train/utils.DatasetConfig.pipeline='{pipeline}'"]
    started = time.time()
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return (model_dir / "operative_config.gin").stat().st_mtime - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 1000, 10000])
    parser.add_argument("--pipelines", nargs="+", default=["seqio", "indexed"])
    parser.add_argument("--data-dir", default=str(REPO / "data" / "prepared"))
    args = parser.parse_args()
    rows = []
    root = Path(tempfile.mkdtemp(prefix="mt3_resume_bench_"))
    try:
        for pipeline in args.pipelines:
            for steps in args.steps:
                model_dir = root / f"{pipeline}_{steps}"
                if steps:
                    state = indexed_position(steps, args.data_dir) if pipeline == "indexed" else None
                    write_checkpoint(model_dir, steps, state)
                seconds = time_to_first_step(model_dir, steps, pipeline, args.data_dir)
                rows.append((pipeline, steps, seconds))
                print(f"{pipeline:8s} step {steps:>6,}: {seconds:6.1f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n| pipeline | resume at step | s to first trained step | vs fresh start |\n|---|---:|---:|---:|")
    fresh = {p: s for p, n, s in rows if n == 0}
    for pipeline, steps, seconds in rows:
        ratio = f"{seconds / fresh[pipeline]:.2f}x" if pipeline in fresh else "n/a"
        print(f"| {pipeline} | {steps:,} | {seconds:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
