"""FishNet's ablation switches: the models, train.py's flags, and ablate.py end to end."""

import json

import pytest
import torch
from conftest import run_script
from PIL import Image
from torch import nn

import ablate
from models import SWITCHES, build_model, count_parameters, switch_flags, switch_kwargs
from models.blocks import Bottleneck, Bridge, ChannelReduction, residual_units
from training.options import parse_args as parse_train_args
from utils import UserError

DEFAULTS = {key: choices[0] for key, choices in SWITCHES.items()}
EVERY_VALUE = [(key, value) for key, choices in SWITCHES.items() for value in choices]
TINY = 0.125  # channel multiplier: a network that runs forward and backward in well under 1 s


def meta_fishnet(**kwargs) -> nn.Module:
    with torch.device("meta"):
        return build_model("fishnet99", **kwargs)


@pytest.mark.parametrize(("key", "value"), EVERY_VALUE)
def test_every_switch_value_runs_forward_and_backward(key, value):
    torch.manual_seed(0)
    model = build_model("fishnet99", width=TINY, **{key: value})
    assert model.switches == {**DEFAULTS, key: value}
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    for info, feature in zip(model.feature_info, features.values(), strict=True):
        assert feature.shape == (
            2,
            info["channels"],
            32 // info["reduction"],
            32 // info["reduction"],
        )
    assert model.feature_info == build_model("fishnet99", width=TINY).feature_info
    logits = model.forward_head(features)
    assert logits.shape == (2, 10)
    nn.functional.cross_entropy(logits, torch.arange(2)).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead


@pytest.mark.parametrize(
    ("stem", "num_classes", "params"),
    [("cifar", 10, 15_582_474), ("imagenet", 1000, 16_628_904)],
)
def test_default_switches_are_the_published_network(stem, num_classes, params):
    explicit = meta_fishnet(stem=stem, num_classes=num_classes, **DEFAULTS)
    assert count_parameters(explicit) == params
    assert repr(explicit) == repr(meta_fishnet(stem=stem, num_classes=num_classes))


def test_switches_change_the_parameter_count_as_designed():
    base = meta_fishnet()
    n = count_parameters(base)

    def learned_sampling(channels: int) -> int:  # BN (2 C) and a 2x2 kernel, C -> C, no bias
        return 2 * channels + 4 * channels**2

    # Each tail and head stage down-samples its trunk's output; each body stage up-samples its.
    down_channels, up_channels = (128, 256, 512, 320, 832, 1600), (512, 384, 256)
    expected_conv = n + sum(map(learned_sampling, down_channels))
    assert count_parameters(meta_fishnet(downsample="conv")) == expected_conv == 30_384_522
    expected_deconv = n + sum(map(learned_sampling, up_channels))
    assert count_parameters(meta_fishnet(upsample="deconv")) == expected_deconv
    # A BN-ReLU-conv1x1 replaces r(x) where a body stage reduces channels (768 -> 384, 512 -> 256).
    projections = sum(2 * i + i * o for i, o in ((768, 384), (512, 256)))
    assert count_parameters(meta_fishnet(body_shortcut="conv")) == n + projections
    for switch in ({"downsample": "avgpool"}, {"upsample": "bilinear"}, {"body_dilation": False}):
        assert count_parameters(meta_fishnet(**switch)) == n, switch
    transfer = sum(count_parameters(stage.transfer) for stage in [*base.body, *base.head])
    assert count_parameters(meta_fishnet(transfer=False)) == n - transfer
    bridge = count_parameters(base.bridge)
    assert count_parameters(meta_fishnet(bridge="none")) == n - bridge
    plain = count_parameters(residual_units(512, 512, num_units=2))  # FishNet-99's bridge units
    assert count_parameters(meta_fishnet(bridge="plain")) == n - bridge + plain
    # The totals the table of switches in docs/ablations.md gives.
    for switch, total in (
        ({"upsample": "deconv"}, 17_485_322),
        ({"body_shortcut": "conv"}, 16_011_018),
        ({"transfer": False}, 13_460_426),
        ({"bridge": "plain"}, 14_542_058),
        ({"bridge": "none"}, 13_981_930),
    ):
        assert count_parameters(meta_fishnet(**switch)) == total, switch


