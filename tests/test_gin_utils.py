"""Tests for mt3.gin_utils: gin files by role, search paths, `--gin.NAME=VALUE`, bad configs failing at start-up with
exit code 2 (before any work), and the config written into the model directory."""

from __future__ import annotations

import subprocess
import sys

import gin
import pytest
from helpers import MT3, REPO, subprocess_env

from mt3 import gin_utils
from mt3.errors import InputError
from mt3.training import train


@pytest.fixture(autouse=True)
def _clear_gin():
    yield
    gin.clear_config()


def macro(name):
    """A macro's value; a derived one (NUM_EMBEDDINGS = @vocabularies.num_embeddings()) evaluated."""
    value = gin_utils.query_macro(name)
    return value.scoped_configurable_fn() if isinstance(value, gin.config.ConfigurableReference) else value


@pytest.mark.parametrize("preset, expected", [
    # REFERENCE §0 / §5.3: MT3 and ismir2021 settings
    ("mt3.gin", {"MIXTURE_OR_TASK_NAME": "mega_notes_ties_vb1_train", "NUM_EMBEDDINGS": 1536, "NUM_VELOCITY_BINS": 1,
                 "PROGRAM_GRANULARITY": "full", "USE_TIES": True, "TRAIN_STEPS": 1_000_000, "BATCH_SIZE": 256,
                 "TASK_FEATURE_LENGTHS": {"inputs": 256, "targets": 1024}}),
    ("ismir2021.gin", {"MIXTURE_OR_TASK_NAME": "maestrov3_notes_train", "NUM_EMBEDDINGS": 1664,
                       "NUM_VELOCITY_BINS": 127, "PROGRAM_GRANULARITY": "flat", "USE_TIES": False,
                       "TRAIN_STEPS": 400_000, "TASK_FEATURE_LENGTHS": {"inputs": 512, "targets": 1024}}),
    ("local.gin", {"MIXTURE_OR_TASK_NAME": "local_mix_notes_ties_vb1_train", "NUM_EMBEDDINGS": 1536}),
    # local_tiny: T5's 1e-2 instead of MT3's 1e-3, so a 12-minute CPU run gets somewhere (measured in the gin file)
    ("local_tiny.gin", {"MIXTURE_OR_TASK_NAME": "local_mix_notes_ties_vb1_train", "BATCH_SIZE": 8,
                        "LEARNING_RATE": 1e-2}),
])
def test_presets_parse_with_their_settings(preset, expected, tmp_path):
    for files in ([f"gin/{preset}"], [f"gin/{preset}", "gin/train.gin"], ["gin/train.gin", f"gin/{preset}"]):
        gin_utils.parse_gin_flags(files, [], model_dir=tmp_path)  # either order: train.gin is read once
        assert {name: macro(name) for name in expected} == expected, files
        assert gin.query_parameter("trainer.OptimizerConfig.decay_rate") == 0.8
        assert macro("LEARNING_RATE") == expected.get("LEARNING_RATE", 1e-3) and macro("LR_SCHEDULE") == "constant"


def test_local_tiny_is_bounded_and_tiny(tmp_path):
    gin_utils.parse_gin_flags(["local_tiny.gin"], [], model_dir=tmp_path)  # found in the package gin/ folder
    assert 0 < macro("MAX_TRAIN_SECONDS") <= 15 * 60
    assert gin.query_parameter("network.T5Config.emb_dim") < 512


def test_bindings_override_files_and_model_dir_forms(tmp_path):
    flags = gin_utils.parse_gin_flags(["gin/mt3.gin"], ["BATCH_SIZE = 64", "MODEL_DIR = /tmp/unquoted"])
    assert macro("BATCH_SIZE") == 64 and macro("MODEL_DIR") == "/tmp/unquoted"
    assert [p.name for p in flags.files] == ["mt3.gin", "train.gin", "model_small.gin"]
    gin_utils.parse_gin_flags(["gin/mt3.gin"], ["MODEL_DIR = '/tmp/quoted'"], model_dir=tmp_path / "wins")
    assert macro("MODEL_DIR") == str(tmp_path / "wins")


def test_search_path_finds_user_gin_files(tmp_path):
    (tmp_path / "mine.gin").write_text("include 'mt3.gin'\nBATCH_SIZE = 12\n")
    flags = gin_utils.parse_gin_flags(["mine.gin"], [], search_paths=[tmp_path], model_dir=tmp_path)
    assert macro("BATCH_SIZE") == 12 and flags.files[0] == tmp_path / "mine.gin"


