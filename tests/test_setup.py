"""Tests for the install path: setup.py's accelerator extras and scripts/setup.sh's MT3_ACCELERATOR / MT3_SETUP.

The extras are jax's own (`jax[cuda12]`, `jax[tpu]`) at the jax pinned in requirements.txt, whose metadata pins the
matching CUDA plugin or libtpu. The network test resolves each extra against the registry with pip's dry run. A plain
`pip install --dry-run ".[cuda12]"` downloads every CUDA wheel to read its metadata (PyPI serves none separately for
them: ~2.5 GB, 90 s measured here), so the test uses pip's `fast-deps` (HTTP range requests: only each wheel's
metadata, ~10 s); the resolver and its answer are the same.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys

import pytest
from helpers import REPO
from packaging.requirements import Requirement

ACCELERATOR_EXTRAS = ("cuda12", "tpu")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def _extras() -> dict[str, list[str]]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def test_accelerator_extras_are_jax_extras_at_the_pinned_jax():
    pins, extras = _pins(), _extras()
    assert pins["jax"] == pins["jaxlib"]
    for extra in ACCELERATOR_EXTRAS:
        [requirement] = [Requirement(r) for r in extras[extra]]
        assert (requirement.name, requirement.extras, str(requirement.specifier)) == ("jax", {extra},
                                                                                     f"=={pins['jax']}")


def test_the_pinned_jax_declares_both_extras_with_plugins_at_its_own_version():
    """jax's metadata (the installed jax is the pinned one) is what makes the plugin/libtpu versions match jax."""
    pin = _pins()["jax"]
    assert importlib.metadata.version("jax") == pin
    by_extra: dict[str, list[Requirement]] = {}
    for text in importlib.metadata.requires("jax") or []:
        requirement = Requirement(text)
        for extra in ACCELERATOR_EXTRAS:
            if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
                by_extra.setdefault(extra, []).append(requirement)
    cuda = {r.name: r for r in by_extra["cuda12"]}
    assert cuda["jax-cuda12-plugin"].specifier.contains(pin) and "with-cuda" in cuda["jax-cuda12-plugin"].extras
    assert len(list(cuda["jax-cuda12-plugin"].specifier.filter([pin, "0.0.1", "99.0"]))) == 1  # pinned to jax's
    assert cuda["jaxlib"].specifier.contains(pin)
    assert "libtpu" in {r.name for r in by_extra["tpu"]}


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("extra", ACCELERATOR_EXTRAS)
def test_each_accelerator_extra_resolves_against_the_registry(extra, tmp_path):
    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable from this machine")
    pin = _pins()["jax"]
    report = tmp_path / "report.json"

    def dry_run(*feature: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-build-isolation", *feature,
             "--report", str(report), "-c", "requirements.txt", f".[{extra}]"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})

    result = dry_run("--use-feature=fast-deps")
    if result.returncode and "fast-deps" in result.stderr and "invalid choice" in result.stderr:
        result = dry_run()  # a pip without the feature: the same resolution, downloading whole wheels
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    versions = {**{name: importlib.metadata.version(name) for name in ("jax", "jaxlib")}, **resolved}
    assert versions["jax"] == versions["jaxlib"] == pin  # kept at the pin (installed, or resolved to it)
    if extra == "cuda12":
        assert versions["jax-cuda12-plugin"] == versions["jax-cuda12-pjrt"] == pin
        assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12"} <= set(versions)
    else:
        assert "libtpu" in versions


def _plan(**env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MT3_")}
    return subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**clean, "MT3_SETUP_PLAN": "1", **env})


def test_setup_sh_without_variables_installs_everything_for_the_cpu():
    result = _plan()
    assert result.returncode == 0, result.stderr
    apt = re.search(r"^apt: (.*)$", result.stdout, re.M).group(1).split()
    assert {"chromium", "chromium-driver", "fluidsynth", "fluid-soundfont-gm", "ffmpeg", "libsndfile1"} <= set(apt)
    assert re.search(r"^pip: (.*)$", result.stdout, re.M).group(1) == (
        "install -r requirements.txt; install --no-deps -e .")


def test_setup_sh_for_a_tpu_training_worker_skips_browser_and_soundfonts():
    result = _plan(MT3_SETUP="train", MT3_ACCELERATOR="tpu")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^apt: (.*)$", result.stdout, re.M).group(1).split() == ["libsndfile1"]
    assert re.search(r"^pip: (.*)$", result.stdout, re.M).group(1).endswith(
        "; install -c requirements.txt -e .[tpu]")
    cuda = _plan(MT3_ACCELERATOR="cuda12")
    assert "chromium" in cuda.stdout and cuda.stdout.rstrip().endswith("-e .[cuda12]")


def test_setup_sh_refuses_an_unknown_accelerator_in_one_line():
    result = _plan(MT3_ACCELERATOR="rocm")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == "setup: MT3_ACCELERATOR must be cpu, cuda12 or tpu, got 'rocm'"
