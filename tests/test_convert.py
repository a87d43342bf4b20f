"""models.convert and python -m tools.convert: a FishNet laid out and named as in the
authors' release converts to ours.

``AuthorsFishNet`` below rebuilds their module tree from the architecture (their attribute
names, their stage lists, their forward), independently of the converter's renaming rules,
so a wrong rule shows as a shape refusal or as different logits.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import build_model
from models.convert import ConversionError, convert_state_dict, unwrap
from models.fishnet import CONFIGS
from tools.convert import main


def conv(cin, cout, kernel=1, bias=False, **kwargs):
    return nn.Conv2d(cin, cout, kernel, bias=bias, **kwargs)


class AuthorsBottleneck(nn.Module):
    """Their unit: bn1, conv1, .., conv3 and a projection ``shortcut`` where channels change;
    in UP mode (``k`` set) the shortcut sums groups of k channels."""

    def __init__(self, cin, cout, k=None, dilation=1):
        super().__init__()
        mid = cout // 4
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv(cin, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = conv(mid, mid, 3, padding=dilation, dilation=dilation)
        self.bn3, self.conv3 = nn.BatchNorm2d(mid), conv(mid, cout)
        self.k = k
        self.shortcut = None
        if k is None and cin != cout:
            self.shortcut = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), conv(cin, cout))

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        if self.k is not None:
            n, c, h, w = x.shape
            return out + x.view(n, c // self.k, self.k, h, w).sum(2)
        return out + (x if self.shortcut is None else self.shortcut(x))


def units(cin, cout, n, k=None, dilation=1):
    first = AuthorsBottleneck(cin, cout, k=k, dilation=dilation)
    return nn.Sequential(
        first, *(AuthorsBottleneck(cout, cout, dilation=dilation) for _ in range(n - 1))
    )


def score(c):
    return nn.Sequential(
        nn.BatchNorm2d(c), nn.ReLU(), conv(c, c // 2), nn.BatchNorm2d(c // 2), nn.ReLU()
    )


class AuthorsFishNet(nn.Module):
    def __init__(self, name, width=1.0, num_classes=1000):
        super().__init__()
        cfg = CONFIGS[name]
        planes = [round(p * width) for p in cfg.planes]
        self.conv1, self.conv2, self.conv3 = (
            nn.Sequential(conv(cin, cout, 3, stride=s, padding=1), nn.BatchNorm2d(cout), nn.ReLU())
            for cin, cout, s in (
                (3, planes[0] // 2, 2),
                (planes[0] // 2, planes[0] // 2, 1),
                (planes[0] // 2, planes[0], 1),
            )
        )
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.sources, self.num_tail = cfg.transfer_sources, cfg.num_tail
        channels, stages = [planes[0]], []
        for i, n in enumerate(cfg.units):
            cin, cout = channels[-1], planes[i + 1]
            if i < self.num_tail:
                stages.append(nn.ModuleList([units(cin, cout, n), nn.MaxPool2d(2)]))
                channels.append(cout)
            elif i == self.num_tail:
                c = cin
                gate = nn.Sequential(
                    nn.BatchNorm2d(2 * c),
                    nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1),
                    conv(2 * c, c // 16, bias=True),
                    nn.ReLU(),
                    conv(c // 16, c, bias=True),
                    nn.Sigmoid(),
                )
                stages.append(
                    nn.ModuleList(
                        [
                            score(c),
                            conv(c // 2, 2 * c, bias=True),
                            units(2 * c, c, n),
                            nn.Sequential(gate),
                        ]
                    )
                )
                channels.append(c)
            else:
                j = i - self.num_tail - 1
                tc = channels[self.sources[j]]
                body = j < self.num_tail
                trunk = (
                    units(cin, cout, n, k=cin // cout, dilation=2**j)
                    if body
                    else units(cin, cout, n)
                )
                sample = nn.Upsample(scale_factor=2) if body else nn.MaxPool2d(2)
                stages.append(nn.ModuleList([trunk, units(tc, tc, cfg.transfer_units[j]), sample]))
                channels.append(cout + tc)
        head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), conv(channels[-1] // 2, num_classes, bias=True)
        )
        stages[-1].extend([score(channels[-1]), head])
        self.fish = nn.Module()
        self.fish.fish = nn.ModuleList(stages)

    def forward(self, x):
        feats = [self.pool1(self.conv3(self.conv2(self.conv1(x))))]
        for i, stage in enumerate(self.fish.fish):
            if i < self.num_tail:
                feats.append(stage[1](stage[0](feats[-1])))
            elif i == self.num_tail:
                s = stage[1](stage[0](feats[-1]))
                att = stage[3](s)
                feats.append(stage[2](s) * att + att)
            else:
                trunk = stage[2](stage[0](feats[-1]))
                feats.append(
                    torch.cat([trunk, stage[1](feats[self.sources[i - self.num_tail - 1]])], 1)
                )
        last = self.fish.fish[-1]
        return last[4](last[3](feats[-1])).flatten(1)


def randomised(model):
    """Random BN statistics and affine parameters, so that a misplaced BN changes the logits."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_authors_state_dict_gives_the_same_logits(name):
    torch.manual_seed(0)
    authors = randomised(AuthorsFishNet(name, width=0.25, num_classes=20))
    wrapped = {"state_dict": {f"module.{k}": v for k, v in authors.state_dict().items()}}
    converted, num_classes = convert_state_dict(unwrap(wrapped), name, width=0.25)
    assert num_classes == 20
    ours = build_model(name, num_classes=20, stem="imagenet", width=0.25).eval()
    ours.load_state_dict(converted)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), authors(x))