@pytest.mark.parametrize("files, bindings, message", [
    (["gin/mt3.gin"], ["trainer.OptimizerConfig.decay = 0.5"], "doesn't have a parameter named 'decay'"),
    (["gin/mt3.gin"], ["nosuch.Thing.x = 1"], "No configurable matching 'nosuch.Thing'"),
    (["gin/mt3.gin"], ["BATCH_SIZE = (1"], "bad gin binding --gin.BATCH_SIZE=(1: "),
    (["gin/mt3.gin"], ["train_script.train.model = %UNDEFINED"], "UNDEFINED"),
    (["gin/no_such_file.gin"], [], "gin file not found"),
])
def test_bad_configs_raise_input_error(files, bindings, message, tmp_path):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        gin_utils.parse_gin_flags(files, bindings, model_dir=tmp_path)


def test_missing_model_dir_is_explained():
    with pytest.raises(InputError, match="--model_dir"):
        gin_utils.parse_gin_flags(["gin/mt3.gin"], [])


def test_write_operative_config_records_bindings_and_copies_files(tmp_path):
    flags = gin_utils.parse_gin_flags(["gin/ismir2021.gin"], ["BATCH_SIZE = 48"], model_dir=tmp_path)
    path = gin_utils.write_operative_config(tmp_path, flags)
    text = path.read_text()
    assert path == tmp_path / "config.gin"
    assert "BATCH_SIZE = 48" in text and "NUM_VELOCITY_BINS = 127" in text and "# gin binding: BATCH_SIZE = 48" in text
    assert "NUM_EMBEDDINGS = @vocabularies.num_embeddings()" in text  # derived from the vocabulary, as MT3's model.gin
    for name in ("ismir2021.gin", "train.gin", "model_small.gin"):
        assert (tmp_path / "gin" / name).read_bytes() == (REPO / "gin" / name).read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically
    gin.clear_config()  # the written config is itself a valid gin file
    gin_utils.parse_gin_flags([path], [])
    assert macro("BATCH_SIZE") == 48 and macro("MODEL_DIR") == str(tmp_path)


@pytest.mark.slow
def test_cli_bad_binding_exits_2_before_any_work(tmp_path):
    model_dir = tmp_path / "never_created"
    result = subprocess.run(MT3 + ["train", "--gin_file=gin/mt3.gin", "--gin.trainer.OptimizerConfig.bogus=1",
                                   f"--model_dir={model_dir}"],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["mt3 train: error: bad gin binding --gin.trainer.OptimizerConfig.bogus=1: Configurable "
                     "'trainer.OptimizerConfig' doesn't have a parameter named 'bogus'."]
    assert not model_dir.exists()  # no config, no checkpoint, no data: it stopped at start-up


def test_parsing_does_not_import_tensorflow_or_the_data_layer():
    code = ("import sys; from mt3 import gin_utils; from mt3.training import train; "
            "gin_utils.parse_gin_flags(['gin/mt3.gin'], [], model_dir='/tmp/x'); "
            "bad = [m for m in ('tensorflow', 'seqio', 'mt3.tasks') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Bindings checked one by one, named as the user wrote them (issue #12)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("binding, message", [
    ("BATCH_SIZE = 'x'", "--gin.BATCH_SIZE='x': BATCH_SIZE takes an int (the gin files set 8), got a str 'x'"),
    ("LEARNING_RATE = 'fast'", "--gin.LEARNING_RATE='fast': LEARNING_RATE takes a float"),
    ("USE_TIES = 1", "--gin.USE_TIES=1: USE_TIES takes a bool (the gin files set True), got an int 1"),
    ("network.T5Config.emb_dim = 'wide'",
     "--gin.network.T5Config.emb_dim='wide': network.T5Config.emb_dim takes an int (its default is 512)"),
    ("NO_SUCH = 1", "--gin.NO_SUCH=1: unknown macro NO_SUCH; did you mean "),
    ("batch_size = 4", "--gin.batch_size=4: unknown macro batch_size; did you mean BATCH_SIZE"),
    ("BATCH_SIZE = (", "bad gin binding --gin.BATCH_SIZE=(: EOF in multi-line statement"),
    ("BATCH_SIZE = 'x", "bad gin binding --gin.BATCH_SIZE='x: "),
])
def test_each_binding_is_checked_and_named(binding, message, tmp_path):
    with pytest.raises(InputError) as info:
        gin_utils.parse_gin_flags(["gin/local_tiny.gin"], [binding], model_dir=tmp_path)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert "line 1" not in str(info.value) and "config string" not in str(info.value)