def test_switches_change_the_graph_as_designed():
    base = meta_fishnet()
    for stage in [*base.tail, *base.head]:
        assert isinstance(stage.downsample, nn.MaxPool2d)
    for stage in [
        *meta_fishnet(downsample="avgpool").tail,
        *meta_fishnet(downsample="avgpool").head,
    ]:
        assert isinstance(stage.downsample, nn.AvgPool2d)
    for stage in meta_fishnet(downsample="conv").tail:
        conv = stage.downsample[-1]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == conv.stride == (2, 2)

    assert [stage.upsample.mode for stage in base.body] == ["nearest"] * 3
    assert [stage.upsample.mode for stage in meta_fishnet(upsample="bilinear").body] == [
        "bilinear"
    ] * 3
    for stage in meta_fishnet(upsample="deconv").body:
        assert isinstance(stage.upsample[-1], nn.ConvTranspose2d)

    # body1 keeps 512 channels (identity either way); body2 and body3 halve theirs.
    assert isinstance(base.body[0].units[0].shortcut, nn.Identity)
    assert all(isinstance(s.units[0].shortcut, ChannelReduction) for s in base.body[1:])
    projected = meta_fishnet(body_shortcut="conv").body
    assert isinstance(projected[0].units[0].shortcut, nn.Identity)
    assert all(isinstance(s.units[0].shortcut[-1], nn.Conv2d) for s in projected[1:])

    def body_dilations(model):
        return [
            unit.conv2.dilation[0]
            for stage in model.body
            for unit in stage.units
            if isinstance(unit, Bottleneck)
        ]

    assert body_dilations(base) == [1, 2, 4]
    assert body_dilations(meta_fishnet(body_dilation=False)) == [1, 1, 1]

    no_transfer = meta_fishnet(transfer=False)
    assert all(isinstance(s.transfer, nn.Identity) for s in [*no_transfer.body, *no_transfer.head])

    assert isinstance(base.bridge, Bridge) and hasattr(base.bridge, "gate")
    plain = meta_fishnet(bridge="plain").bridge
    assert isinstance(plain, nn.Sequential) and all(isinstance(u, Bottleneck) for u in plain)
    assert isinstance(meta_fishnet(bridge="none").bridge, nn.Identity)


def test_no_bridge_passes_the_last_tail_feature_to_the_body():
    torch.manual_seed(0)
    model = build_model("fishnet99", width=TINY, bridge="none").eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(features["bridge"], features["tail3"])


def test_invalid_switches_are_refused():
    for key, value in (("downsample", "stride"), ("upsample", "pixelshuffle"), ("bridge", "off")):
        with pytest.raises(ValueError, match=f"{key} must be one of"):
            build_model("fishnet99", **{key: value})
    with pytest.raises(ValueError, match="body_dilation must be one of"):
        build_model("fishnet99", body_dilation="no")
    with pytest.raises(TypeError):
        build_model("resnet50", bridge="none")
    assert switch_kwargs("resnet50", DEFAULTS) == {}
    assert switch_kwargs("fishnet150", {"bridge": "none"}) == {**DEFAULTS, "bridge": "none"}
    with pytest.raises(ValueError, match="--no-transfer: the ablation switches apply to FishNet"):
        switch_kwargs("resnet101", {"transfer": False})


