"""models.convert and python -m tools.convert: a FishNet laid out and named as in the
authors' release converts to ours.

``AuthorsFishNet`` below rebuilds their module tree from the architecture (their attribute
names, their stage lists, their forward), independently of the converter's renaming rules,
so a wrong rule shows as a shape refusal or as different logits.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, one_line_error, randomised, run_script
from PIL import Image
from torch import nn

from models import build_model
from models.convert import ConversionError, convert_state_dict, unwrap
from models.fishnet import CONFIGS
from tools.convert import class_names, main
from training.checkpoint import load_checkpoint, load_ready_model, model_from_checkpoint
from training.cli import run_cli


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


@pytest.mark.slow
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


def convert(capsys, *args) -> subprocess.CompletedProcess:
    """python -m tools.convert with ``args``, run in this process through the same run_cli
    as the command: its exit status and what it printed."""
    try:
        run_cli(lambda: main([str(arg) for arg in args]))
        status = 0
    except SystemExit as exit_info:
        status = exit_info.code
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, printed.out, printed.err)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[nn.Module, Path, Path]:
    """A width-1 FishNet-99 of the authors' layout with random weights, saved as their main.py
    saves it, and its conversion: (their model, their file, our checkpoint)."""
    folder = tmp_path_factory.mktemp("converted")
    torch.manual_seed(0)
    authors = randomised(AuthorsFishNet("fishnet99"))
    state = {f"module.{k}": v for k, v in authors.state_dict().items() if "num_batches" not in k}
    theirs, ours = folder / "theirs.tar", folder / "ours.pt"
    torch.save({"state_dict": state, "epoch": 100, "arch": "fishnet99"}, theirs)
    main([str(theirs), str(ours)])
    return authors, theirs, ours


@pytest.mark.slow
def test_cli_writes_a_checkpoint_that_eval_reads(converted):
    authors, _, ours = converted
    checkpoint = load_checkpoint(ours)
    assert checkpoint["model"] == {
        "name": "fishnet99",
        "kwargs": {"num_classes": 1000, "stem": "imagenet", "width": 1.0},
    }
    assert checkpoint["classes"] == class_names(1000)
    assert checkpoint["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert not checkpoint["args"]["amp"] and not checkpoint["args"]["channels_last"]
    assert checkpoint["epoch"] == 100
    model = model_from_checkpoint(checkpoint, ours).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), authors(x))


def test_class_names_are_imagenets_for_1000_classes():
    names = class_names(1000)
    assert len(names) == 1000 and len(set(names)) > 990
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert names[-1] == "toilet tissue"
    assert class_names(3) == ["class 0", "class 1", "class 2"]


@pytest.mark.slow
def test_predict_prepares_a_photo_as_the_authors_evaluation_did(converted, tmp_path):
    _, _, ours = converted
    assert load_ready_model(ours, torch.device("cpu")).input_size == 224
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(photo)
    result = run_script("predict.py", ours, photo, "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    (prediction,) = json.loads(result.stdout)

    # Their evaluation: torchvision's Resize(256), bilinear, then CenterCrop(224), on the
    # 300x200 photo: 384x256, then the 224x224 from (80, 16).
    with Image.open(photo) as image:
        crop = image.convert("RGB").resize((384, 256), Image.Resampling.BILINEAR)
    pixels = np.asarray(crop.crop((80, 16, 304, 240)), dtype=np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = torch.from_numpy(((pixels - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    checkpoint = load_checkpoint(ours)
    model = model_from_checkpoint(checkpoint, ours).eval()
    with torch.no_grad():
        expected = model(x).softmax(1)[0]
    values, labels = expected.topk(5)
    assert [t["label"] for t in prediction["top"]] == labels.tolist()
    assert [t["class"] for t in prediction["top"]] == [class_names(1000)[i] for i in labels]
    for t, value in zip(prediction["top"], values.tolist(), strict=True):
        assert t["probability"] == pytest.approx(value, rel=1e-5)


@pytest.mark.slow
def test_visualize_draws_an_imagenet_model_at_its_input_size(converted, tmp_path, capsys):
    from tools.visualize import main as visualize

    _, _, ours = converted
    # A "$" pair would start matplotlib's mathtext in the figure's title.
    photo = tmp_path / "photo $\\frac$.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "fish.png"
    visualize([str(ours), str(photo), "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "input 224x224, stem 56x56, tail1 28x28" in printed and "head3 7x7" in printed
    with Image.open(out) as png:
        # The input panel is as wide as at 32x32, so the figure is not 7 times wider.
        assert png.format == "PNG" and 600 < png.width < 2000


def test_output_is_checked_before_the_input_is_read(tmp_path, capsys):
    kept = tmp_path / "best.pt"
    kept.write_bytes(b"a trained checkpoint")
    missing = tmp_path / "missing.tar"
    one_line_error(convert(capsys, missing, kept), "best.pt: exists already", "--overwrite")
    one_line_error(convert(capsys, missing, tmp_path), "a folder, not a file")
    one_line_error(convert(capsys, missing, kept / "ours.pt"), "best.pt is a file, not a folder")
    # The file to convert is never its own output, however it is named.
    os.link(kept, tmp_path / "hard-link.pt")
    (tmp_path / "link.pt").symlink_to(kept)
    for out in (kept, tmp_path / "hard-link.pt", tmp_path / "link.pt"):
        one_line_error(convert(capsys, kept, out, "--overwrite"), "is the file to convert")
    assert kept.read_bytes() == b"a trained checkpoint"


def test_overwrite_replaces_an_existing_output(converted, tmp_path, capsys):
    _, theirs, _ = converted
    out = tmp_path / "ours.pt"
    out.write_bytes(b"an earlier conversion")
    result = convert(capsys, theirs, out, "--overwrite")
    assert result.returncode == 0 and "fishnet99, 1000 classes" in result.stdout
    assert load_checkpoint(out)["model"]["name"] == "fishnet99"


def test_refuses_files_that_are_no_checkpoint_of_theirs_in_one_line(tmp_path, capsys):
    state = {"conv1.0.weight": torch.zeros(2)}
    cases = {
        "empty.tar": (lambda path: path.write_bytes(b""), "not a readable checkpoint"),
        "foreign.tar": (lambda path: path.write_text("{}"), "not a"),
        "list.tar": (lambda path: torch.save([state], path), "no dict of names to tensors"),
        "numbers.tar": (lambda path: torch.save({"a": 1}, path), "no dict of names to tensors"),
        "code.tar": (lambda path: torch.save({"a": Path()}, path), "not a checkpoint"),
    }
    for epoch in ("100", math.nan, True, -1):
        name = f"epoch-{epoch}.tar"
        cases[name] = (
            lambda path, epoch=epoch: torch.save({"state_dict": state, "epoch": epoch}, path),
            "'epoch' must be a whole number of at least 0",
        )
    torch.save({"state_dict": state}, tmp_path / "whole.tar")
    truncated = (tmp_path / "whole.tar").read_bytes()[:-100]
    cases["truncated.tar"] = (lambda path: path.write_bytes(truncated), "not a readable")
    for name, (write, phrase) in cases.items():
        write(tmp_path / name)
        one_line_error(convert(capsys, tmp_path / name, tmp_path / "ours.pt"), name, phrase)
    assert not (tmp_path / "ours.pt").exists()


def test_refuses_a_compressed_file_before_it_inflates(tmp_path, capsys):
    # 256 MB of zeros, its records compressed to a few hundred KB: torch.load would inflate
    # them all.
    plain, bomb = tmp_path / "plain.pt", tmp_path / "bomb.tar"
    torch.save({"state_dict": {"fc.weight": torch.zeros(64 << 20)}}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for record in source.infolist():
            with source.open(record) as reader, out.open(record.filename, "w") as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
    plain.unlink()
    assert bomb.stat().st_size < 1 << 20
    one_line_error(convert(capsys, bomb, tmp_path / "ours.pt"), "bomb.tar: refused", "compressed")


def test_refuses_a_legacy_file_declaring_more_than_it_holds(tmp_path, capsys):
    path = tmp_path / "legacy.tar"
    # torch's format before 1.6, that of the authors' release
    torch.save(
        {"state_dict": {"fc.weight": torch.zeros(5)}}, path, _use_new_zipfile_serialization=False
    )
    data = path.read_bytes()
    # The storage's persistent id ends with its number of elements (BININT1 5, then NONE):
    # declared as 2**30 floats, 4 GiB that torch would allocate before reading them.
    assert data.count(b"K\x05N") == 1
    path.write_bytes(data.replace(b"K\x05N", b"J" + (2**30).to_bytes(4, "little") + b"N"))
    one_line_error(
        convert(capsys, path, tmp_path / "ours.pt"), "legacy.tar: refused", "4,294,967,296 bytes"
    )


def test_refuses_a_classifier_whose_weights_repeat_a_few_values():
    # 50 million classes from a few KB of values: views with stride 0, which torch.save
    # writes as their storage. Converted, they would name a model no machine could build.
    state = AuthorsFishNet("fishnet99", width=0.25).state_dict()
    fc = f"fish.fish.{len(CONFIGS['fishnet99'].units) - 1}.4.1"
    channels = state[f"{fc}.weight"].shape[1]
    state[f"{fc}.weight"] = torch.zeros(1, channels, 1, 1).expand(50_000_000, -1, -1, -1)
    state[f"{fc}.bias"] = torch.zeros(1).expand(50_000_000)
    with pytest.raises(ConversionError, match="fewer values than its shape"):
        convert_state_dict(state, "fishnet99", width=0.25)


@pytest.mark.slow
def test_the_command_reports_a_bad_file_in_one_line(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "tools.convert", tmp_path / "empty.tar", tmp_path / "ours.pt"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
        timeout=300,
    )
    one_line_error(result, "empty.tar: not a readable checkpoint")
    assert not (tmp_path / "ours.pt").exists()


def test_refuses_a_tensor_of_another_shape_in_one_line(tmp_path, capsys):
    state = AuthorsFishNet("fishnet99", width=0.25).state_dict()
    state["fish.fish.1.0.0.conv2.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(
        ConversionError, match=r"fish.fish.1.0.0.conv2.weight has shape \(3, 3, 3, 3\)"
    ):
        convert_state_dict(state, "fishnet99", width=0.25)
    torch.save(state, tmp_path / "theirs.pth")
    out = tmp_path / "ours.pt"
    one_line_error(
        convert(capsys, tmp_path / "theirs.pth", out, "--model", "fishnet99"), "has shape"
    )
    assert not out.exists()


def test_refuses_a_name_it_does_not_know():
    state = AuthorsFishNet("fishnet99", width=0.25).state_dict()
    state["fish.fish.2.0.0.bn4.weight"] = torch.zeros(8)
    with pytest.raises(ConversionError, match="'bn4' is not a layer of a bottleneck"):
        convert_state_dict(state, "fishnet99", width=0.25)


def test_refuses_a_classifier_bias_that_is_not_a_vector():
    state = AuthorsFishNet("fishnet99", width=0.25).state_dict()
    state[f"fish.fish.{len(CONFIGS['fishnet99'].units) - 1}.4.1.bias"] = torch.zeros(())
    with pytest.raises(ConversionError, match="no classifier of a fishnet99"):
        convert_state_dict(state, "fishnet99", width=0.25)
