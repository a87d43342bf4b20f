"""FishNet as the backbone of torchvision's detection and segmentation models, the canvas run
(downstream.run) and its command, tools/canvas.py."""

import io
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import torchvision
from conftest import REPO_ROOT, one_line_error

from downstream.backbones import (
    STAGE_GROUPS,
    detection_model,
    feature_pyramid_backbone,
    finest_stage,
    segmentation_model,
)
from downstream.canvas import CanvasDataset
from downstream.run import CanvasRun
from downstream.tasks import TASKS, Normalization
from models import build_model
from tools import canvas
from training.optim import make_optimizer, make_scheduler
from utils import UserError

NORMALIZATION = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
SIZE = 64


def synthetic_targets(count: int) -> list[dict]:
    """One or two boxes per image, with labels 1..10."""
    targets = []
    for index in range(count):
        boxes = torch.tensor([[4.0, 6.0, 30.0, 34.0], [36.0, 30.0, 60.0, 58.0]])[: 1 + index % 2]
        targets.append({"boxes": boxes, "labels": torch.tensor([3, 7])[: len(boxes)]})
    return targets


def backbone_parameters_without_gradient(model: torch.nn.Module, prefix: str) -> list[str]:
    return [
        name
        for name, parameter in model.named_parameters()
        if name.startswith(prefix) and (parameter.grad is None or not parameter.grad.any())
    ]


@pytest.mark.parametrize("group", ["head", "body", "tail"])
def test_detection_on_fishnet99_trains_every_backbone_parameter_and_detects(group):
    torch.manual_seed(0)
    backbone = feature_pyramid_backbone(
        build_model("fishnet99", width=0.25), STAGE_GROUPS[group], out_channels=32
    )
    model = detection_model(
        backbone, 11, SIZE, NORMALIZATION.mean, NORMALIZATION.std, representation_size=64
    )
    images = [torch.rand(3, SIZE, SIZE) for _ in range(2)]
    losses = model.train()(images, synthetic_targets(2))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(loss) for loss in losses.values())
    sum(losses.values()).backward()
    assert backbone_parameters_without_gradient(model, "backbone.body.") == []
    assert sum(1 for _ in model.backbone.body.parameters()) > 100
    with torch.no_grad():
        detections = model.eval()(images)
    assert len(detections) == 2
    for detection in detections:
        assert detection["boxes"].shape[1:] == (4,)
        assert len(detection["scores"]) == len(detection["labels"]) == len(detection["boxes"])
        assert ((detection["labels"] >= 1) & (detection["labels"] <= 10)).all()


def test_the_pyramid_runs_finest_first_with_one_level_per_stage():
    backbone = feature_pyramid_backbone(
        build_model("fishnet99", width=0.25), ["head3", "head1"], out_channels=16
    )
    assert backbone.stages == ["head1", "head3"]
    assert backbone.feature_info.reduction() == [2, 8]
    levels = backbone(torch.rand(1, 3, SIZE, SIZE))
    assert list(levels) == ["head1", "head3"]
    assert [tuple(level.shape) for level in levels.values()] == [(1, 16, 32, 32), (1, 16, 8, 8)]


def test_the_resnet_baseline_is_a_detection_backbone_too():
    backbone = feature_pyramid_backbone(
        build_model("resnet50", width=0.25), ["stage2", "stage3", "stage4"], out_channels=16
    )
    model = detection_model(
        backbone, 11, SIZE, NORMALIZATION.mean, NORMALIZATION.std, representation_size=32
    )
    losses = model.train()([torch.rand(3, SIZE, SIZE)], synthetic_targets(1))
    sum(losses.values()).backward()
    assert backbone_parameters_without_gradient(model, "backbone.body.") == []


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (["head4"], "stages must name maps"),
        ([], "stages must name maps"),
        (["head1", "head1"], "named twice"),
        (["body2", "head1"], "one map per resolution"),
    ],
)
def test_bad_stages_are_refused_by_name(stages, message):
    with pytest.raises(ValueError, match=message):
        feature_pyramid_backbone(build_model("fishnet99", width=0.25), stages)


@pytest.mark.parametrize("head", ["fcn", "deeplabv3"])
@pytest.mark.parametrize("shape", [(64, 64), (40, 56)])
def test_segmentation_logits_have_the_input_size_and_train_the_backbone(head, shape):
    torch.manual_seed(0)
    model = segmentation_model(build_model("fishnet99", width=0.25), 11, head=head)
    logits = model.train()(torch.rand(2, 3, *shape))["out"]
    assert logits.shape == (2, 11, *shape)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 11, (2, *shape))).backward()
    assert backbone_parameters_without_gradient(model, "backbone.") == []


