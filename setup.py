"""Installable `mt3`: `pip install -e .` (pinned versions live in requirements.txt)."""
from setuptools import find_packages, setup

setup(
    name="mt3",
    version="0.1.0",
    description="Multi-task multitrack music transcription (MT3) in JAX/Flax, seqio and gin.",
    python_requires=">=3.11,<3.13",
    # the top-level gin/ folder ships inside the package as mt3/gin/ (as MT3 and T5X keep their configs), so a
    # non-editable install finds --gin_file=gin/mt3.gin and mt3.gin from any directory (mt3.gin_utils.GIN_DIR)
    packages=[*find_packages(include=["mt3", "mt3.*"]), "mt3.gin"],
    package_dir={"mt3.gin": "gin"},
    # the bundled model (mt3/pretrained/NAME/: params.npz, config.gin, model.json) ships inside the package
    package_data={"mt3.pretrained": ["*/params.npz", "*/config.gin", "*/model.json"],
                  "mt3.gin": ["*.gin", "**/*.gin"]},
    install_requires=[
        "jax", "flax", "optax", "orbax-checkpoint", "gin-config", "seqio", "note-seq", "pretty_midi",
        "mir_eval", "soundfile", "librosa", "soxr", "music21", "tqdm", "rich", "matplotlib", "pyyaml", "jams",
        "fastapi", "uvicorn", "python-multipart", "tensorboardX",
        "gcsfs",  # gs:// model dirs, data and checkpoints (mt3/paths.py)
        "onnx", "onnxruntime",  # decoder_runtime = 'onnxruntime' (mt3/models/ort_decoder.py)
    ],
    # Accelerators: jax's own extras at the jax version pinned in requirements.txt (tests/test_setup.py checks that the
    # two agree and that both extras resolve); jax's metadata pins the matching jaxlib and jax-cuda12-plugin[with-cuda]
    # (CUDA 12 and cuDNN from pip wheels) or libtpu. Install with scripts/setup.sh (MT3_ACCELERATOR=cuda12|tpu), which
    # keeps every other package at its requirements.txt pin.
    extras_require={"test": ["pytest", "hypothesis", "ruff", "selenium", "gcp-storage-emulator"],
                    "cuda12": ["jax[cuda12]==0.10.2"],
                    "tpu": ["jax[tpu]==0.10.2"]},
    entry_points={"console_scripts": ["mt3=mt3.cli:main"]},
)
