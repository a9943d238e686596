"""Tests for the launchers in launch/: dry runs, paths expanded on the TPU workers, and the SLURM launcher's real code
path (two `mt3 train` processes joined by jax.distributed on loopback, CPU devices) saving and requeueing on the time
limit signal, with stub `srun` / `scontrol` / `gcloud` on PATH."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from helpers import REPO, TINY_RUN_BINDINGS, free_port, subprocess_env

# `scontrol show hostnames LIST` prints $STUB_NODES one per line; any other call is logged to $STUB_LOG.
SCONTROL = """#!/usr/bin/env bash
if [ "$1 $2" = "show hostnames" ]; then printf '%s\\n' $STUB_NODES; exit 0; fi
echo "scontrol $*" >> "$STUB_LOG"
"""
# `srun [flags] CMD...`: SLURM_NTASKS local tasks with SLURM_PROCID=0..N-1; SIGTERM is forwarded to them (as srun).
SRUN = """#!/usr/bin/env bash
while [ "${1#-}" != "$1" ]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" & pids+=($!); done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
status=0
for pid in "${pids[@]}"; do
  while true; do s=0; wait "$pid" || s=$?; kill -0 "$pid" 2>/dev/null || break; done
  [ "$s" = 0 ] || status=$s
done
exit $status
"""
# `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=CMD`: runs CMD in a login shell of a fake worker.
GCLOUD = """#!/usr/bin/env bash
for a in "$@"; do case "$a" in --command=*) cmd=${a#--command=} ;; esac; done
cd / && HOME="$WORKER_HOME" exec bash -c "$cmd"
"""


def _stubs(tmp_path: Path, **scripts: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _env(bin_dir: Path | None = None, **extra) -> dict[str, str]:
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("MT3_")}
    env.update(extra)
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def test_gpu_single_host_dry_run_prints_the_command_and_runs_nothing(tmp_path):
    result = subprocess.run(["bash", "launch/gpu_single_host.sh", "--dry-run", str(tmp_path / "run"),
                             "gin/local.gin", "--gin.BATCH_SIZE=64"], cwd=REPO, capture_output=True, text=True,
                            env=_env(CUDA_VISIBLE_DEVICES="0,1"), timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"host \S+ process 0/1", lines[0])
    assert lines[1] == "  env: TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES=0,1"
    assert lines[2].split() == ["run:", ".venv/bin/mt3", "train", "--gin_file=gin/local.gin",
                                f"--model_dir={tmp_path / 'run'}", "--gin.BATCH_SIZE=64"]
    assert not (tmp_path / "run").exists()


def test_slurm_dry_run_prints_every_node_with_its_rank_and_coordinator(tmp_path):
    bin_dir = _stubs(tmp_path, scontrol=SCONTROL)
    result = subprocess.run(["bash", "launch/slurm_multi_host.sh", "--dry-run", "/shared/runs/mt3", "gin/mt3.gin",
                             "--gin.BATCH_SIZE=512"], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env=_env(bin_dir, SLURM_JOB_NODELIST="gpu-[07-08]", SLURM_NTASKS="2",
                                     STUB_NODES="gpu-07 gpu-08", STUB_LOG=str(tmp_path / "log")))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for i, node in enumerate(["gpu-07", "gpu-08"]):
        assert lines[3 * i] == f"host {node} process {i}/2"
        assert lines[3 * i + 1] == ("  env: JAX_COORDINATOR_ADDRESS=gpu-07:29500 JAX_NUM_PROCESSES=2 "
                                    f"SLURM_PROCID={i} TF_CPP_MIN_LOG_LEVEL=3")
        assert lines[3 * i + 2].split() == ["run:", "srun", "--kill-on-bad-exit=1", ".venv/bin/mt3", "train",
                                            "--gin_file=gin/mt3.gin", "--model_dir=/shared/runs/mt3",
                                            "--gin.BATCH_SIZE=512"]
    assert "scontrol requeue" in lines[-1]
    assert not (tmp_path / "log").exists()  # nothing but the host list was asked of SLURM


def test_tpu_pod_expands_home_on_the_workers_and_sets_them_up_for_training(tmp_path):
    """The remote command, run by a fake worker whose HOME differs from ours: ~ is the worker's home, and the worker
    runs setup.sh with MT3_SETUP=train MT3_ACCELERATOR=tpu before `mt3 train`."""
    worker_home = tmp_path / "worker home"
    repo = worker_home / "mt3"
    (repo / "scripts").mkdir(parents=True)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / "scripts" / "setup.sh").write_text('echo "setup MT3_SETUP=$MT3_SETUP MT3_ACCELERATOR=$MT3_ACCELERATOR"\n')
    (repo / ".venv" / "bin" / "mt3").write_text('#!/usr/bin/env bash\necho "cwd $PWD"; printf "arg %s\\n" "$@"\n'
                                                'echo "MT3_DISTRIBUTED=$MT3_DISTRIBUTED"\n')
    (repo / ".venv" / "bin" / "mt3").chmod(0o755)
    bin_dir = _stubs(tmp_path, gcloud=GCLOUD)
    args = ["bash", "launch/tpu_vm_pod.sh", "my-v4-32", "us-central2-b", "~/runs/a b", "gin/mt3.gin",
            "--gin.MIXTURE_OR_TASK_NAME='x y'"]
    env = _env(bin_dir, WORKER_HOME=str(worker_home), HOME=str(tmp_path / "local home"))
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "setup MT3_SETUP=train MT3_ACCELERATOR=tpu", f"cwd {repo}", "arg train", "arg --gin_file=gin/mt3.gin",
        f"arg --model_dir={worker_home}/runs/a b", "arg --gin.MIXTURE_OR_TASK_NAME='x y'", "MT3_DISTRIBUTED=1"]

    dry = subprocess.run([args[0], args[1], "--dry-run", *args[2:]], cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=60)
    assert dry.returncode == 0 and dry.stdout.startswith("local: gcloud compute tpus tpu-vm ssh my-v4-32 ")
    assert '  run: cd "$HOME"/mt3 && MT3_SETUP=train MT3_ACCELERATOR=tpu bash scripts/setup.sh && ' in dry.stdout
    assert str(tmp_path) not in dry.stdout  # nothing expanded on this machine


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.5)


@pytest.mark.slow
def test_slurm_launcher_saves_and_requeues_on_the_time_limit_then_resumes(tmp_path):
    """Two `mt3 train` processes through launch/slurm_multi_host.sh (stub srun: two local tasks; loopback
    coordinator; CPU devices). USR1 (SLURM's --signal=B:USR1@120) -> both save one checkpoint and exit 0 -> the
    script calls `scontrol requeue $SLURM_JOB_ID`. The requeued job resumes from it and ends without a requeue."""
    bin_dir = _stubs(tmp_path, scontrol=SCONTROL, srun=SRUN)
    log = tmp_path / "scontrol.log"
    model_dir = tmp_path / "run"
    bindings = [f"--gin.{b.replace(' = ', '=')}" for b in TINY_RUN_BINDINGS]
    env = _env(bin_dir, SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="localhost", SLURM_NTASKS="2",
               STUB_NODES="127.0.0.1", STUB_LOG=str(log), MT3_COORDINATOR_PORT=str(free_port()),
               SLURM_SUBMIT_DIR=str(REPO))
    script = ["bash", "launch/slurm_multi_host.sh", str(model_dir), "gin/train.gin", *bindings,
              "--gin.CHECKPOINT_PERIOD=1000", "--gin.EVAL_PERIOD=0"]
    job = subprocess.Popen([*script, "--gin.TRAIN_STEPS=100000"], cwd=REPO, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(model_dir / "operative_config.gin", job, timeout=400)  # written after the first step
        job.send_signal(signal.SIGUSR1)
        out, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, err[-3000:]
    assert "time limit near" in err and "requeueing job 4242" in err
    assert log.read_text().splitlines() == ["scontrol requeue 4242"]
    [step] = [int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()]  # saved on the signal
    assert 0 < step < 100000

    log.unlink()
    resumed = subprocess.run([*script, f"--gin.TRAIN_STEPS={step + 2}"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not log.exists()  # finished: not requeued
    assert (model_dir / "checkpoints" / str(step + 2)).is_dir()
    assert sorted(p.name for p in (model_dir / "runs").glob("*.json")) == ["0.json", f"{step}.json"]
    assert json.loads((model_dir / "runs" / f"{step}.json").read_text())["devices"]["process_count"] == 2
