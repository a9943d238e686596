"""benchmarks.recipe_study: curves from cached selection-set scores, including a long run's steps whose checkpoints are
gone (the run keeps only its newest two), placed on the run's own CPU clock."""

from __future__ import annotations

import json

from benchmarks import recipe_study


def _score(step: int, onset: float) -> dict:
    levels = {label: {"onset_f1": onset, "onset_offset_f1": onset / 2, "multi_instrument_f1": onset / 4}
              for _, label in recipe_study.LEVELS}
    return {"step": step, "levels": levels, "tracks": 17}


def test_cached_scores_of_deleted_checkpoints_are_plotted_on_the_runs_cpu_clock(tmp_path):
    run = tmp_path / "long_run"
    (run / "heldout_eval").mkdir(parents=True)
    for step, onset in ((17900, 0.30), (39000, 0.34), (46000, 0.39), (99000, 0.9)):
        (run / "heldout_eval" / f"step_{step}.json").write_text(json.dumps(_score(step, onset)))
    (run / "heldout_eval" / "step_notes.json").write_text("{}")  # not a step: ignored
    # the run's clock: CPU seconds when each checkpoint first appeared; step 99000 was never reached by this clock
    rows = [(1, 7752.0, 17900), (2, 7800.0, 17900), (3, 17424.0, 39000), (4, 20484.0, 46000)]
    (run / "cpu_clock.csv").write_text("".join(f"{t},{cpu},{step}\n" for t, cpu, step in rows))
    assert recipe_study.cached_steps(run) == {17900, 39000, 46000, 99000}

    png, table = tmp_path / "long_run.png", tmp_path / "long_run_table.md"
    assert recipe_study.main(["--arm", f"long run={run}", "--every", "1", "--out", str(png), "--table", str(table),
                              "--title", "Long run"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = table.read_text().splitlines()
    body = [line for line in lines[2:] if line.startswith("| long run |")]
    assert [line.split(" | ")[1:3] for line in body] == [["17900", "129.2"], ["39000", "290.4"], ["46000", "341.4"]]
    assert body[1].split(" | ")[3] == "0.340" and body[1].split(" | ")[4] == "0.170"
