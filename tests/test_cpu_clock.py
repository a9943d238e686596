"""mt3/training/cpu_clock.py: a process's own CPU seconds beside the newest checkpoint step, carried across restarts."""

import subprocess
import sys

import pytest

from mt3.training import cpu_clock

# burns about a second of CPU, then "saves" checkpoint 7 as it exits (what SIGTERM does to `mt3 train`)
WORKER = """
import pathlib, sys, time
end = time.process_time() + 1.0
while time.process_time() < end:
    pass
(pathlib.Path(sys.argv[1]) / "checkpoints" / "7").mkdir(parents=True)
"""


def _run(model_dir) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(model_dir)])
    assert cpu_clock.main(["--pid", str(proc.pid), "--model-dir", str(model_dir), "--period", "0.1"]) == 0
    proc.wait()


@pytest.mark.slow
def test_clock_counts_cpu_puts_the_exit_checkpoint_on_it_and_resumes(tmp_path):
    _run(tmp_path)
    rows = cpu_clock.read_clock(tmp_path)
    assert rows[-1][2] == 7 and 0.5 < rows[-1][1] < 5.0  # the checkpoint written on exit has a CPU time
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    first_total = rows[-1][1]
    (tmp_path / "checkpoints" / "7").rmdir()
    _run(tmp_path)  # a resumed run continues the clock from the file's last total
    rows = cpu_clock.read_clock(tmp_path)
    assert rows[-1][1] > first_total + 0.5 and cpu_clock.cpu_minutes_at(tmp_path, 7) * 60 == first_total
