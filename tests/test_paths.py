"""`mt3.paths`: local paths and URLs behind one set of file operations, and `gs://` end to end.

The `gs://` tests talk to a real GCS JSON-API emulator on loopback (tests/gcs_emulator.py, started and stopped here):
the file helpers through gcsfs, then a whole run with every path on `gs://test-bucket/...` — prepared data, the model
dir (orbax checkpoints through tensorstore's GCS driver, summaries, config.gin), SIGTERM and an exact resume, `mt3
eval` from and to gs://, and `mt3 import-checkpoint` of a T5X checkpoint stored in the bucket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gcs_emulator
import numpy as np
import pytest

from mt3 import cli, paths
from mt3.errors import InputError

# ---------------------------------------------------------------------------------------------------------------
# Names and the missing-library refusal (no emulator)
# ---------------------------------------------------------------------------------------------------------------


def test_urls_are_told_from_local_paths_and_joined_as_urls():
    assert paths.is_url("gs://b/x") and paths.is_url("memory://x") and paths.is_url("file:///tmp/x")
    assert not paths.is_url("/tmp/x") and not paths.is_url("runs/gs:/b") and not paths.is_url("C:/x")
    assert paths.join("gs://b/run", "checkpoints", "7") == "gs://b/run/checkpoints/7"
    assert paths.parent("gs://b/run/x") == "gs://b/run" and paths.parent("gs://b") == "gs://b"
    assert paths.name("gs://b/run/") == "run" and paths.absolute("gs://b/run/") == "gs://b/run"
    assert str(paths.as_epath("gs://b/run") / "checkpoints") == "gs://b/run/checkpoints"  # not ./gs:/b/...


def test_a_protocol_without_its_library_is_named_with_the_package_to_install():
    assert paths.missing_library("gs://b/x") is None  # gcsfs is pinned in requirements.txt
    assert paths.missing_library("s3://b/x") == "s3:// paths need the s3fs package: pip install s3fs"
    assert "unknown URL protocol nosuch://" in paths.missing_library("nosuch://b/x")
    with pytest.raises(InputError, match=r"--model_dir: s3:// paths need the s3fs package: pip install s3fs"):
        paths.require("s3://b/x", "--model_dir")


def test_train_refuses_a_model_dir_url_without_its_library_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "--gin_file=local_tiny.gin", "--model_dir", "s3://bucket/run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["mt3 train: error: s3://bucket/run: --model_dir: s3:// paths need the s3fs package: "
                                 "pip install s3fs"]
    assert list(tmp_path.iterdir()) == []  # no local ./s3:/bucket/run folder
    monkeypatch.setenv("MT3_DATA_DIR", "s3://bucket/data")
    code = cli.main(["train", "--gin_file=local_tiny.gin", "--model_dir", str(tmp_path / "m")])
    assert code == 2 and "$MT3_DATA_DIR: s3:// paths need the s3fs package" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_local_files_and_trees(tmp_path):
    paths.write_json(tmp_path / "a" / "x.json", {"b": 1, "a": [2]})
    assert json.loads(paths.read_text(tmp_path / "a" / "x.json")) == {"a": [2], "b": 1}
    assert paths.listdir(tmp_path / "a") == ["x.json"] and paths.listdir(tmp_path / "none") == []
    with pytest.raises(RuntimeError), paths.atomic_write(tmp_path / "a" / "half.bin") as f:
        f.write(b"partial")
        raise RuntimeError
    assert not (tmp_path / "a" / "half.bin").exists()


# ---------------------------------------------------------------------------------------------------------------
# gs:// on the emulator
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator, with this process's environment pointing every client at it (restored afterwards)."""
    log = tmp_path_factory.mktemp("gcs") / "emulator.log"
    with gcs_emulator.running(log) as url:
        env = gcs_emulator.environment(url)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def test_gs_files_are_written_whole_listed_and_copied(gcs, tmp_path):
    base = f"gs://{gcs_emulator.BUCKET}/files"
    paths.write_text(paths.join(base, "a", "x.txt"), "hello")
    assert paths.read_text(paths.join(base, "a", "x.txt")) == "hello" and paths.isfile(paths.join(base, "a", "x.txt"))
    assert paths.isdir(paths.join(base, "a")) and paths.listdir(base) == ["a"]
    with pytest.raises(RuntimeError), paths.atomic_write(paths.join(base, "a", "half.bin")) as f:
        f.write(b"partial")
        raise RuntimeError  # an upload that fails leaves no object
    assert not paths.exists(paths.join(base, "a", "half.bin"))
    with paths.staged_dir(paths.join(base, "report"), last=("results.json",)) as local:
        Path(local, "plots").mkdir()
        Path(local, "plots", "p.png").write_bytes(b"\x89PNG")
        Path(local, "results.json").write_text("{}")
    assert paths.listdir(paths.join(base, "report")) == ["plots", "results.json"]
    back = paths.download_tree(paths.join(base, "report"), tmp_path / "back")
    assert Path(back, "plots", "p.png").read_bytes() == b"\x89PNG"
    assert paths.getsize(paths.join(base, "report", "plots", "p.png")) == 4