def test_train_flags_set_every_switch(capsys):
    defaults = parse_train_args([])
    assert {key: getattr(defaults, key) for key in SWITCHES} == DEFAULTS
    for key, value in EVERY_VALUE:
        args = parse_train_args(switch_flags(key, value))
        assert getattr(args, key) == value
        assert switch_kwargs(args.model, vars(args)) == {**DEFAULTS, key: value}
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(["--model", "resnet50", "--bridge", "none"])
    assert exit_info.value.code == 2
    assert "--bridge none: the ablation switches apply to FishNet only" in capsys.readouterr().err
    assert parse_train_args(["--model", "resnet50"]).bridge == "se"  # defaults are fine


def test_ablate_variants_and_refusals(capsys):
    every = ablate.all_variants()
    names = [ablate.variant_name(v) for v in every]
    assert names[0] == "baseline" and len(names) == len(set(names)) == 10
    assert [ablate.parse_variant(name) for name in names] == every
    args = ablate.parse_args(
        ["--variants", "baseline", "body-dilation=off,bridge=plain", "--epochs", "3"]
    )
    assert list(args.runs) == ["baseline", "body-dilation=off,bridge=plain"]
    run = args.runs["body-dilation=off,bridge=plain"][1]
    assert (run.body_dilation, run.bridge, run.epochs, run.overwrite) == (False, "plain", 3, False)
    assert run.out.endswith("body-dilation-off+bridge-plain")
    for argv, message in (
        (["--variants", "bridge=off"], "bridge is one of se, plain, none"),
        (["--variants", "dilation=off"], "not SWITCH=VALUE"),
        (["--variants", "transfer=no"], "'on' or 'off'"),
        (["--variants", "baseline", "baseline"], "twice"),
        (["--variants", "baseline", "--bridge", "none"], "give switches as --variants"),
        (["--resume", "--overwrite"], "not allowed with argument"),
    ):
        with pytest.raises(SystemExit):
            ablate.parse_args(argv)
        assert message in capsys.readouterr().err, argv
    with pytest.raises(UserError, match=r"unrecognized arguments: --epochz 3 .*ablate.py passes"):
        ablate.parse_args(["--variants", "baseline", "--epochz", "3"])


@pytest.mark.slow
def test_ablate_smoke_run_tables_plots_and_evaluates(synthetic_cifar10_dir, tmp_path):
    """Two variants of a 1/16-width FishNet-99, one epoch each on the synthetic data."""
    table, plot, out = tmp_path / "ablation.md", tmp_path / "ablation.png", tmp_path / "runs"
    result = run_script(
        "ablate.py", "--variants", "baseline", "bridge=none", "--out", out, "--table", table,
        "--plot", plot, "--data", synthetic_cifar10_dir, "--width", "0.0625",
        "--batch-size", "40", "--epochs", "1", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    summary = json.loads((out / "ablation.json").read_text())["results"]
    assert list(summary) == ["baseline", "bridge=none"]
    for name, switches in (("baseline", {}), ("bridge=none", {"bridge": "none"})):
        params = count_parameters(build_model("fishnet99", width=0.0625, **switches))
        assert summary[name]["params"] == params
        assert summary[name]["test_images"] == 40 and summary[name]["epochs"] == 1
    assert summary["bridge=none"]["params"] < summary["baseline"]["params"]

    text = table.read_text()
    assert "| variant | params | MACs | valid top-1 (%) | test top-1 (%) |" in text
    assert f"| `bridge=none` | {summary['bridge=none']['params']:,} |" in text
    assert "--width 0.0625" in text and "CPU" in text
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 300

    # eval.py rebuilds the ablated network from its checkpoint and finds the same test top-1.
    checkpoint = out / "bridge-none" / "best.pt"
    assert torch.load(checkpoint, weights_only=True)["model"]["kwargs"]["bridge"] == "none"
    scores = run_script("eval.py", checkpoint, "--split", "test", "--json", "--device", "cpu")
    assert scores.returncode == 0, scores.stderr
    test_top1 = json.loads(scores.stdout)["test"]["top1"]
    assert test_top1 == pytest.approx(summary["bridge=none"]["test_top1"])
