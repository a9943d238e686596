"""Tests for mt3.training.input_workers: the indexed sampler's blocks computed by worker processes give the same batches
and positions as in-process (mixing on and off, across epochs), resume exactly, pass a worker's exception to the main
process with its message, report a worker's death, and leave no process behind (close, garbage collection, the main
process raising or being killed). Real prepared records: music21 Bach with synthesised audio."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from data_fixtures import windows, write_prepared_dataset

from mt3 import mixing
from mt3.training import input_pipeline, train

TASK = "local_mix_notes_ties_vb1_train"
LENGTHS = {"inputs": 256, "targets": 256}


@pytest.fixture(scope="module")
def prepared(music21_sequences, tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared_workers")
    write_prepared_dataset(root, "local", {"train": windows(music21_sequences["bach_chorale"], 5, stride=4.0,
                                                            length=16.0, prefix="chorale_")}, num_shards=2)
    return root


def _cfg(root, **kw) -> train.DatasetConfig:
    return train.DatasetConfig(mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, batch_size=3,
                               data_dir=str(root), block_tracks=2, **kw)


def _stream(cfg, **kw) -> input_pipeline.IndexedStream:
    stream = input_pipeline.make_batch_iterator(cfg, host_batch_size=cfg.batch_size, shard_id=0, num_shards=1, **kw)
    assert isinstance(stream, input_pipeline.IndexedStream)
    return stream


def _take(stream, n: int) -> list[tuple[dict, dict]]:
    return [(next(stream), stream.position.to_json()) for _ in range(n)]


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (batch_a, position_a), (batch_b, position_b) in zip(a, b, strict=True):
        assert position_a == position_b and batch_a.keys() == batch_b.keys()
        for key in batch_a:
            np.testing.assert_array_equal(batch_a[key], batch_b[key], err_msg=key)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie (not yet reaped by its parent) holds nothing
        return f.read().split(")")[-1].split()[0] == "Z"


def _wait_gone(pids, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_results_come_back_in_request_order_and_a_finite_request_list_ends():
    from mt3.training import input_workers

    requests = ((k, (2, k, 1_000_003)) for k in range(40))  # pow(2, k, m): any picklable function
    results = list(input_workers.OrderedProcessMap(pow, requests, 3, ahead=2))
    assert results == [(k, pow(2, k, 1_000_003)) for k in range(40)]
    failing = input_workers.OrderedProcessMap(divmod, iter([("ok", (7, 2)), ("zero", (1, 0))]), 2)
    assert next(failing) == ("ok", (3, 1))
    with pytest.raises(ZeroDivisionError, match="by zero") as raised:
        next(failing)
    assert "computing 'zero'" in raised.value.__notes__[-1]


@pytest.mark.parametrize("mix", [False, True], ids=["crops", "mixes"])
def test_two_workers_give_the_in_process_batches_and_positions(prepared, mix):
    mix_config = mixing.MixConfig(max_examples_per_mix=2) if mix else None
    threads = _stream(_cfg(prepared, mix_config=mix_config))
    expected = _take(threads, 8)  # 5 records in blocks of 2: three epochs' blocks, each epoch's own order
    threads.close()
    assert expected[-1][1]["task_blocks"][0] >= 4
    workers = _stream(_cfg(prepared, mix_config=mix_config, num_workers=2))
    _assert_same(_take(workers, 8), expected)
    pids = workers.worker_pids()
    assert len(pids) == 2 and not any(_gone(p) for p in pids)
    workers.close()
    assert all(_gone(p) for p in pids)  # reaped at close, not left to the interpreter's exit


def test_resume_with_workers_equals_the_uninterrupted_stream(prepared):
    straight = _stream(_cfg(prepared))
    expected = _take(straight, 9)
    straight.close()
    first = _stream(_cfg(prepared, num_workers=2))
    _assert_same(_take(first, 4), expected[:4])
    state = json.loads(json.dumps(input_pipeline.stream_state(first)))  # as the checkpoint meta stores it
    first.close()
    assert len(json.dumps(state)) < 200
    resumed = _stream(_cfg(prepared, num_workers=1), state=state)  # saved with 2 workers: any count resumes it
    _assert_same(_take(resumed, 5), expected[4:])
    resumed.close()


def test_a_worker_exception_reaches_the_main_process_with_its_message(prepared, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    stream = _stream(_cfg(root, num_workers=2))  # the shard headers are scanned here, in the main process
    for shard in (root / "local").glob("train-*.tfrecord"):
        shard.unlink()  # the data vanishes under a running stream
    with pytest.raises(FileNotFoundError, match=r"train-0000[01]-of-00002\.tfrecord") as raised:
        next(stream)
    assert any("input worker" in note for note in raised.value.__notes__)
    assert "read_record" in str(raised.value.__cause__)  # the worker's traceback
    pids = stream.worker_pids()
    assert len(pids) == 2 and _wait_gone(pids, 5.0)
    stream.close()


def test_a_dead_worker_is_an_error_and_sigterm_is_the_main_process_s_to_handle(prepared):
    stream = _stream(_cfg(prepared, num_workers=2))
    first = next(stream)
    pids = stream.worker_pids()
    os.kill(pids[0], signal.SIGTERM)  # schedulers signal the whole group: workers leave it to the main process
    time.sleep(0.5)
    assert not _gone(pids[0])
    os.kill(pids[1], signal.SIGKILL)  # out of memory, say
    with pytest.raises(RuntimeError, match=r"input worker mt3-data-1 \(pid \d+\) exited with code -9"):
        for _ in range(20):
            next(stream)
    assert _wait_gone(pids, 5.0) and first["decoder_target_tokens"].shape == (3, 256)
    stream.close()


@pytest.mark.slow
@pytest.mark.parametrize("end", ["exception", "sigkill"])
def test_no_worker_outlives_a_main_process_that_fails_or_is_killed(prepared, end):
    script = textwrap.dedent(f"""
        import sys, time
        from mt3 import configurables
        from mt3.training import input_pipeline, train
        configurables.register([configurables.DATA])
        cfg = train.DatasetConfig(mixture_or_task_name={TASK!r}, task_feature_lengths={LENGTHS!r}, batch_size=3,
                                  data_dir={str(prepared)!r}, block_tracks=2, num_workers=2)
        stream = input_pipeline.make_batch_iterator(cfg, host_batch_size=3, shard_id=0, num_shards=1)
        next(stream)
        print(*stream.worker_pids(), flush=True)
        if {end!r} == "exception":
            raise ValueError("the training step failed")
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=os.getcwd())
    pids = [int(p) for p in process.stdout.readline().split()]
    assert len(pids) == 2, process.stderr.read()
    if end == "sigkill":
        process.kill()
    process.wait(timeout=30)  # no hang at exit
    assert _wait_gone(pids, 10.0)
    if end == "exception":
        assert "the training step failed" in process.stderr.read()


def test_gin_input_workers_reaches_the_train_stream_only():
    import gin

    from mt3 import gin_utils

    try:
        gin_utils.parse_gin_flags(["gin/local_tiny.gin"], ["INPUT_WORKERS=2", "MODEL_DIR='/tmp/unused'"],
                                  finalize=False)
        train_cfg = gin.query_parameter("train_script.train.train_dataset_cfg").scoped_configurable_fn()
        eval_cfg = gin.query_parameter("train_script.train.train_eval_dataset_cfg").scoped_configurable_fn()
    finally:
        gin.clear_config()
    assert train_cfg.num_workers == 2 and eval_cfg.num_workers == 0  # periodic evals start no processes
    assert train.DatasetConfig().num_workers == 0  # the default: the in-process thread pool, as before
    with pytest.raises(ValueError, match="num_workers must be an int >= 0, got -1"):
        train.DatasetConfig(num_workers=-1)
