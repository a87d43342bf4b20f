import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import randomised
from torch import nn

from models import (
    INITS,
    MODELS,
    PreActResNet,
    build_model,
    count_macs,
    count_parameters,
    model_names,
    register_model,
)
from models.blocks import Bottleneck, Bridge, ChannelReduction, rename_keys
from models.features import as_backbone
from models.fishnet import FishNet
from models.registry import unregister_model

REPO = Path(__file__).resolve().parents[1]

# The published models' parameter counts and MACs (docs: fishnet-architecture.md).
PUBLISHED = [
    ("fishnet99", "imagenet", 1000, 16_628_904, 4263.7e6),
    ("fishnet150", "imagenet", 1000, 24_959_400, 6397.8e6),
    ("fishnet201", "imagenet", 1000, 44_584_552, 10514.4e6),
    ("fishnet99", "cifar", 10, 15_582_474, 1304.3e6),
    ("fishnet150", "cifar", 10, 23_912_970, 2001.2e6),
    ("fishnet201", "cifar", 10, 43_538_122, 3345.4e6),
    ("fishnet99", "cifar", 100, 15_677_604, 1304.4e6),
]


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return build_model(name, **kwargs)


@pytest.mark.parametrize(("name", "stem", "num_classes", "params", "macs"), PUBLISHED)
def test_published_parameter_count_and_macs(name, stem, num_classes, params, macs):
    model = meta_model(name, stem=stem, num_classes=num_classes)
    assert count_parameters(model) == params
    image_size = 224 if stem == "imagenet" else 32
    assert count_macs(model, image_size) == pytest.approx(macs, rel=0.01)


@pytest.mark.parametrize(
    ("stem", "size", "expected"),
    [
        ("cifar", 32, [32, 16, 8, 4, 4, 8, 16, 32, 16, 8, 4]),
        ("imagenet", 224, [56, 28, 14, 7, 7, 14, 28, 56, 28, 14, 7]),
    ],
)
def test_stage_resolutions(stem, size, expected):
    model = meta_model("fishnet99", stem=stem, num_classes=10)
    features = model.forward_features(torch.empty(2, 3, size, size, device="meta"))
    names = ["stem", "tail1", "tail2", "tail3", "bridge", "body1", "body2", "body3"]
    assert list(features) == [*names, "head1", "head2", "head3"]
    assert [f.shape[-1] for f in features.values()] == expected
    for info, feat in zip(model.feature_info, features.values(), strict=True):
        assert feat.shape[:2] == (2, info["channels"])
        assert feat.shape[-1] == size // info["reduction"]
    assert [f.shape[1] for f in features.values()][5:] == [768, 512, 320, 832, 1600, 2112]
    assert model.forward_head(features).shape == (2, 10)


@pytest.mark.parametrize("name", model_names())
def test_forward_is_head_of_features(name):
    torch.manual_seed(0)
    model = build_model(name, width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 10)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), logits)


@pytest.mark.parametrize("name", model_names())
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(name, width=0.25)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead


def test_full_width_fishnet99_trains_a_step():
    torch.manual_seed(0)
    model = build_model("fishnet99")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    before = model.stem[0][0].weight.detach().clone()
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    optimizer.step()
    assert not torch.equal(before, model.stem[0][0].weight)


