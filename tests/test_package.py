"""pyproject.toml: the library installs without network and imports from where it was installed."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "dataloader", "training")

CHECK = """
import torch, models
print(models.__file__)
m = models.build_model("fishnet99", width=0.25).eval()
with torch.no_grad():
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    backbone = models.build_model("fishnet99", width=0.25, features_only=True, out_indices=(5, 7))
    features = backbone(torch.randn(1, 3, 32, 32))
assert [f.shape[1] for f in features] == backbone.feature_info.channels()
import dataloader
print(dataloader.__file__)
"""


def test_installs_and_imports_from_the_target(tmp_path):
    pytest.importorskip("setuptools")
    # A copy of what a clone holds, so that the build leaves nothing in the working tree.
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    for package in PACKAGES:
        if (REPO / package).is_dir():
            shutil.copytree(
                REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
            )
    target = tmp_path / "target"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    install = subprocess.run(
        [*pip, "--no-index", "--quiet", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=elsewhere,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    models_file, dataloader_file = map(Path, result.stdout.split())
    assert models_file.is_relative_to(target) and dataloader_file.is_relative_to(target)
    assert not (target / "tests").exists() and not (target / "data").exists()
