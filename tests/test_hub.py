"""hubconf.py: every registered model through torch.hub, as a user outside the repo loads it."""

from pathlib import Path

import pytest
import torch

from models import build_model, model_names

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


def test_loads_a_trained_checkpoint(tmp_path):
    from training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "stem": "cifar", "width": 0.25}
    trained = build_model("resnet50", **kwargs).eval()
    path = tmp_path / "best.pt"
    save_checkpoint(
        {
            "model": {"name": "resnet50", "kwargs": kwargs},
            "state_dict": trained.state_dict(),
            "classes": [f"class {i}" for i in range(10)],
            "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
            "args": {},
            "epoch": 1,
            "history": [],
        },
        path,
    )
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