def test_width_scales_channels_and_rejects_invalid_widths():
    small = build_model("fishnet99", width=0.25)
    assert [i["channels"] for i in small.feature_info] == [
        16, 32, 64, 128, 128, 192, 128, 80, 208, 400, 528,
    ]  # fmt: skip
    assert count_parameters(small) < count_parameters(build_model("fishnet99")) / 10
    for width in (0, -1, 0.3):
        with pytest.raises(ValueError, match="multiple of 1/16"):
            build_model("fishnet99", width=width)


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    model = build_model("fishnet99", width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        output = model_cl(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model_cl(x.to(memory_format=torch.channels_last))
    assert low.shape == reference.shape
    assert low.dtype == torch.bfloat16
    assert torch.isfinite(low).all()


@pytest.mark.slow
def test_compiles_as_one_graph():
    model = build_model("fishnet99", width=0.25)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    compiled(x).sum().backward()
    torch.testing.assert_close(compiled(x), model(x))


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'fishnet42'") as info:
        build_model("fishnet42")
    for name in MODELS:
        assert name in str(info.value)


def test_unknown_stem():
    with pytest.raises(ValueError, match="stem must be"):
        build_model("fishnet99", stem="mnist")


def test_channel_reduction_sums_adjacent_groups():
    x = torch.arange(2 * 6 * 1 * 1, dtype=torch.float32).reshape(2, 6, 1, 1)
    y = ChannelReduction(k=3)(x)
    assert y.flatten().tolist() == [0 + 1 + 2, 3 + 4 + 5, 6 + 7 + 8, 9 + 10 + 11]


def test_bottleneck_shortcut_cases():
    up = Bottleneck(768, 384, reduce_channels=True, dilation=2)
    assert isinstance(up.shortcut, ChannelReduction) and up.shortcut.k == 2
    assert up.conv2.dilation == (2, 2)
    assert isinstance(Bottleneck(512, 512, reduce_channels=True).shortcut, nn.Identity)
    projection = Bottleneck(256, 512)
    assert sum(p.numel() for p in projection.shortcut.parameters()) == 2 * 256 + 256 * 512
    assert isinstance(Bottleneck(512, 512).shortcut, nn.Identity)
    assert Bottleneck(256, 512, stride=2)(torch.randn(1, 256, 8, 8)).shape == (1, 512, 4, 4)
    with pytest.raises(ValueError, match="multiple of out_channels"):
        Bottleneck(512, 384, reduce_channels=True)


def test_bridge_gates_its_refined_score():
    torch.manual_seed(0)
    bridge = Bridge(64, num_units=1).eval()
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        score = bridge.score(x)
        attention = bridge.gate(score)
        assert attention.shape == (2, 64, 1, 1)
        assert ((attention > 0) & (attention < 1)).all()
        torch.testing.assert_close(bridge(x), bridge.units(score) * attention + attention)


def test_initialisation_follows_the_release():
    torch.manual_seed(0)
    model = build_model("fishnet99")
    conv = model.tail[2].units[0].conv1  # 1x1, 256 -> 128 channels
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / conv.out_channels), rel=0.05)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_fishnet_rejects_inconsistent_config():
    from models.fishnet import CONFIGS, FishConfig

    base = CONFIGS["fishnet99"]
    with pytest.raises(ValueError, match="another resolution"):
        FishNet(FishConfig(base.planes, base.units, base.transfer_units, (1, 1, 0, 6, 5, 4)))


@pytest.mark.slow
def test_models_table_cli():
    result = subprocess.run(
        [sys.executable, "-m", "models"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "| fishnet99 | 15,582,474 | 1304.3 M | 16,628,904 | 4263.7 M |" in result.stdout
    for name in MODELS:
        assert f"| {name} |" in result.stdout


@pytest.mark.parametrize("name", ["fishnet99", "resnet50"])
def test_identity_init_starts_at_chance_and_trains_every_parameter(name):
    torch.manual_seed(0)
    model = build_model(name, width=0.25, init="identity")
    for module in model.modules():
        if isinstance(module, Bottleneck):
            assert not module.conv3.weight.any()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), y)
    assert loss.item() == pytest.approx(math.log(10), abs=0.1)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead


@pytest.mark.parametrize("name", ["fishnet99", "resnet50"])
def test_authors_init_is_the_default(name):
    assert INITS[0] == "authors"
    torch.manual_seed(0)
    default = build_model(name, width=0.25).state_dict()
    torch.manual_seed(0)
    authors = build_model(name, width=0.25, init="authors").state_dict()
    assert list(default) == list(authors)
    assert all(torch.equal(default[k], authors[k]) for k in default)


def test_unknown_init_names_the_choices():
    with pytest.raises(ValueError, match="init must be one of 'authors', 'identity'"):
        build_model("resnet50", width=0.25, init="xavier")


@pytest.mark.parametrize("name", model_names())
def test_feature_info_has_timm_keys_naming_real_modules(name):
    model = meta_model(name, stem="imagenet")
    for info in model.feature_info:
        assert {"num_chs", "reduction", "module", "name", "channels"} <= set(info)
        assert info["num_chs"] == info["channels"]
        model.get_submodule(info["module"])
    assert model.feature_info.channels() == [i["num_chs"] for i in model.feature_info]


@pytest.mark.parametrize(
    ("name", "out_indices", "dropped"),
    [
        ("fishnet99", (1, 2, 3, 7), ["head.0", "classifier"]),
        ("fishnet99", (0, 2), ["tail.2", "bridge", "body.0", "classifier"]),
        ("fishnet99", (-3, -2, -1), ["classifier"]),
        ("resnet50", (1, 2, 3, 4), ["classifier"]),
        ("resnet50", (1, 2), ["stages.2", "classifier"]),
    ],
)
def test_features_only_backbone_as_a_segmentation_library_uses_it(name, out_indices, dropped):
    torch.manual_seed(0)
    backbone = build_model(name, width=0.25, features_only=True, out_indices=out_indices)
    features = backbone(torch.randn(2, 3, 64, 64))
    info = backbone.feature_info
    assert len(features) == len(info) == len(out_indices)
    for feature, channels, reduction in zip(
        features, info.channels(), info.reduction(), strict=True
    ):
        assert feature.shape == (2, channels, 64 // reduction, 64 // reduction)
    modules = dict(backbone.model.named_modules())
    assert all(modules.get(module) is None for module in dropped)
    sum(feature.mean() for feature in features).backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_features_only_rejects_bad_out_indices():
    with pytest.raises(ValueError, match="out_indices must be indices of the 11 features"):
        build_model("fishnet99", width=0.25, features_only=True, out_indices=(3, 11))
    with pytest.raises(ValueError, match="out_indices needs features_only=True"):
        build_model("resnet50", width=0.25, out_indices=(1, 2))


def test_registers_with_timm_when_it_is_installed(monkeypatch):
    import types

    from models.registry import TIMM_NAMES, register_with_timm

    registry = {}
    timm_models = types.ModuleType("timm.models")
    timm_models.register_model = lambda fn: registry.setdefault(fn.__name__, fn)
    monkeypatch.setitem(sys.modules, "timm", types.ModuleType("timm"))
    monkeypatch.setitem(sys.modules, "timm.models", timm_models)
    assert register_with_timm(MODELS)
    assert sorted(registry) == sorted(TIMM_NAMES.values())
    # timm's create_model passes its pretrained arguments to every entry point.
    model = registry["preact_resnet50"](
        pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, width=0.25
    )
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="no pretrained weights"):
        registry["fishnet99"](pretrained=True)