# ---------------------------------------------------------------------------------------------------------------
# A whole run on gs:// (train, SIGTERM, resume exactly, eval, import)
# ---------------------------------------------------------------------------------------------------------------

WORKER = r"""
import json, logging, sys, time
from pathlib import Path
from mt3 import gin_utils
from mt3.training import train

model_dir, marker_dir, pause_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
flags = gin_utils.parse_gin_flags(["gin/train.gin"], json.loads(sys.argv[4]), model_dir=model_dir)

def hook(step, params):  # called every step (EVAL_PERIOD = 1): a local marker says where the run is
    if step == pause_at:
        (marker_dir / f"at_{step}").write_text("")
        time.sleep(1.0)
    return {}

logging.basicConfig(level=logging.INFO, format="%(message)s")  # the loop's "restored checkpoint ..." line
result = train.train_from_gin(flags, infer_eval_fn=hook)
print(json.dumps({"step": result.step, "stop_reason": result.stop_reason}))
"""


def _gs_state(model_dir: str, step: int):
    import orbax.checkpoint as ocp

    path = paths.as_epath(paths.join(model_dir, "checkpoints", str(step)))
    return ocp.StandardCheckpointer().restore(path / "state"), json.loads((path / "meta" / "metadata").read_text())


@pytest.mark.slow
def test_a_run_on_gs_trains_resumes_exactly_and_evaluates(gcs, tmp_path, music21_sequences):
    import jax
    from data_fixtures import sub_sequence, windows, write_prepared_dataset
    from helpers import REPO, real_data_bindings, subprocess_env

    bucket = f"gs://{gcs_emulator.BUCKET}"
    chorale = music21_sequences["bach_chorale"]
    local_data = tmp_path / "prepared"
    write_prepared_dataset(local_data, "local", {
        "train": windows(chorale, 5, stride=3.0, length=12.0, prefix="chorale_"),
        "validation": [("chorale_val", sub_sequence(chorale, 12.0, 20.0))]})
    paths.upload_tree(local_data, f"{bucket}/data")
    env = subprocess_env(**gcs, MT3_DATA_DIR=f"{bucket}/data",
                         JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
                         JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    # the tiny model reading raw frames through the in-model log-mel (what inference needs, for the eval below)
    bindings = [b for b in real_data_bindings(f"{bucket}/data") if not b.startswith("network.T5Config.input_")] + [
        "network.T5Config.input_frontend = 'frames'", "network.T5Config.input_depth = 512", "CHECKPOINT_PERIOD = 10",
        "EVAL_PERIOD = 1", "EVAL_STEPS = 0", "SUMMARY_PERIOD = 2"]
    straight, resumed = f"{bucket}/runs/straight", f"{bucket}/runs/resumed"

    def worker(model_dir: str, steps: int, pause_at: int = -1) -> subprocess.Popen:
        script = tmp_path / "worker.py"
        script.write_text(WORKER)
        return subprocess.Popen([sys.executable, str(script), model_dir, str(tmp_path), str(pause_at),
                                 json.dumps(bindings + [f"TRAIN_STEPS = {steps}"])], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(proc) -> str:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
        return out + err

    # the straight run, through the command line: --model_dir gs://...
    args = ["train", "--gin_file=gin/train.gin", "--model_dir", straight,
            *[f"--gin.{b.replace(' = ', '=')}" for b in bindings if not b.startswith("EVAL_PERIOD")],
            "--gin.EVAL_PERIOD=0", "--gin.TRAIN_STEPS=12"]
    result = subprocess.run([sys.executable, "-m", "mt3.cli", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert not Path(REPO, "gs:").exists() and not (tmp_path / "gs:").exists()  # nothing local named after the URL

    # preempted at step 7, then resumed to step 12: the same state as the straight run
    proc = worker(resumed, 1000, pause_at=7)
    deadline = time.monotonic() + 400
    while not (tmp_path / "at_7").exists():
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "the worker never reached step 7"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc)
    assert '"stop_reason": "preempted"' in out and '"step": 7' in out
    _, meta = _gs_state(resumed, 7)
    assert meta["data_position"] == 7 and meta["data_states"][0]["kind"] == "indexed"
    out = finish(worker(resumed, 12))
    assert f"restored checkpoint step 7 (data position 7) from {resumed}/checkpoints" in out
    state_a, meta_a = _gs_state(straight, 12)
    state_b, meta_b = _gs_state(resumed, 12)
    assert meta_a == meta_b
    for a, b in zip(jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    listing = paths.listdir(resumed)
    from mt3.training import run_records
    assert [r["start_step"] for r in run_records.list_records(resumed)] == [0, 7]  # each start recorded in the bucket
    assert {"checkpoints", "config.gin", "operative_config.gin", "train"} <= set(listing), listing
    assert paths.listdir(paths.join(resumed, "train"))[0].startswith("events.out.tfevents")  # uploaded summaries

    # eval from gs:// into gs://
    out_dir = f"{bucket}/eval/resumed"
    result = subprocess.run([sys.executable, "-m", "mt3.cli", "eval", "--checkpoint", resumed,
                             "--gin_file=gin/eval.gin", "--tasks", "local_notes_ties_vb1_validation", "--out",
                             out_dir, "--no-progress", "--gin.MAX_DECODE_LENGTH=16", "--gin.INFER_BATCH_SIZE=4"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(paths.read_text(paths.join(out_dir, "results.json")))
    assert results["step"] == 12 and results["tasks"]["local_notes_ties_vb1_validation"]["num_tracks"] == 1
    assert set(paths.listdir(out_dir)) >= {"results.json", "results.md", "plots", "midi"}


@pytest.mark.slow
def test_import_checkpoint_from_and_to_gs(gcs, tmp_path):
    """A T5X model dir stored in the bucket (checkpoint_N/checkpoint + zarr folders) imported into the bucket by
    `mt3 import-checkpoint gs://... -o gs://...`; the imported model dir then loads from gs:// bit for bit."""
    from flax.traverse_util import flatten_dict
    from helpers import REPO, subprocess_env
    from helpers import T5X_STEP as STEP
    from helpers import tiny_preset_gin as _tiny_gin
    from t5x_fixture import adafactor_statistics, write_t5x_checkpoint

    from mt3 import model_loading
    from mt3.training.checkpoint_import import build_preset_model

    bucket = f"gs://{gcs_emulator.BUCKET}"
    env = subprocess_env(**gcs)
    preset = _tiny_gin(tmp_path / "tiny_mt3.gin", "mt3.gin")
    model, _, _ = build_preset_model(str(preset), model_dir=tmp_path / "unused")
    rng = np.random.default_rng(7)
    params = {n: (rng.standard_normal(s.shape) * 0.1).astype(np.float32)
              for n, s in flatten_dict(model.abstract_params(), sep="/").items()}
    local_ckpt = write_t5x_checkpoint(tmp_path / "t5x" / f"checkpoint_{STEP}", params, step=STEP,
                                      param_states=adafactor_statistics(params, seed=3), form="gcs")
    paths.upload_tree(local_ckpt.parent, f"{bucket}/t5x")  # a T5X model dir: checkpoint_4321/checkpoint, ...
    imported = f"{bucket}/imported"
    result = subprocess.run([sys.executable, "-m", "mt3.cli", "import-checkpoint", f"{bucket}/t5x/", "--preset",
                             str(preset), "-o", imported], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    info = json.loads(paths.read_text(paths.join(imported, "import.json")))
    assert info["source"] == f"{bucket}/t5x/checkpoint_{STEP}/checkpoint" and info["step"] == STEP
    assert "num_encoder_layers = 1" in paths.read_text(paths.join(imported, "config.gin"))  # the preset's sizes
    loaded = model_loading.parse_model_dir_gin(imported)
    restored, step = model_loading.restore_params(imported, loaded)
    assert step == STEP
    for name, value in flatten_dict(restored, sep="/").items():
        assert np.asarray(value).tobytes() == params[name].tobytes(), name
