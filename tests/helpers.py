"""Builders shared by the test modules: the repository paths and `mt3` command, a subprocess environment, the tiny real
model and its synthetic batches, the trained tiny model directory of the inference tests, a random inference model,
a server in a thread and a free port. Test modules import these from here, never from one another, so each test
module only holds tests (and the fixtures of its own module). Real-data fixtures live in `data_fixtures.py` and
`native_fixtures.py`; session fixtures in `conftest.py`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MT3 = [sys.executable, "-m", "mt3.cli"]


def subprocess_env(**extra) -> dict[str, str]:
    """The environment for a child `mt3` / python process: CPU JAX, quiet TensorFlow, unbuffered output, none of the
    parent's JAX/XLA/SLURM/TPU settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "SLURM_", "TPU_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu", **extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# The real model, shrunk (training tests)
# ---------------------------------------------------------------------------------------------------------------

# Dropout on, so that resume tests also check the RNG is restored.
TINY_MODEL_BINDINGS = [
    "network.T5Config.input_frontend = 'features'",
    "network.T5Config.input_depth = 16",
    "network.T5Config.emb_dim = 32",
    "network.T5Config.num_heads = 2",
    "network.T5Config.head_dim = 16",
    "network.T5Config.mlp_dim = 64",
    "network.T5Config.num_encoder_layers = 1",
    "network.T5Config.num_decoder_layers = 1",
    "NUM_EMBEDDINGS = 128",
    "DROPOUT_RATE = 0.1",
]
TINY_RUN_BINDINGS = TINY_MODEL_BINDINGS + [
    "DATA_SOURCE = 'synthetic'",
    "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 16}",
    "BATCH_SIZE = 8",
    "EVAL_BATCH_SIZE = 8",
    "EVAL_STEPS = 1",
    "SUMMARY_PERIOD = 5",
]


def tiny_model(dropout_rate: float = 0.0, vocab_size: int = 128):
    """The real encoder-decoder at TINY_MODEL_BINDINGS' sizes (features frontend, 16 input features)."""
    from mt3.models import models, network

    config = network.T5Config(vocab_size=vocab_size, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                              num_encoder_layers=1, num_decoder_layers=1, dropout_rate=dropout_rate,
                              input_depth=16, input_frontend="features")
    return models.ContinuousInputsEncoderDecoderModel(network.Transformer(config))


def synthetic_batch(batch_size: int = 8, seed: int = 0, shard_id: int = 0, index: int = 0) -> dict[str, np.ndarray]:
    """Batch `index` of the synthetic stream that fits `tiny_model` (deterministic in seed, shard and index)."""
    from mt3.training import input_pipeline, train

    cfg = train.DatasetConfig(task_feature_lengths={"inputs": 16, "targets": 16}, batch_size=batch_size,
                              source="synthetic", seed=seed)
    batches = input_pipeline.synthetic_batches(cfg, host_batch_size=batch_size, shard_id=shard_id, vocab_size=128,
                                               input_depth=16, start=index)
    return next(batches)


# ---------------------------------------------------------------------------------------------------------------
# A trained tiny model directory (inference, evaluation, CLI, server, API tests)
# ---------------------------------------------------------------------------------------------------------------

TRAIN_STEPS = 160
CHECKPOINT_PERIOD = 80
# decoding bindings shared by every test that loads the checkpoint: short decodes keep CPU tests fast
TEST_BINDINGS = ["MAX_DECODE_LENGTH = 192", "INFER_BATCH_SIZE = 4"]
TRACKS = [(0, 4), (4, 8), (8, 12), (12, 16), (14, 18)]  # seconds of the chorale; the last two are the test split


@dataclass
class TinyModel:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def reference_midi(self, i: int) -> Path:
        return self.root / f"ref{i}.mid"

    def wav(self, i: int) -> Path:
        """Track i's audio as a float WAV: bit-identical to the samples in the records."""
        return self.root / "audio" / f"track{i}.wav"

    @property
    def bindings(self) -> list[str]:
        return [*TEST_BINDINGS, f"DATA_DIR = '{self.data_dir}'"]

    @property
    def gin_flags(self) -> list[str]:
        """The bindings as command-line flags (--gin.NAME=VALUE)."""
        return [f"--gin.{b.split('=', 1)[0].strip()}={b.split('=', 1)[1].strip()}" for b in self.bindings]


