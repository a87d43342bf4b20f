"""Data-parallel training under torchrun, on the CPU (gloo), as CI can run it."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, SMALL, run_script

from models import build_model

pytestmark = pytest.mark.slow  # every test starts torchrun and its training processes

# The first-step update of a width-0.25 FishNet-99 on 16 fixed images, with BatchNorm in
# eval mode (its batch statistics would differ between one batch of 16 and two of 8) on
# statistics measured once on other images, so that activations are normalised.
FIRST_STEP = """
import sys
import torch
from torch import nn
from dataloader import DeviceLoader
from models import build_model
from training.distributed import distribute, init_distributed, shutdown_distributed
from training.engine import TrainStep

rank, world_size, device = init_distributed("cpu")
torch.manual_seed(0)
model = build_model("fishnet99", width=0.25)
for module in model.modules():
    if isinstance(module, nn.BatchNorm2d):
        module.momentum = None  # running statistics = those of the batch below
with torch.no_grad():
    model(torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
model.eval()
images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(1))
loader = DeviceLoader(images, torch.arange(16) % 10, 16 // world_size, mean=(0.5,) * 3,
                      std=(0.25,) * 3, train=True, augment=["none"], rank=rank,
                      world_size=world_size)
batch, labels = next(iter(loader))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
TrainStep(distribute(model, device), optimizer, nn.CrossEntropyLoss(), device, "off")(batch, labels)
if rank == 0:
    torch.save(model.state_dict(), sys.argv[1])
shutdown_distributed()
"""


def torchrun(nproc: int, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={nproc}", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip


def test_two_processes_train_resume_and_evaluate(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    flags = ["--data", synthetic_cifar10_dir, "--out", out, *SMALL, "--batch-size", "16"]
    first = torchrun(2, "train.py", *flags, "--epochs", "1")
    assert first.returncode == 0, first.stderr
    assert "x 2 processes" in first.stdout
    resumed = torchrun(2, "train.py", *flags, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("done: best valid top-1") == 1  # only the first process prints

    expected = {"last.pt", "best.pt", "history.json", "history.csv", "acc.png", "loss.png"}
    expected |= {"args.json", ".lock"}  # the run record and the folder lock
    assert {path.name for path in out.iterdir()} == expected
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    # Full global batches of 2 x 16: 64 of the 80 images an epoch, none doubled.
    assert all(row["train_samples"] == 64 for row in history)

    checkpoint = torch.load(out / "best.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in checkpoint["state_dict"])
    scores = run_script("eval.py", out / "best.pt", "--split", "valid", "--json", "--device", "cpu")
    assert scores.returncode == 0, scores.stderr
    best = max(history, key=lambda row: row["valid_top1"])
    assert json.loads(scores.stdout)["valid"]["top1"] == best["valid_top1"]


def test_two_processes_average_gradients_like_one_with_twice_the_batch(tmp_path):
    script = tmp_path / "first_step.py"
    script.write_text(FIRST_STEP)
    single = torchrun(1, script, tmp_path / "one.pt")
    assert single.returncode == 0, single.stderr
    pair = torchrun(2, script, tmp_path / "two.pt")
    assert pair.returncode == 0, pair.stderr
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    torch.manual_seed(0)
    initial = build_model("fishnet99", width=0.25).state_dict()
    updates = {key: (one[key] - initial[key], two[key] - initial[key]) for key in one}
    largest = max(single.abs().max().item() for single, _ in updates.values())
    assert largest > 1e-3  # the step moved the weights well beyond the tolerance below...
    for key, (single, pair) in updates.items():  # ...and alike: gradients are averaged
        torch.testing.assert_close(pair, single, rtol=1e-3, atol=1e-5, msg=key)


def test_sync_bn_needs_gpus(synthetic_cifar10_dir, tmp_path):
    result = run_script(
        "train.py", "--data", synthetic_cifar10_dir, "--out", tmp_path / "r", *SMALL, "--sync-bn"
    )
    assert result.returncode == 2 and "--sync-bn needs CUDA GPUs" in result.stderr
