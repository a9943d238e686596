"""`mt3 import-checkpoint`: T5X checkpoints (MT3's released format) written by tests/t5x_fixture.py in every storage
form import bit for bit, carry their Adafactor statistics into the state `mt3 train` resumes, transcribe, and decode
the same greedy tokens as the same parameters loaded directly; bad inputs give one line, exit 2, and no model dir.
The presets are checked against MT3's released gin values (REFERENCE §0/§5) and parameter counts.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import T5X_STEP, TINY_LAYERS, tiny_preset_gin
from t5x_fixture import STORAGE_FORMS, adafactor_statistics, write_t5x_checkpoint

from mt3 import cli, model_loading
from mt3.errors import InputError
from mt3.training.checkpoint_import import build_preset_model, import_checkpoint, params_checksum

DECODE_BINDINGS = ["MAX_DECODE_LENGTH = 16", "INFER_BATCH_SIZE = 4"]


@dataclasses.dataclass
class Tiny:
    preset: Path  # gin file: mt3.gin at model_tiny.gin's sizes, one layer each side
    piano_preset: Path  # the same on ismir2021.gin (1664 embedding rows)
    params: dict[str, np.ndarray]  # '/'-joined names -> float32
    stats: dict[str, dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    from flax.traverse_util import flatten_dict

    root = tmp_path_factory.mktemp("tiny_presets")
    preset = tiny_preset_gin(root / "tiny_mt3.gin", "mt3.gin")
    piano = tiny_preset_gin(root / "tiny_ismir2021.gin", "ismir2021.gin")
    model, _, _ = build_preset_model(str(preset), model_dir=root / "unused")
    shapes = flatten_dict(model.abstract_params(), sep="/")
    rng = np.random.default_rng(7)
    params = {name: (rng.standard_normal(s.shape) * 0.1).astype(np.float32) for name, s in shapes.items()}
    return Tiny(preset=preset, piano_preset=piano, params=params, stats=adafactor_statistics(params, seed=3))


def _restored_params(model_dir: Path) -> dict[str, np.ndarray]:
    from flax.traverse_util import flatten_dict

    model = model_loading.parse_model_dir_gin(model_dir)
    params, step = model_loading.restore_params(model_dir, model)
    assert step == T5X_STEP
    return {k: np.asarray(v) for k, v in flatten_dict(params, sep="/").items()}


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".importing-" in p.name]


# ---------------------------------------------------------------------------------------------------------------
# Every storage form
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", STORAGE_FORMS)
def test_every_storage_form_imports_bit_for_bit(tiny, tmp_path, form):
    src = write_t5x_checkpoint(tmp_path / "released", tiny.params, step=T5X_STEP, param_states=tiny.stats, form=form)
    big = src / "target.encoder.continuous_inputs_projection.kernel"
    assert big.is_dir() == (form != "inline")  # the external forms really store arrays outside the msgpack
    assert not (src / "target.encoder.encoder_norm.scale").exists()  # small arrays are inline in every form

    result = import_checkpoint(src, tmp_path / "model", preset=str(tiny.preset))

    assert (result.step, result.version, result.num_arrays) == (T5X_STEP, 3, len(tiny.params))
    assert result.num_params == sum(p.size for p in tiny.params.values())
    assert result.checksum == params_checksum(tiny.params)
    assert result.optimizer_state == "converted"
    restored = _restored_params(tmp_path / "model")
    assert sorted(restored) == sorted(tiny.params)
    for name, written in tiny.params.items():
        assert restored[name].dtype == np.float32 and restored[name].tobytes() == written.tobytes(), name
    assert _leftovers(tmp_path) == []


def test_adafactor_statistics_land_in_the_state_mt3_train_resumes(tiny, tmp_path):
    import optax
    from flax.traverse_util import flatten_dict

    from mt3.training import partitioning, train, trainer
    from mt3.training.checkpoints import CheckpointConfig, Checkpointer

    src = write_t5x_checkpoint(tmp_path / "released", tiny.params, step=T5X_STEP, param_states=tiny.stats, form="file")
    import_checkpoint(src, tmp_path / "model", preset=str(tiny.preset))

    # what `mt3 train --gin_file=<preset> --model_dir <imported>` builds, then restores
    model, optimizer_cfg, _ = build_preset_model(str(tiny.preset), model_dir=tmp_path / "model")
    tr = trainer.Trainer(model, optimizer_cfg, partitioning.Partitioner())
    checkpointer = Checkpointer(tmp_path / "model", CheckpointConfig(async_save=False))
    state, data_position = train.restore_or_init(tr, checkpointer, seed=0, restore=True)
    checkpointer.close()

    assert (int(state.step), data_position) == (T5X_STEP, 0)
    factored = [s for s in state.opt_state if isinstance(s, optax.FactoredState)][0]
    assert int(factored.count) == T5X_STEP
    schedule_counts = [int(s.count) for s in state.opt_state if isinstance(s, optax.ScaleByScheduleState)]
    assert schedule_counts == [T5X_STEP]  # the learning-rate schedule continues from the imported step
    num_factored = 0
    for stat in ("v_row", "v_col", "v"):
        ours = flatten_dict(getattr(factored, stat), sep="/")
        for name, array in ours.items():
            np.testing.assert_array_equal(np.asarray(array), tiny.stats[name][stat], err_msg=f"{name} {stat}")
            num_factored += stat == "v_row" and array.shape != (1,)
    assert num_factored >= 3  # the fixture exercises both factored and unfactored parameters


def test_statistics_in_another_layout_give_a_fresh_optimizer_state(tiny, tmp_path, capsys):
    unfactored = {name: {"v_row": np.zeros(1, np.float32), "v_col": np.zeros(1, np.float32),
                         "v": np.ones(p.shape, np.float32), "m": np.zeros(1, np.float32)}
                  for name, p in tiny.params.items()}  # as T5X writes with factored=False
    src = write_t5x_checkpoint(tmp_path / "released", tiny.params, step=T5X_STEP, param_states=unfactored, form="gfile")
    argv = ["import-checkpoint", str(src), "--preset", str(tiny.preset), "-o", str(tmp_path / "model")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "fresh optimizer state:" in out and "different factoring" in out
    assert _restored_params(tmp_path / "model").keys() == tiny.params.keys()

    bare = write_t5x_checkpoint(tmp_path / "bare", tiny.params, step=T5X_STEP, form="gcs")  # no param_states at all
    result = import_checkpoint(bare, tmp_path / "model2", preset=str(tiny.preset))
    assert result.optimizer_state == "fresh: the checkpoint holds no Adafactor statistics"


def test_step_picks_a_checkpoint_of_a_t5x_model_dir(tiny, tmp_path):
    shifted = {k: v + 1.0 for k, v in tiny.params.items()}
    write_t5x_checkpoint(tmp_path / "run" / f"checkpoint_{T5X_STEP}", tiny.params, step=T5X_STEP, form="gfile")
    write_t5x_checkpoint(tmp_path / "run" / "checkpoint_9000", shifted, step=9000, form="gfile")
    latest = import_checkpoint(tmp_path / "run", tmp_path / "latest", preset=str(tiny.preset))
    chosen = import_checkpoint(tmp_path / "run", tmp_path / "chosen", preset=str(tiny.preset), step=T5X_STEP)
    assert (latest.step, latest.checksum) == (9000, params_checksum(shifted))
    assert (chosen.step, chosen.checksum) == (T5X_STEP, params_checksum(tiny.params))
    with pytest.raises(InputError, match="holds step 9000, not the requested --step 5"):
        import_checkpoint(tmp_path / "run" / "checkpoint_9000", tmp_path / "x", preset=str(tiny.preset), step=5)


@pytest.mark.parametrize("compressor", [{"id": "gzip", "level": 5}, {"id": "zlib", "level": 1}, None,
                                        {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1}])
def test_zarr_reader_agrees_with_tensorstore_both_ways(tmp_path, compressor):
    """Arrays tensorstore writes (several chunks, partial edge chunks, big-endian) read back exactly, and tensorstore
    reads what the fixture writes: the fixture's layout is the real zarr format, not only our reader's idea of it."""
    import tensorstore as ts
    from t5x_fixture import write_zarr

    from mt3.training import t5x_checkpoints

    array = np.random.default_rng(1).standard_normal((7, 10)).astype(">f4")
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "ts")},
                     "metadata": {"shape": [7, 10], "chunks": [3, 4], "dtype": ">f4", "compressor": compressor}},
                    create=True).result()
    store.write(array).result()
    read = t5x_checkpoints.read_zarr(tmp_path / "ts")
    assert read.dtype == np.float32 and read.dtype.isnative
    np.testing.assert_array_equal(read, array.astype(np.float32))

    write_zarr(tmp_path / "ours", array.astype(np.float32))
    theirs = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "ours")}},
                     open=True).result().read().result()
    np.testing.assert_array_equal(theirs, array.astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Transcription and greedy tokens
# ---------------------------------------------------------------------------------------------------------------

def test_cli_import_then_transcribe_and_same_greedy_tokens_as_direct_params(tiny, tmp_path, capsys):
    from flax.traverse_util import unflatten_dict

    from mt3.audio import write_wav

    src = write_t5x_checkpoint(tmp_path / "released", tiny.params, step=T5X_STEP, param_states=tiny.stats,
                               form="toplevel")
    model_dir = tmp_path / "model"
    argv = ["import-checkpoint", str(src), "--preset", "mt3", "--gin_file", "model_tiny.gin",
            *(f"--gin.{b.split(' = ')[0]}={b.split(' = ')[1]}" for b in TINY_LAYERS), "-o", str(model_dir)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"step {T5X_STEP:,}" in out and "as preset mt3" in out
    assert f"{sum(p.size for p in tiny.params.values()):,} in {len(tiny.params)} arrays" in out
    assert f"sha256 {params_checksum(tiny.params)[:16]}" in out and "statistics converted" in out

    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000.0
    samples = (0.4 * np.sin(2 * np.pi * 220 * t) * (t < 0.5) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    write_wav(tmp_path / "song.wav", samples, 16000)
    flags = [f"--gin.{b.split(' = ')[0]}={b.split(' = ')[1]}" for b in DECODE_BINDINGS]
    assert cli.main(["transcribe", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out"), "--checkpoint",
                     str(model_dir), "--no-progress", *flags]) == 0
    assert (tmp_path / "out" / "song.mid").stat().st_size > 0

    # the imported model dir, loaded as transcribe loads it, vs the written parameters handed over directly; both
    # decoded greedily by the same jitted decoder (one compile)
    imported = model_loading.load_inference_model(model_dir, gin_bindings=DECODE_BINDINGS)
    batch = {"encoder_input_tokens": imported.segment_audio(samples).frames[:4]}
    ids_imported = np.asarray(imported.model.predict_batch(imported.params, batch, max_decode_len=16))
    ids_direct = np.asarray(imported.model.predict_batch(unflatten_dict(tiny.params, sep="/"), batch,
                                                         max_decode_len=16))
    assert ids_imported.shape == (4, 16) and (ids_imported > 1).any()  # real tokens, not all EOS/PAD
    np.testing.assert_array_equal(ids_imported, ids_direct)


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------------------------

def _break(case: str, tiny: Tiny, root: Path) -> tuple[Path, list[str], str]:
    """(source dir, extra argv, text the error line must contain) for each kind of bad input."""
    src = root / "released"
    if case == "no_checkpoint_file":
        src.mkdir()
        (src / "README").write_text("not a checkpoint")
        return src, [], "no 'checkpoint' file"
    if case == "not_msgpack":
        src.mkdir()
        (src / "checkpoint").write_bytes(b"\xc1\x00garbage")
        return src, [], "not a T5X checkpoint"
    if case == "missing_array_in_msgpack":
        partial = {k: v for k, v in tiny.params.items() if k != "decoder/decoder_norm/scale"}
        write_t5x_checkpoint(src, partial, step=T5X_STEP, form="file")
        return src, [], "missing from the checkpoint, e.g. target/decoder/decoder_norm/scale"
    write_t5x_checkpoint(src, tiny.params, step=T5X_STEP, param_states=tiny.stats, form="file")
    if case == "truncated_chunk":
        chunk = src / "target.decoder.logits_dense.kernel" / "0.0"
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
        return src, [], f"{chunk}: corrupt or truncated gzip chunk"
    if case == "missing_array_folder":
        folder = src / "target.encoder.layers_0.mlp.wo.kernel"
        shutil.rmtree(folder)
        return src, [], f"{folder}: array folder missing"
    if case == "wrong_preset":
        return src, ["--preset", str(tiny.piano_preset)], \
            "target/decoder/logits_dense/kernel has shape [128, 1536], the"
    if case == "output_not_empty":
        (root / "model").mkdir()
        (root / "model" / "mine.txt").write_text("keep me")
        return src, [], "already exists and is not empty"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["no_checkpoint_file", "not_msgpack", "missing_array_in_msgpack", "truncated_chunk",
                                  "missing_array_folder", "wrong_preset", "output_not_empty"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny, tmp_path, capsys, case):
    src, extra, expected = _break(case, tiny, tmp_path)
    argv = ["import-checkpoint", str(src), "--preset", str(tiny.preset), *extra, "-o", str(tmp_path / "model")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mt3 import-checkpoint: error: "), err
    assert expected in err, err
    if case == "output_not_empty":
        assert [p.name for p in (tmp_path / "model").iterdir()] == ["mine.txt"]
    else:
        assert not (tmp_path / "model").exists()
    assert _leftovers(tmp_path) == []


def test_failure_while_writing_leaves_no_half_written_model_dir(tiny, tmp_path, monkeypatch):
    from mt3 import gin_utils

    src = write_t5x_checkpoint(tmp_path / "released", tiny.params, step=T5X_STEP, form="gfile")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gin_utils, "write_operative_config", fail)
    with pytest.raises(OSError, match="disk full"):
        import_checkpoint(src, tmp_path / "model", preset=str(tiny.preset))
    assert not (tmp_path / "model").exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# The presets are MT3's released configs
# ---------------------------------------------------------------------------------------------------------------

# magenta/mt3 gin/mt3.gin, gin/ismir2021.gin (+ model.gin sizes); REFERENCE §0 / §5.2
RELEASED = {
    "mt3": {"TASK_FEATURE_LENGTHS": {"inputs": 256, "targets": 1024}, "TRAIN_STEPS": 1000000, "NUM_VELOCITY_BINS": 1,
            "PROGRAM_GRANULARITY": "full", "ONSETS_ONLY": False, "USE_TIES": True,
            "rows": 1536, "params": 45_896_704},
    "ismir2021": {"TASK_FEATURE_LENGTHS": {"inputs": 512, "targets": 1024}, "TRAIN_STEPS": 400000,
                  "NUM_VELOCITY_BINS": 127, "PROGRAM_GRANULARITY": "flat", "ONSETS_ONLY": False, "USE_TIES": False,
                  "rows": 1664, "params": 46_027_776},
}


@pytest.mark.parametrize("preset", sorted(RELEASED))
def test_presets_are_mt3_released_configs(tmp_path, preset):
    from mt3 import gin_utils
    from mt3.models import models

    released = RELEASED[preset]
    model, optimizer_cfg, _ = build_preset_model(preset, model_dir=tmp_path)
    assert (optimizer_cfg.name, optimizer_cfg.base_learning_rate, optimizer_cfg.schedule, optimizer_cfg.decay_rate,
            optimizer_cfg.factored, optimizer_cfg.momentum) == ("adafactor", 1e-3, "constant", 0.8, True, None)
    for macro in ("TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "NUM_VELOCITY_BINS", "PROGRAM_GRANULARITY", "ONSETS_ONLY",
                  "USE_TIES"):
        assert gin_utils.query_macro(macro) == released[macro], macro
    cfg = model.module.config
    assert (cfg.vocab_size, cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.num_encoder_layers,
            cfg.num_decoder_layers, cfg.dropout_rate, cfg.dtype) == \
        (released["rows"], 512, 6, 64, 1024, 8, 8, 0.1, "float32")
    assert models.count_params(model.abstract_params()) == released["params"]
    spec = model_loading.spec_from_gin(model)
    assert (spec.vocab_config.num_velocity_bins, spec.include_ties, spec.input_frames) == \
        (released["NUM_VELOCITY_BINS"], released["USE_TIES"], released["TASK_FEATURE_LENGTHS"]["inputs"])
