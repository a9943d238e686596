"""The README's "Adding a dataset" recipes, run as written (issue 25's end-to-end test), so the docs cannot drift.

A fresh working directory holds what the recipes start from: `my_recordings/` (six pairs of a MIDI file of a real
music21 string-quartet excerpt and audio rendered from it, in split folders), `mydata_raw/` (the same kind of music in
recipe 2's native layout: wav + csv of notes) and the local corpus prepared under `data/prepared/local` (chorale
excerpts, written by the converters' ShardWriter). Every python block is written to the file its first line names;
every `mt3 ...` line of a bash block runs through the installed `mt3` script. Only the size of a run changes:
`mt3 train` gets `--gin.TRAIN_STEPS` (and a small batch), `mt3 eval` gets `--max-tracks 1`.

Then, beyond "it ran": `mt3 tasks` lists the new tasks as prepared; data-stats shows the gin mixture's and the module
mixture's shares 3:1 within 10 %; each mixture trains on the indexed sampler; training stopped at step 10 and resumed
reaches step 20 at exactly the data position of an uninterrupted stream; eval writes results.json and TensorBoard
scalars.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import sub_sequence, synth, windows, write_prepared_dataset

REPO = Path(__file__).resolve().parent.parent
MT3 = str(Path(sys.executable).parent / "mt3")
TINY_TRAIN = ["--gin.BATCH_SIZE=2", "--gin.EVAL_PERIOD=0", "--gin.SUMMARY_PERIOD=5", "--gin.CHECKPOINT_PERIOD=10"]
RESUMED = ("local_3to1", "my_3to1")  # the mixture runs: 10 steps, stop, then resume to 20
pytestmark = pytest.mark.slow


def recipe_blocks(readme: str) -> list[tuple[str, str]]:
    """(language, text) of the fenced blocks of the README's "Adding a dataset" section, in order."""
    section = readme.split("\n## Adding a dataset\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "MT3_DATA_DIR"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu", MT3_COMPILATION_CACHE="off")
    return env


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run([MT3, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"mt3 {shlex.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _model_dir(args: list[str]) -> str:
    return args[args.index("--model_dir") + 1] if "--model_dir" in args else args[args.index("--checkpoint") + 1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, music21_sequences):
    import csv

    from native_fixtures import write_audio

    from mt3.midi_io import write_midi

    work = tmp_path_factory.mktemp("recipes")
    quartet, chorale = music21_sequences["string_quartet"], music21_sequences["bach_chorale"]
    for i, split in enumerate(["train"] * 4 + ["validation", "test"]):  # recipe 1: six (audio, MIDI) pairs
        ns = sub_sequence(quartet, 5.0 * i, 5.0 * i + 5.0)
        (work / "my_recordings" / split).mkdir(parents=True, exist_ok=True)
        write_midi(ns, work / "my_recordings" / split / f"take{i}.mid")
        write_audio(work / "my_recordings" / split / f"take{i}.wav", synth(ns), 16000, "WAV")
    for i, split in enumerate(["train"] * 3 + ["validation"]):  # recipe 2: the native layout, wav + csv
        ns = sub_sequence(quartet, 30.0 + 4.0 * i, 34.0 + 4.0 * i)
        (work / "mydata_raw" / split).mkdir(parents=True, exist_ok=True)
        write_audio(work / "mydata_raw" / split / f"piece{i}.wav", synth(ns), 16000, "WAV")
        with open(work / "mydata_raw" / split / f"piece{i}.csv", "w", newline="") as f:
            csv.writer(f).writerows((n.start_time, n.end_time, n.pitch, n.program) for n in ns.notes)
    write_prepared_dataset(work / "data" / "prepared", "local", {  # the local corpus, 5 s chorale excerpts
        "train": windows(chorale, 8, stride=2.0, length=5.0, prefix="c"),
        "validation": [("c_val", sub_sequence(chorale, 20.0, 25.0))],
        "test": [("c_test", sub_sequence(chorale, 30.0, 35.0))]})
    return work


def test_readme_recipes_run_as_written(workspace):
    blocks = recipe_blocks((REPO / "README.md").read_text())
    assert [lang for lang, _ in blocks].count("bash") == 4 and [lang for lang, _ in blocks].count("python") == 3
    outputs: dict[str, str] = {}
    for lang, text in blocks:
        if lang == "python":  # a module of the recipe: written where its first line says
            path = workspace / text.splitlines()[0].removeprefix("# ").strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            continue
        if lang != "bash":
            continue
        for line in text.strip().splitlines():
            args = shlex.split(line)
            assert args[0] == "mt3", line
            args = args[1:]
            if args[0] == "train":
                steps = 10 if _model_dir(args).endswith(RESUMED) else 2
                _run([*args, f"--gin.TRAIN_STEPS={steps}", *TINY_TRAIN], workspace)
                if _model_dir(args).endswith(RESUMED):  # the same command again continues where it stopped
                    outputs[_model_dir(args)] = _run([*args, "--gin.TRAIN_STEPS=20", *TINY_TRAIN], workspace)
            elif args[0] == "eval":
                outputs[line] = _run([*args, "--max-tracks", "1", "--no-progress"], workspace)
            else:
                outputs[line] = _run(args, workspace)

    # recipe 1 and 2: the new tasks are listed as prepared, and trained and evaluated by name
    for pattern, task in (("my_recordings", "my_recordings_notes_ties_vb1_train"),
                          ("mydata --module_import=my_project.tasks", "mydata_notes_ties_vb1_train")):
        listing = json.loads(_run(["tasks", *pattern.split(), "--json"], workspace))
        (row,) = [t for t in listing["tasks"] if t["name"] == task]
        assert row["prepared"] and row["splits"]["train"] > 0
    for model_dir, eval_task in (("runs/my_recordings", "my_recordings_notes_ties_vb1_test"),
                                 ("runs/mydata", "mydata_notes_ties_vb1_validation")):
        results = sorted((workspace / model_dir).rglob("results.json"))
        assert results and eval_task in json.loads(results[-1].read_text())["tasks"]

    # recipe 3: both mixtures' shares as the indexed sampler draws them, exact resume, eval of each member
    for name, flags in (("local_3to1_train", ["--gin_file=gin/mixtures/local_3to1.gin"]),
                        ("my_3to1_train", ["--module_import=my_project.mixtures"])):
        stats = json.loads(_run(["data-stats", name, *flags, "--num", "40", "--json"], workspace))
        assert stats["pipeline"] == "indexed"
        shares = {row["task"]: row["realised_share"] for row in stats["tasks"]}
        assert abs(shares["local_notes_ties_vb1_train"] - 0.75) < 0.075, shares
        assert abs(shares["my_recordings_notes_ties_vb1_train"] - 0.25) < 0.025, shares
    for run, mixture in (("runs/local_3to1", "local_3to1_train"), ("runs/my_3to1", "my_3to1_train")):
        assert "restored checkpoint step 10 (data position 10)" in outputs[run]
        _check_exact_resume(workspace, run, mixture)
        results = json.loads(sorted((workspace / run).rglob("results.json"))[-1].read_text())
        assert results["step"] == 20
        printed = outputs[f"mt3 eval --checkpoint {run} --mixture {mixture}"]  # each member's validation split
        for task in ("local_notes_ties_vb1_validation", "my_recordings_notes_ties_vb1_validation"):
            assert f"step 20 {task} (1 tracks)" in printed, printed
        assert list((workspace / run).rglob("events.out.tfevents.*mt3eval*")) or \
            len(list((workspace / run).rglob("events.out.tfevents.*"))) > 1
    assert "my_recordings_notes_ties_vb1_test" in outputs[
        "mt3 eval --checkpoint runs/local_3to1 --tasks my_recordings_notes_ties_vb1_test"]


def _check_exact_resume(workspace: Path, run: str, mixture: str) -> None:
    """The step-20 checkpoint's data position (after a stop at 10 and a resume) equals the position of the training
    stream read straight through 20 batches, and its meta records the mixture's realised shares."""
    import gin

    from mt3 import gin_utils
    from mt3.training import input_pipeline
    from mt3.training import train as train_lib  # noqa: F401  (registers utils.DatasetConfig)

    meta_path = workspace / run / "checkpoints" / "20" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    assert {row["task"] for row in meta["mixture"]} == {"local_notes_ties_vb1_train",
                                                       "my_recordings_notes_ties_vb1_train"}
    cwd = os.getcwd()
    os.chdir(workspace)  # the run's relative paths (data/prepared, my_project/)
    try:
        gin_utils.parse_gin_flags([workspace / run / "config.gin"], [], finalize=False)
        gin_utils.load_registry(data_dir=str(workspace / "data" / "prepared"))
        cfg = gin.query_parameter("train_script.train.train_dataset_cfg").scoped_configurable_fn()
        stream = input_pipeline.make_batch_iterator(cfg, host_batch_size=cfg.batch_size, shard_id=0, num_shards=1)
        for _ in range(20):
            next(stream)
        assert cfg.mixture_or_task_name == mixture
        assert input_pipeline.stream_state(stream) == meta["data_states"][0], (mixture, meta["data_states"])
        stream.close()
    finally:
        os.chdir(cwd)
        with gin.unlock_config():
            gin.clear_config()
