"""hubconf.py: every registered model through torch.hub, as a user outside the repo loads it."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import MODELS, build_model, model_names

REPO = Path(__file__).resolve().parents[1]


def hub_load(name, **kwargs):
    return torch.hub.load(str(REPO), name, source="local", **kwargs)


def test_has_one_entry_point_per_model():
    import hubconf

    # torch.hub.list's rule: the module's public callables are its entry points.
    public = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")]
    assert sorted(public) == sorted(model_names())
    assert hubconf.dependencies == ["torch"]


@pytest.mark.parametrize("name", model_names())
def test_entry_points_are_described_by_their_factories(name):
    import hubconf

    entry_point = getattr(hubconf, name)
    assert entry_point.__name__ == name
    assert entry_point.__doc__ and entry_point.__doc__ == MODELS[name].__doc__


@pytest.mark.parametrize("name", model_names())
def test_builds_every_model(name):
    torch.manual_seed(0)
    model = hub_load(name, num_classes=7, width=0.25, init="identity").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_features_only_backbone():
    backbone = hub_load("fishnet99", width=0.25, features_only=True, out_indices=(5, 6, 7))
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == backbone.feature_info.channels()
    assert [64 // f.shape[-1] for f in features] == backbone.feature_info.reduction()


def save_trained(name, path, **kwargs):
    """A checkpoint as train.py writes it, of a model with random weights; returns the model."""
    from training.checkpoint import save_checkpoint

    kwargs = {"num_classes": 10, "stem": "cifar", **kwargs}
    trained = build_model(name, **kwargs).eval()
    save_checkpoint(
        {
            "model": {"name": name, "kwargs": kwargs},
            "state_dict": trained.state_dict(),
            "classes": [f"class {i}" for i in range(10)],
            "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
            "args": {},
            "epoch": 1,
            "history": [],
        },
        path,
    )
    return trained


def test_loads_a_trained_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "best.pt"
    trained = save_trained("resnet50", path, width=0.25)
    model = hub_load("resnet50", checkpoint=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x))
    backbone = hub_load("resnet50", checkpoint=path, features_only=True, out_indices=(-1,))
    assert backbone.feature_info.channels() == [512]
    with pytest.raises(ValueError, match="holds a resnet50, not a fishnet99"):
        hub_load("fishnet99", checkpoint=path)
    with pytest.raises(ValueError, match="defines the model; do not also pass width"):
        hub_load("resnet50", checkpoint=path, width=0.5)


# A user's script, run from a folder holding the user's own models package and utils module
# (common names that this repository uses too).
USER_SCRIPT = """
import sys
import torch

def hub_load(**kwargs):
    return torch.hub.load(sys.argv[1], "fishnet99", source="local", **kwargs).eval()

def check(model):
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)

if sys.argv[3] == "user modules first":
    import models, utils
check(hub_load(width=0.25))
check(hub_load(width=0.25))
check(hub_load(checkpoint=sys.argv[2]))
import models, utils
assert (models.MARK, utils.MARK) == ("user", "user"), (models.__file__, utils.__file__)
names = ("models", "dataloader", "training", "utils")
assert {m for m in sys.modules if m.partition(".")[0] in names} == {"models", "utils"}
assert sys.argv[1] not in sys.path
"""


@pytest.mark.slow
@pytest.mark.parametrize("order", ["user modules first", "hub first"])
def test_keeps_the_users_own_modules(tmp_path, order):
    torch.manual_seed(0)
    checkpoint = tmp_path / "best.pt"
    save_trained("fishnet99", checkpoint, width=0.25)
    user = tmp_path / "user"
    (user / "models").mkdir(parents=True)
    (user / "models" / "__init__.py").write_text('MARK = "user"\n')
    (user / "utils.py").write_text('MARK = "user"\n')
    (user / "script.py").write_text(USER_SCRIPT)
    result = subprocess.run(
        [sys.executable, "script.py", str(REPO), str(checkpoint), order],
        cwd=user,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def readme_snippet() -> str:
    """The README's code from an image file to class probabilities."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    [snippet] = [block for block in blocks if "model.preprocess(" in block]
    return snippet


@pytest.mark.slow
def test_the_readmes_image_to_probabilities_snippet_gives_what_predict_gives(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "best.pt"
    save_trained("fishnet99", checkpoint, width=0.25)
    rng = np.random.default_rng(0)
    # A CIFAR-sized image keeps its pixels; a larger RGBA one is converted and resized.
    images = {"horse.png": (32, 32, "RGB"), "tall.png": (45, 60, "RGBA")}
    for name, (width, height, mode) in images.items():
        pixels = rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
        Image.fromarray(pixels, mode).save(tmp_path / name)
    predicted = subprocess.run(
        [sys.executable, str(REPO / "predict.py"), str(checkpoint), *images, "--json",
         "--top-k", "10", "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    expected = {
        entry["image"]: {top["class"]: top["probability"] for top in entry["top"]}
        for entry in json.loads(predicted.stdout)
    }
    for name in images:
        snippet = (
            readme_snippet()
            .replace("path/to/clone", str(REPO))
            .replace("runs/fishnet99-cpu/best.pt", str(checkpoint))
            .replace("horse.png", str(tmp_path / name))
            .replace("print(", "shown = (")
        )
        namespace = {}
        exec(snippet, namespace)
        model = namespace["model"]
        assert not model.training and model.pretrained_cfg["input_size"] == (3, 32, 32)
        shown = namespace["shown"]
        assert list(shown) == [f"class {i}" for i in range(10)]
        for name_of_class, probability in shown.items():
            assert probability == pytest.approx(expected[name][name_of_class], abs=1e-5)
    assert model.preprocess(Image.open(tmp_path / "tall.png")).equal(
        model.preprocess(tmp_path / "tall.png")
    )


def test_a_model_without_a_checkpoint_is_a_fresh_one_in_training_mode():
    model = hub_load("fishnet99", width=0.25)
    assert model.training and not hasattr(model, "pretrained_cfg")
