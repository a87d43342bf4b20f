"""Fixtures shared by all test files.

Data for tests comes in two sizes:

- `cifar10_dir` (session): the real CIFAR-10 (the JPEG q75 copy at ../shared/data/, see
  SHARED_TARBALL) prepared once per session by data/download_data.py into a temporary folder;
  the value is the dataset folder (manifests, classes.json, images/). Tests that use it are
  skipped when the tarball is absent; mark them `@pytest.mark.real_data`.
- synthetic data, fast enough for any test: `make_synthetic_source(...)` writes a small
  image-folder source (random 32x32 PNGs for the 10 CIFAR-10 classes) and
  `synthetic_cifar10_dir` (session) is such a source prepared by data/download_data.py
  (80 train, 20 valid, 40 test images). Do not modify the session datasets; copy them first.

`run_download_data(*args)` runs data/download_data.py in a subprocess and returns the
subprocess.CompletedProcess (text stdout and stderr).

`make test-fast` (pytest -m "not slow") is the edit-test loop's subset, about 1.5 minutes on a
quiet 2-core CPU; `make test` runs everything. Mark a new test `@pytest.mark.slow` (a whole
file: `pytestmark = pytest.mark.slow`; one case: `pytest.param(..., marks=pytest.mark.slow)`)
when it takes more than 3 s on such a CPU (`pytest --durations=0`), or when it or a fixture it
uses starts train.py, eval.py, predict.py, bench.py, ablate.py or another Python that imports
torch (4-9 s each; data/download_data.py imports no torch, about 1 s a run). Tests marked
`real_data` are slow without saying so (pytest_collection_modifyitems below): `cifar10_dir`
alone takes about a minute.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TARBALL = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpeg.tar.gz"
DOWNLOAD_SCRIPT = REPO_ROOT / "data" / "download_data.py"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def run_download_data(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DOWNLOAD_SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )


def randomised(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with random BN statistics and affine parameters, so that a
    misplaced BN changes the logits."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return model.eval()


# A model and batch small enough for a CPU test to train in seconds.
SMALL = ["--model", "fishnet99", "--width", "0.25", "--batch-size", "32", "--device", "cpu"]


def run_script(
    script: str, *args, timeout: int = 600, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess:
    """Runs one of the repository's scripts (train.py, eval.py, ...) as a user would, from
    the repository's folder unless ``cwd`` says otherwise."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def one_line_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    """Exit status 2 and one error line holding every phrase; progress bars may stand before
    it, but no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


def without_timing(history: list[dict]) -> list[dict]:
    """A run's history less the fields that measure time, which no two runs share."""
    timing = {"images_per_sec", "epoch_time", "startup_time", "eval_time", "elapsed"}
    return [{k: v for k, v in row.items() if k not in timing} for row in history]


def write_synthetic_source(
    root: Path,
    train_per_class: int = 10,
    test_per_class: int = 4,
    classes: tuple[str, ...] = CIFAR10_CLASSES,
    seed: int = 0,
) -> Path:
    """An image-folder source root/{train,test}/<class>/NNNN.png of random 32x32 RGB images."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for class_name in classes:
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index:04d}.png")
    return root


@pytest.fixture
def make_synthetic_source(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """A factory: make_synthetic_source(train_per_class=10, test_per_class=4, seed=0) -> a new
    image-folder source in its own temporary folder."""

    def make(**options) -> Path:
        return write_synthetic_source(tmp_path_factory.mktemp("synthetic-source"), **options)

    return make


@pytest.fixture(scope="session")
def synthetic_cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = write_synthetic_source(tmp_path_factory.mktemp("synthetic-source"))
    out = tmp_path_factory.mktemp("synthetic-data")
    result = run_download_data("--source", source, "--out", out)
    assert result.returncode == 0, result.stderr
    return out / "cifar10"


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SHARED_TARBALL.is_file():
        pytest.skip(f"real CIFAR-10 tarball not found at {SHARED_TARBALL}")
    out = tmp_path_factory.mktemp("cifar10-real")
    result = run_download_data("--source", SHARED_TARBALL, "--out", out)
    assert result.returncode == 0, result.stderr
    return out / "cifar10"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the real data are slow: `cifar10_dir` prepares all 60,000 images, and
    test_predict.py's `real_run` trains on a few of them."""
    for item in items:
        if item.get_closest_marker("real_data") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
