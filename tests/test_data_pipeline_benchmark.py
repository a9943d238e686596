"""Tests for benchmarks/data_pipeline.py: its main runs the training input pipeline on a small prepared dataset and
prints a throughput table per variant and a per-stage profile, with real numbers in every cell."""

from __future__ import annotations

import math

import pytest
from data_fixtures import sub_sequence, windows, write_prepared_dataset

from benchmarks import data_pipeline


@pytest.fixture(scope="module")
def prepared(music21_sequences, tmp_path_factory):
    chorale = music21_sequences["bach_chorale"]
    root = tmp_path_factory.mktemp("prepared")
    write_prepared_dataset(root, "local", {
        "train": windows(chorale, 6, stride=3.0, length=20.0, prefix="chorale_"),
        "validation": [("chorale_val", sub_sequence(chorale, 12.0, 30.0))],
    })
    return root


def _tables(text: str) -> dict[str, dict[str, list[str]]]:
    """{table title: {row name: cells}}: the throughput table is '', each profile 'profile: VARIANT'."""
    tables: dict[str, dict[str, list[str]]] = {}
    title = None
    for line in text.splitlines():
        if line.startswith("variant ") and title is None:
            title = ""
        elif line.startswith("profile: "):
            title = line.split(",")[0]
        elif line.startswith("scaling "):
            title = "scaling"
        elif line.startswith(("stage ", "variant ")):
            pass
        elif line.strip() and title is not None:
            name, *cells = line.split()
            tables.setdefault(title, {})[name] = cells
    return tables


def test_main_prints_throughput_and_a_stage_profile_for_each_variant(prepared, capsys):
    data_pipeline.main(["--data-dir", str(prepared), "--batches", "3", "--batch-size", "4",
                        "--profile-blocks", "1"])
    tables = _tables(capsys.readouterr().out)
    throughput = tables[""]
    assert list(throughput) == list(data_pipeline.VARIANTS)
    for cells in throughput.values():
        workers, rate, cpu_ms, main_ms, worker_ms, projected, first, load = map(float, cells)
        assert workers == 0 and worker_ms == 0 and main_ms == cpu_ms and projected == pytest.approx(1000 / cpu_ms,
                                                                                                    rel=0.01)
        assert all(math.isfinite(v) and v > 0 for v in (rate, cpu_ms, first, load))
    profiles = {}
    for variant in data_pipeline.VARIANTS:
        rows = tables[f"profile: {variant}"]
        assert list(rows) == [*data_pipeline.STAGES, "total"]
        wall = {stage: float(cells[0]) for stage, cells in rows.items()}
        shares = [float(cells[2].rstrip("%")) for stage, cells in rows.items() if stage != "total"]
        assert all(math.isfinite(v) and v >= 0 for v in wall.values())
        assert sum(shares) == pytest.approx(100.0, abs=0.6)
        assert sum(v for k, v in wall.items() if k != "total") == pytest.approx(wall["total"], rel=0.01, abs=0.01)
        profiles[variant] = wall
    for stage in ("read", "decode", "frame", "tokenize", "crop", "batch"):
        assert profiles["base"][stage] > 0, stage
    # each option's stage costs time when that option is on (off, augmentation is one call that returns at once)
    for stage in ("mix", "frame_targets"):
        assert profiles["base"][stage] == 0 and profiles["all"][stage] > 0, stage
    assert profiles["mix"]["mix"] > 0 and profiles["mix"]["crop"] == 0  # mixing makes its own crops
    assert profiles["frames"]["frame_targets"] > 0
    assert profiles["augment"]["augment"] > 10 * profiles["base"]["augment"]


def test_workers_add_their_cpu_and_a_scaling_table(prepared, capsys):
    data_pipeline.main(["--data-dir", str(prepared), "--batches", "2", "--batch-size", "4", "--warmup", "0",
                        "--variants", "mix", "--workers", "0,1", "--profile-blocks", "0"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.split("\n\n")[0].splitlines()[2:]]  # after the header lines
    assert [(r[0], r[1]) for r in rows] == [("mix", "0"), ("mix", "1")]
    (_, _, _, cpu_ms, main_ms, worker_ms, projected, *_), = rows[1:]
    # the blocks are computed in the worker process, and its CPU counted (warmup 0: from its start)
    assert float(worker_ms) > 0 and float(cpu_ms) == pytest.approx(float(main_ms) + float(worker_ms), abs=0.02)
    assert float(projected) == pytest.approx(min(1000 / float(worker_ms), 1000 / float(main_ms)), rel=0.01, abs=0.1)
    scaling = _tables(out)["scaling"]
    assert list(scaling) == ["mix"] and all(float(c) > 0 for c in scaling["mix"])


def test_a_missing_data_dir_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as error:
        data_pipeline.main(["--data-dir", str(tmp_path / "absent")])
    assert "absent" in str(error.value) and "prepare-data" in str(error.value)