def test_cli_writes_a_checkpoint_that_eval_reads(tmp_path, capsys):
    from training.checkpoint import load_checkpoint, model_from_checkpoint

    torch.manual_seed(0)
    authors = randomised(AuthorsFishNet("fishnet99"))
    state = {f"module.{k}": v for k, v in authors.state_dict().items() if "num_batches" not in k}
    torch.save({"state_dict": state, "epoch": 100, "arch": "fishnet99"}, tmp_path / "theirs.tar")
    main([str(tmp_path / "theirs.tar"), str(tmp_path / "ours.pt")])
    assert "fishnet99, 1000 classes" in capsys.readouterr().out
    checkpoint = load_checkpoint(tmp_path / "ours.pt")
    assert checkpoint["model"] == {
        "name": "fishnet99",
        "kwargs": {"num_classes": 1000, "stem": "imagenet", "width": 1.0},
    }
    assert (
        checkpoint["classes"][:2] == ["class 0", "class 1"] and len(checkpoint["classes"]) == 1000
    )
    assert checkpoint["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert not checkpoint["args"]["amp"] and not checkpoint["args"]["channels_last"]
    assert checkpoint["epoch"] == 100
    model = model_from_checkpoint(checkpoint, tmp_path / "ours.pt").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), authors(x))


def test_refuses_a_tensor_of_another_shape_in_one_line(tmp_path, capsys):
    state = AuthorsFishNet("fishnet99", width=0.25).state_dict()
    state["fish.fish.1.0.0.conv2.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(
        ConversionError, match=r"fish.fish.1.0.0.conv2.weight has shape \(3, 3, 3, 3\)"
    ):
        convert_state_dict(state, "fishnet99", width=0.25)
    torch.save(state, tmp_path / "theirs.pth")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "theirs.pth"), str(tmp_path / "ours.pt"), "--model", "fishnet99"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "error:" in error and "has shape" in error
    assert not (tmp_path / "ours.pt").exists()


def test_refuses_a_name_it_does_not_know():
    state = AuthorsFishNet("fishnet99", width=0.25).state_dict()
    state["fish.fish.2.0.0.bn4.weight"] = torch.zeros(8)
    with pytest.raises(ConversionError, match="'bn4' is not a layer of a bottleneck"):
        convert_state_dict(state, "fishnet99", width=0.25)