def build_tiny_model(tmp_path_factory) -> TinyModel:
    """Builds (once per session) a tiny prepared dataset from a real music21 chorale (references parsed from MIDI
    files, audio synthesised from the notes) and a tiny model trained on it through mt3.training.train's gin API for
    TRAIN_STEPS steps: enough to emit real notes, so metrics are not all zero."""
    root = tmp_path_factory.getbasetemp() / "mt3_tiny_inference_model"
    done = root / "DONE"
    if done.exists():
        return TinyModel(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    from conftest import music21_note_sequence
    from data_fixtures import sub_sequence, synth, write_prepared_dataset

    from mt3 import gin_utils
    from mt3.audio import write_wav
    from mt3.midi_io import load_midi, write_midi
    from mt3.training import train

    chorale = music21_note_sequence("bach_chorale")
    tracks = []
    for i, (start, end) in enumerate(TRACKS):
        write_midi(sub_sequence(chorale, start, end), root / f"ref{i}.mid")
        ns = load_midi(root / f"ref{i}.mid")  # the reference IS the MIDI file's content (what `mt3 score` reads)
        tracks.append((f"Track{i:05d}", ns))
        write_wav(root / "audio" / f"track{i}.wav", synth(ns), subtype="FLOAT")
    write_prepared_dataset(root / "data", "local", {"train": tracks[:4], "validation": tracks[4:], "test": tracks[3:]})
    bindings = ["network.T5Config.emb_dim = 64", "network.T5Config.num_heads = 2", "network.T5Config.head_dim = 16",
                "network.T5Config.mlp_dim = 128", "network.T5Config.num_encoder_layers = 1",
                "network.T5Config.num_decoder_layers = 1", f"TRAIN_STEPS = {TRAIN_STEPS}", "BATCH_SIZE = 4",
                "TASK_FEATURE_LENGTHS = {'inputs': 256, 'targets': 256}", f"DATA_DIR = '{root / 'data'}'",
                f"CHECKPOINT_PERIOD = {CHECKPOINT_PERIOD}", "EVAL_PERIOD = 0", "MAX_TRAIN_SECONDS = None",
                "SUMMARY_PERIOD = 40", "LEARNING_RATE = 0.01"]
    saved_env = os.environ.get("MT3_DATA_DIR")
    try:
        flags = gin_utils.parse_gin_flags(["local_tiny.gin"], bindings, model_dir=root / "model")
        train.train_from_gin(flags)
    finally:  # tasks.get_dataset exports the data dir; do not leak it into other tests
        if saved_env is None:
            os.environ.pop("MT3_DATA_DIR", None)
        else:
            os.environ["MT3_DATA_DIR"] = saved_env
    done.write_text("ok")
    return TinyModel(root)


def random_inference_model(batch_size: int = 2, max_decode_len: int = 16, **config):
    """A randomly initialised small model (tests that need only the mechanics, not a checkpoint)."""
    import jax

    from mt3 import inference
    from mt3.models import models, network

    net = network.T5Config(vocab_size=1536, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=1,
                           num_decoder_layers=1, dropout_rate=0.0)
    model = models.ContinuousInputsEncoderDecoderModel(network.Transformer(net))
    return inference.InferenceModel(model, model.init_params(jax.random.PRNGKey(0)),
                                    config=inference.InferenceConfig(batch_size=batch_size,
                                                                     max_decode_len=max_decode_len, **config))


@contextlib.contextmanager
def running_server(im, **limits):
    """Yields the base URL of a uvicorn server running `server.create_app(im, **limits)` in a thread."""
    import uvicorn

    from mt3.serving import server

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(server.create_app(im, **limits), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        sock.close()


# ---------------------------------------------------------------------------------------------------------------
# Tokenized real pieces (mixing and frame-target tests)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tracks(music21_sequences):
    """(TokenizeConfig, three tokenized 14-second real pieces: a chorale, a string quartet, a piano piece)."""
    from data_fixtures import sub_sequence, synth

    from mt3.data import track_examples

    config = track_examples.TokenizeConfig()
    out = []
    for key, start in (("bach_chorale", 0.0), ("string_quartet", 10.0), ("piano_piece", 5.0)):
        ns = sub_sequence(music21_sequences[key], start, start + 14.0)
        out.append(track_examples.tokenize_track(synth(ns), ns, config))
    return config, out


# ---------------------------------------------------------------------------------------------------------------
# MT3's presets at tiny sizes (checkpoint import and fine-tuning tests); the tiny model on prepared records
# ---------------------------------------------------------------------------------------------------------------

T5X_STEP = 4321  # the step of the fake released T5X checkpoints
TINY_LAYERS = ["network.T5Config.num_encoder_layers = 1", "network.T5Config.num_decoder_layers = 1",
               "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 64}"]


def tiny_preset_gin(path: Path, base: str) -> Path:
    """A gin file: preset `base` (mt3.gin, ismir2021.gin) at model_tiny.gin's sizes, one layer each side."""
    path.write_text("\n".join([f"include '{base}'", "include 'model_tiny.gin'", *TINY_LAYERS]) + "\n")
    return path


def real_data_bindings(data_dir: Path) -> list[str]:
    """The tiny model on prepared records (raw 128-sample frames, MT3's vocabulary) through the indexed sampler."""
    model = [b for b in TINY_RUN_BINDINGS if not b.startswith(("network.T5Config.input_depth", "NUM_EMBEDDINGS",
                                                               "DATA_SOURCE", "TASK_FEATURE_LENGTHS", "BATCH_SIZE"))]
    return model + ["network.T5Config.input_depth = 128", "NUM_EMBEDDINGS = 1536", "DATA_SOURCE = 'seqio'",
                    f"DATA_DIR = '{data_dir}'", "MIXTURE_OR_TASK_NAME = 'local_mix_notes_ties_vb1_train'",
                    "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 64}", "BATCH_SIZE = 4",
                    "train/utils.DatasetConfig.block_tracks = 3"]
