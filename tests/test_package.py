"""pyproject.toml: ``pip install`` puts the backbone under one name, fishnet_cifar, which
imports from where it was installed and leaves other projects' packages alone."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # pip installs the package into a temporary folder

REPO = Path(__file__).resolve().parents[1]
ANOTHER_PROJECT = 'MARK = "another project"\n'

# Run with the install folder as a site folder, so that an editable install's .pth file
# (which puts its import finder in place) is read as it is in site-packages.
CHECK = """
import site, sys
site.addsitedir(sys.argv[1])
import torch
import fishnet_cifar, models
from fishnet_cifar import build_model
from fishnet_cifar.convert import ConversionError, convert_state_dict

print(fishnet_cifar.__file__)
assert models.MARK == "another project"
m = build_model("fishnet99", width=0.25).eval()
with torch.no_grad():
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    backbone = build_model("fishnet99", width=0.25, features_only=True, out_indices=(5, 7))
    features = backbone(torch.randn(1, 3, 32, 32))
assert [f.shape[1] for f in features] == backbone.feature_info.channels()
try:
    convert_state_dict({}, "fishnet99")
except ConversionError as error:
    assert "no classifier" in str(error)
else:
    raise AssertionError("an empty state dict converted")
"""


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_installs_fishnet_cifar_only(tmp_path, editable):
    pytest.importorskip("setuptools")
    # A copy of the files the build reads, so that it leaves nothing in the working tree.
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copytree(
        REPO / "models", source / "models", ignore=shutil.ignore_patterns("__pycache__")
    )
    # The install folder already holds another project's package called models.
    target = tmp_path / "target"
    (target / "models").mkdir(parents=True)
    (target / "models" / "__init__.py").write_text(ANOTHER_PROJECT)
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    install = subprocess.run(
        [*pip, "--no-index", "--quiet", "--target", str(target)]
        + (["--editable", str(source)] if editable else [str(source)]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    # What pip installed, by top-level name, as it records it: this project's names only
    # (--target keeps a folder that is there already, so the files alone would not tell).
    (dist_info,) = target.glob("fishnet_cifar-*.dist-info")
    records = (dist_info / "RECORD").read_text().splitlines()
    installed = {record.partition(",")[0].partition("/")[0] for record in records}
    assert all("fishnet_cifar" in name or name == "__pycache__" for name in installed), installed
    assert [p.name for p in (target / "models").iterdir()] == ["__init__.py"]
    assert (target / "models" / "__init__.py").read_text() == ANOTHER_PROJECT
    for name in ("dataloader", "training", "downstream", "utils.py", "tools", "tests", "data"):
        assert not (target / name).exists(), name
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(target)],
        cwd=elsewhere,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    package_file = Path(result.stdout.strip())
    assert package_file.is_relative_to(source / "models" if editable else target)