def test_compatible_values_and_new_macros_in_use_are_accepted(tmp_path):
    gin_utils.parse_gin_flags(["gin/local_tiny.gin"], [
        "LEARNING_RATE = 1",  # an int where the files have a float
        "MAX_TRAIN_SECONDS = None",  # None replaces anything
        "TASK_FEATURE_LENGTHS = {'inputs': 128, 'targets': 64}",
        "train/utils.DatasetConfig.seed = %MY_SEED", "MY_SEED = 7",  # a macro defined and used by the user
        "INFER_EVAL_TASKS = ['local_notes_ties_vb1_validation']",  # read by code, defined by no gin file
        "inference.InferenceConfig.batch_size = 2",  # decoding settings for INFER_EVAL_TASKS
    ], model_dir=tmp_path)
    assert macro("LEARNING_RATE") == 1 and macro("MAX_TRAIN_SECONDS") is None and macro("MY_SEED") == 7


@pytest.mark.slow
def test_invalid_config_values_stop_before_the_model_dir_is_written(tmp_path):
    """A value of the right type that a config refuses (a negative batch) stops `train_from_gin` at start-up."""
    flags = gin_utils.parse_gin_flags(["gin/local_tiny.gin"], ["BATCH_SIZE = -1"], model_dir=tmp_path / "run")
    with pytest.raises(InputError, match="train_dataset_cfg: DatasetConfig.batch_size must be a positive int"):
        train.train_from_gin(flags)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("binding, expected", [
    ("--gin.BATCH_SIZE='x'", "--gin.BATCH_SIZE='x': BATCH_SIZE takes an int"),
    ("--gin.NO_SUCH=1", "--gin.NO_SUCH=1: unknown macro NO_SUCH"),
    ("--gin.BATCH_SIZE=(", "bad gin binding --gin.BATCH_SIZE=(: "),
    ("--gin.BATCH_SIZE=-1", "DatasetConfig.batch_size must be a positive int, got -1"),
])
@pytest.mark.slow
def test_cli_bad_bindings_one_line_exit_2_nothing_written(binding, expected, tmp_path):
    model_dir = tmp_path / "run"
    result = subprocess.run(MT3 + ["train", "--gin_file=gin/local_tiny.gin", binding, f"--model_dir={model_dir}"],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [f"mt3 train: error: {result.stderr.strip().split(': error: ')[1]}"]
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not model_dir.exists()


def _import_graph() -> dict[str, set[str]]:
    """mt3 module -> the mt3 modules it imports anywhere (module level or inside functions), from the source."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in (REPO / "mt3").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mt3"):
                if node.module != "mt3":  # `from mt3 import x` needs mt3.x, not all that mt3/__init__ may load
                    deps.add(node.module)
                deps.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name.startswith("mt3"))
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_circle_through_gin_utils_train_evaluation_inference():
    graph = _import_graph()

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for dep in graph[todo.pop()]:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    # the circle of issue #12: gin_utils imported train/evaluation (to register them) while they import gin_utils
    registering = {"mt3.training.train", "mt3.evaluation", "mt3.inference", "mt3.transcription"}
    assert not registering & reachable("mt3.gin_utils")
    for module in ("mt3.gin_utils", "mt3.training.train", "mt3.evaluation", "mt3.training.checkpoints"):
        assert module not in reachable(module), f"{module} imports itself through {sorted(reachable(module))}"
    # issue 18's circles: mixing <-> preprocessors and note_sequences <-> track_tokens (the data layer reads one way)
    for module in ("mt3.mixing", "mt3.preprocessors", "mt3.data.track_examples", "mt3.note_sequences",
                   "mt3.data.track_tokens", "mt3.data.augmentation", "mt3.data.frame_targets"):
        assert module not in reachable(module), f"{module} imports itself through {sorted(reachable(module))}"


# ---------------------------------------------------------------------------------------------------------------
# One registration table (mt3.configurables), gin files inside the package (issue 24)
# ---------------------------------------------------------------------------------------------------------------

def test_every_configurable_a_gin_file_names_is_in_the_table():
    import re

    from mt3 import configurables

    named = set()
    for path in (REPO / "gin").rglob("*.gin"):
        for line in path.read_text().splitlines():
            code = line.split("#")[0]
            # `scope/module.Name.param = ...`, `module.Name:` blocks and `@module.Name` references
            named.update(re.findall(r"(?:^|@|/)([a-z_]+\.[A-Za-z_]+)(?=[.:(\s]|$)", code.strip()))
    names = {entry.gin_name for entry in configurables.TABLE}
    assert named - {"gin.macro"} <= names, sorted(named - names)
    for entry in configurables.TABLE:  # each target exists under the name gin files use
        module, _, attribute = entry.target.partition(":")
        assert callable(getattr(__import__(module, fromlist=[attribute]), attribute)), entry
    with pytest.raises(ValueError, match="unknown configurable stage"):
        configurables.register(["trainig"])


def test_inference_stages_read_a_training_config_without_importing_the_loop(tmp_path):
    """A model dir's config.gin names train_script.train / DatasetConfig (short names): parsed with the serving stages,
    the training entries of the table are skipped unregistered and mt3.training.train is never imported."""
    gin_utils.parse_gin_flags(["gin/local_tiny.gin"], [], model_dir=tmp_path)
    config = gin_utils.write_operative_config(tmp_path, None)
    assert "train.model = %MODEL" in config.read_text() and "train/DatasetConfig.batch_size" in config.read_text()
    code = ("import sys; from mt3 import configurables, gin_utils; "
            f"gin_utils.parse_gin_flags([{str(config)!r}], ['DROPOUT_RATE = 0.0'], finalize=False, "
            "stages=configurables.SERVING_STAGES); import gin; "
            "model = gin.query_parameter('MODEL/macro.value').scoped_configurable_fn(); "
            "print(model.module.config.vocab_size, sorted(m for m in sys.modules if m.startswith('mt3.training')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    vocab_size, _, imported = result.stdout.strip().partition(" ")
    assert vocab_size == "1536" and "mt3.training.train" not in imported, result.stdout


def test_gin_dir_is_the_checkout_gin_folder():
    assert gin_utils.GIN_DIR == REPO / "gin"
    assert gin_utils.resolve_gin_file("gin/mt3.gin") == REPO / "gin" / "mt3.gin" or \
        gin_utils.resolve_gin_file("gin/mt3.gin").samefile(REPO / "gin" / "mt3.gin")


@pytest.mark.slow
def test_wheel_ships_the_gin_files_and_a_non_editable_install_finds_them(tmp_path):
    """setup.py maps mt3.gin onto the top-level gin/: the built wheel holds every gin file, and a copy installed
    elsewhere (pip --target, no editable finder) parses `gin/mt3.gin` and `mt3.gin` from an unrelated directory."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # a copy: setuptools builds in the source tree (build/), which stays clean
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    source.mkdir()
    for name in ("setup.py", "README.md", "mt3", "gin"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": ignore} if (REPO / name).is_dir() else {}))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(source)], cwd=tmp_path, check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("mt3-*.whl")
    in_wheel = sorted(n.removeprefix("mt3/gin/") for n in zipfile.ZipFile(wheel).namelist()
                      if n.startswith("mt3/gin/"))
    assert in_wheel == sorted(p.relative_to(REPO / "gin").as_posix() for p in (REPO / "gin").rglob("*.gin"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], cwd=tmp_path, check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import sys, gin, mt3; from mt3 import gin_utils; print(mt3.__file__); print(gin_utils.GIN_DIR); "
            "[gin_utils.parse_gin_flags([f], [], model_dir='/tmp/mt3_wheel_test') for f in sys.argv[1:]]; "
            "print(gin.query_parameter('%NUM_VELOCITY_BINS'), gin.query_parameter('%TASK_PREFIX'))")
    result = subprocess.run([sys.executable, "-c", code, "gin/mt3.gin", "ismir2021.gin"], cwd=elsewhere,
                            env=subprocess_env(PYTHONPATH=str(site)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    module_file, gin_dir, macros = result.stdout.strip().splitlines()[-3:]
    assert module_file.startswith(str(site)) and gin_dir == str(site / "mt3" / "gin")
    assert macros == "127 maestrov3_notes"