@pytest.mark.slow
def test_models_cli_help():
    result = subprocess.run(
        [sys.executable, "-m", "models", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage: python -m models" in result.stdout
    assert "multiply-accumulates" in result.stdout


def legacy_state_dict(model):
    """``model``'s state dict as it was saved when the layers had positions for names."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if hasattr(module, "LEGACY_NAMES"):
            positions = {new: old for old, new in module.LEGACY_NAMES.items()}
            rename_keys(state, f"{name}." if name else "", positions)
    return state


@pytest.mark.parametrize("name", ["fishnet99", "resnet50"])
def test_a_checkpoint_with_positional_names_loads_and_gives_the_same_output(name):
    torch.manual_seed(0)
    saved = randomised(build_model(name, width=0.25))
    legacy = legacy_state_dict(saved)
    assert any(".residual.8." in key for key in legacy)
    assert all(".bn1." not in key and ".conv3." not in key for key in legacy)
    model = build_model(name, width=0.25).eval()
    model.load_state_dict(legacy)  # strict
    assert list(model.state_dict()) == list(saved.state_dict())
    assert not any(".residual." in key for key in model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), saved(x))


@pytest.mark.parametrize("name", ["fishnet99", "resnet50"])
def test_a_checkpoint_with_positional_names_is_read_by_eval_predict_and_hub(name, tmp_path):
    """eval.py, predict.py, tools.visualize and the hub's checkpoint= compare a checkpoint's
    keys with the model's before loading it: the old names are renamed first."""
    from training.checkpoint import model_from_checkpoint

    torch.manual_seed(0)
    saved = randomised(build_model(name, width=0.25)).eval()
    checkpoint = {
        "model": {"name": name, "kwargs": {"width": 0.25, "num_classes": 10}},
        "state_dict": legacy_state_dict(saved),
        "classes": [f"class {label}" for label in range(10)],
    }
    model = model_from_checkpoint(checkpoint, tmp_path / "old.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), saved(x))


def test_zero_init_last_makes_every_residual_unit_its_shortcut():
    torch.manual_seed(0)
    model = randomised(build_model("fishnet99", width=0.25, init="identity"))
    checked = []

    def check(unit, inputs, output):
        checked.append(torch.equal(output, unit.shortcut(inputs[0])))

    for module in model.modules():
        if isinstance(module, Bottleneck):
            module.register_forward_hook(check)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert checked and all(checked)


THROWAWAY = "throwaway_resnet"


@pytest.fixture
def throwaway_model(monkeypatch):
    """A model registered by the decorator alone (timm faked, to see it registered there
    too); removed from the registry afterwards."""
    import types

    timm_registry = {}
    timm_models = types.ModuleType("timm.models")
    timm_models.register_model = lambda fn: timm_registry.setdefault(fn.__name__, fn)
    monkeypatch.setitem(sys.modules, "timm", types.ModuleType("timm"))
    monkeypatch.setitem(sys.modules, "timm.models", timm_models)

    @register_model(timm_name="preact_throwaway")
    def throwaway_resnet(num_classes=10, stem="cifar", features_only=False, out_indices=None):
        """A two-stage pre-activation ResNet."""
        model = PreActResNet((1, 1), (16, 32, 64), num_classes=num_classes, stem=stem)
        return as_backbone(model, features_only, out_indices)

    yield timm_registry
    unregister_model(THROWAWAY)


def test_a_decorated_factory_is_a_model_everywhere(throwaway_model):
    assert THROWAWAY in model_names() and THROWAWAY in MODELS
    model = build_model(THROWAWAY, num_classes=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    backbone = build_model(THROWAWAY, features_only=True, out_indices=(1, 2))
    assert backbone.feature_info.channels() == [32, 64]
    timm_entry = throwaway_model["preact_throwaway"]
    assert timm_entry.__doc__ == "A two-stage pre-activation ResNet."
    assert timm_entry(pretrained=False, num_classes=5)(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="'throwaway_resnet' is registered already"):
        register_model()(MODELS[THROWAWAY])