def test_segmentation_reads_the_last_map_at_the_highest_resolution():
    assert finest_stage(build_model("fishnet99", width=0.25)) == "body3"
    assert finest_stage(build_model("resnet50", width=0.25)) == "stage1"
    with pytest.raises(ValueError, match="unknown head"):
        segmentation_model(build_model("fishnet99", width=0.25), 11, head="unet")


def tiny_run(task: str, steps: int = 3) -> CanvasRun:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(20) % 10
    options = {"size": 48, "object_sizes": (16, 24), "num_classes": 10}
    model = TASKS[task].build(
        build_model("fishnet99", width=0.0625),
        11,
        48,
        NORMALIZATION,
        stages=STAGE_GROUPS["head"],
        stage=None,
        head="fcn",
        fpn_channels=8,
        representation_size=16,
    )
    optimizer = make_optimizer(model, lr=0.01, weight_decay=1e-4)
    scheduler = make_scheduler(optimizer, name="cosine", epochs=1, steps_per_epoch=steps, lr=0.01)
    return CanvasRun(
        TASKS[task],
        model,
        optimizer,
        scheduler,
        CanvasDataset(images, labels, steps * 2, seed=3, **options),
        CanvasDataset(images, labels, 4, seed=0, **options),
        batch_size=2,
        seed=3,
        device=torch.device("cpu"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_resumed_run_goes_on_as_an_unbroken_one(task):
    unbroken = tiny_run(task)
    for _ in range(3):
        unbroken.train_step()
    first = tiny_run(task)
    first.train_step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    resumed = tiny_run(task)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert resumed.step == 1
    resumed.train_step()
    resumed.train_step()
    for (name, expected), actual in zip(
        unbroken.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=name)
    scores = resumed.evaluate()
    assert set(scores) == {"step", *TASKS[task].score_names}
    assert resumed.history == [scores]


def run_canvas(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.canvas", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO_ROOT,
    )


TINY = [
    "--width", "0.0625", "--canvas-size", "48", "--object-sizes", "16", "24", "--batch-size",
    "2", "--eval-canvases", "4", "--warmup-steps", "0", "--fpn-channels", "8",
    "--representation-size", "16", "--device", "cpu",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_command_trains_scores_draws_and_keeps_its_run(task, synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    common = [task, "--data", synthetic_cifar10_dir, "--out", out, *TINY]
    result = run_canvas(*common, "--steps", "2", "--eval-every", "1")
    assert result.returncode == 0, result.stderr
    history = json.loads((out / "scores.json").read_text())
    assert [row["step"] for row in history] == [0, 1, 2]
    assert set(history[0]) == {"step", *TASKS[task].score_names}
    assert (out / "predictions.png").read_bytes().startswith(b"\x89PNG")
    recorded = json.loads((out / "args.json").read_text())
    assert recorded["args"]["task"] == task
    assert f" -m tools.canvas {task} --data " in recorded["command"]
    one_line_error(run_canvas(*common, "--steps", "2"), "already holds a run", "--resume")
    one_line_error(
        run_canvas(*common, "--steps", "3", "--resume"), "--resume", "--steps 2", "original run"
    )
    one_line_error(run_canvas(*common, "--resume", "--steps", "2", "--seed", "1"), "--seed 0")
    saved = torch.load(out / "last.pt", weights_only=True)
    del saved["run"]["model"][next(iter(saved["run"]["model"]))]
    torch.save(saved, out / "last.pt")
    one_line_error(run_canvas(*common, "--steps", "2", "--resume"), "last.pt is damaged")


@pytest.mark.slow
def test_ctrl_c_saves_the_run_and_resume_finishes_it(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    command = ["detection", "--data", synthetic_cifar10_dir, "--out", out, *TINY, "--steps", "40"]
    child = subprocess.Popen(
        [sys.executable, "-m", "tools.canvas", *map(str, command)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert "step 0 (initialisation)" in child.stdout.readline()
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert " -m tools.canvas detection " in stderr.splitlines()[-1]
    assert stderr.splitlines()[-1].endswith(" --resume")
    saved = torch.load(out / "last.pt", weights_only=True)
    assert 0 <= saved["run"]["step"] < 40
    result = run_canvas(*command, "--resume")
    assert result.returncode == 0, result.stderr
    assert f"resuming {out / 'last.pt'} at step {saved['run']['step']}" in result.stdout
    assert json.loads((out / "scores.json").read_text())[-1]["step"] == 40


def refusal(argv: list, capsys: pytest.CaptureFixture) -> str:
    """The one line with which tools/canvas.py refuses ``argv``: argparse's (exit status 2)
    or a UserError's (which run_cli prints as one line with exit status 2)."""
    try:
        canvas.main([str(arg) for arg in argv])
    except SystemExit as stopped:
        assert stopped.code == 2
        (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        return line
    except UserError as error:
        assert "\n" not in str(error)
        return str(error)
    raise AssertionError(f"{argv} was not refused")


@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["detection", "--stages", "head9"], ["--stages", "head9"]),
        (["detection", "--stages", "body2", "head1"], ["--stages", "one map per resolution"]),
        (["detection", "--model", "resnet50", "--stages", "head"], ["--stages", "stage4"]),
        (["segmentation", "--stage", "gills"], ["--stage", "gills"]),
        (["segmentation", "--stages", "head"], ["--stages is for detection"]),
        (["detection", "--stage", "body3"], ["--stage is for segmentation"]),
        (["detection", "--object-sizes", "30", "20"], ["--object-sizes", "MIN is above MAX"]),
        (["detection", "--object-sizes", "20", "100"], ["--object-sizes", "96 canvas"]),
        (["detection", "--width", "0.3"], ["--width", "multiple of 1/16"]),
        (["detection", "--width", "1e9"], ["--width", "at most 4"]),
        (["detection", "--momentum", "-1"], ["--momentum"]),
        (["detection", "--momentum", "nan"], ["--momentum"]),
        (["detection", "--weight-decay", "-1"], ["--weight-decay"]),
        (["detection", "--weight-decay", "inf"], ["--weight-decay"]),
        (["detection", "--seed", str(2**64)], ["--seed", "at most"]),
        (["detection", "--steps", "9" * 400], ["--steps", "at most"]),
        (["detection", "--max-objects", "10" * 12], ["--max-objects", "at most 64"]),
        (["detection", "--fpn-channels", "10" * 7], ["--fpn-channels", "at most"]),
        (["detection", "--batch-size", "10" * 6], ["--batch-size", "at most"]),
        (["detection", "--eval-canvases", "10" * 6], ["--eval-canvases", "at most"]),
        (["detection", "--resume"], ["--resume", "does not exist"]),
        (["detection", "--warmup-steps", "300"], ["--warmup-steps"]),
        (["detection", "--steps", "0"], ["--steps", "positive"]),
        (["detection", "--backbone", "missing.pt"], ["--backbone", "no such checkpoint"]),
        (["detection", "--backbone", "."], ["--backbone", "a folder"]),
        (["detection", "--data", "nowhere"], ["nowhere", "not found"]),
    ],
)
def test_bad_input_is_refused_in_one_line_before_any_work(
    flags, phrases, synthetic_cifar10_dir, tmp_path, capsys
):
    data = [] if "--data" in flags else ["--data", synthetic_cifar10_dir]
    line = refusal([*flags, *data, "--out", tmp_path / "run", "--device", "cpu"], capsys)
    for phrase in phrases:
        assert phrase in line, line
    assert not (tmp_path / "run").exists()


def test_a_broken_link_as_the_run_folder_is_refused(synthetic_cifar10_dir, tmp_path, capsys):
    (tmp_path / "run").symlink_to(tmp_path / "nowhere")
    argv = ["detection", "--data", synthetic_cifar10_dir, "--out", tmp_path / "run"]
    assert "a broken symbolic link" in refusal(argv, capsys)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_the_documented_lines_give_a_detector_that_trains_and_detects():
    text = (REPO_ROOT / "docs" / "downstream.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    [lines] = [block for block in blocks if "detection_model(" in block]
    torch.manual_seed(0)
    namespace: dict = {}
    exec(lines, namespace)
    model = namespace["model"]
    assert isinstance(model, torchvision.models.detection.FasterRCNN)
    images = [torch.rand(3, 96, 96)]
    losses = model.train()(images, synthetic_targets(1))
    sum(losses.values()).backward()
    assert backbone_parameters_without_gradient(model, "backbone.body.") == []
    with torch.no_grad():
        (detection,) = model.eval()(images)
    assert set(detection) == {"boxes", "labels", "scores"}
