"""train.py and eval.py from the command line, as a user runs them."""

import json
import subprocess

import pytest
import torch
from conftest import SMALL, run_script, without_timing
from PIL import Image


def train(data, out, *args) -> subprocess.CompletedProcess:
    result = run_script("train.py", "--data", data, "--out", out, *SMALL, *args)
    assert result.returncode == 0, result.stderr
    return result


def test_train_then_eval_end_to_end(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    train(synthetic_cifar10_dir, out, "--epochs", "2")

    for name in ("last.pt", "best.pt", "history.json", "history.csv", "acc.png", "loss.png"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    # 80 images at batch 32: full batches only, so every step has the same shapes.
    assert all(row["train_samples"] == 64 for row in history)
    assert len((out / "history.csv").read_text().strip().splitlines()) == 3
    for plot in ("acc.png", "loss.png"):
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and image.width > 300

    result = run_script(
        "eval.py", out / "best.pt", "--json", "--device", "cpu", "--split", "train", "valid", "test"
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    numbers = [scores[split][k] for split in ("train", "valid", "test") for k in ("top1", "top5")]
    assert len(numbers) == 6 and all(0 <= n <= 100 for n in numbers)
    best = max(history, key=lambda row: row["valid_top1"])
    assert scores["valid"]["top1"] == pytest.approx(best["valid_top1"])
    assert scores["valid"]["top5"] == pytest.approx(best["valid_top5"])
    for split in ("train", "valid", "test"):
        assert (out / f"confusion_{split}.png").is_file()

    table = run_script("eval.py", out / "best.pt", "--split", "test", "--device", "cpu")
    assert table.returncode == 0, table.stderr
    assert "| test |" in table.stdout and "| airplane |" in table.stdout


def test_resume_equals_an_uninterrupted_run(synthetic_cifar10_dir, tmp_path):
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    common = ["--deterministic", "--seed", "3"]
    train(synthetic_cifar10_dir, straight, "--epochs", "2", *common)
    train(synthetic_cifar10_dir, pieces, "--epochs", "1", *common)
    resumed = train(synthetic_cifar10_dir, pieces, "--epochs", "2", "--resume", *common)
    assert "resuming" in resumed.stdout

    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(pieces / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    assert without_timing(a["history"]) == without_timing(b["history"])


def test_refuses_to_overwrite_or_mismatched_resume(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    train(synthetic_cifar10_dir, out, "--epochs", "1", "--schedule", "cosine")
    before = (out / "last.pt").read_bytes()

    again = run_script(
        "train.py", "--data", synthetic_cifar10_dir, "--out", out, *SMALL, "--epochs", "1"
    )
    assert again.returncode == 2
    assert "already holds a run" in again.stderr and "--resume" in again.stderr

    other = run_script(
        "train.py", "--data", synthetic_cifar10_dir, "--out", out, *SMALL, "--epochs", "2",
        "--schedule", "cosine", "--lr", "0.05", "--resume",
    )  # fmt: skip
    assert other.returncode == 2
    assert "--lr 0.1 (now 0.05)" in other.stderr and "--epochs 1 (now 2)" in other.stderr
    assert "Traceback" not in other.stderr
    assert (out / "last.pt").read_bytes() == before

    missing = run_script(
        "train.py", "--data", synthetic_cifar10_dir, "--out", tmp_path / "none", "--resume"
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_missing_data_asks_for_download(tmp_path):
    result = run_script("train.py", "--data", tmp_path / "nowhere", "--device", "cpu")
    assert result.returncode == 2
    assert "download_data.py" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.real_data
def test_learns_real_cifar10_on_the_cpu(cifar10_dir, tmp_path):
    """Width-0.25 FishNet-99, a few minutes on this CPU, well above chance (10 %)."""
    out = tmp_path / "run"
    recipe = ["--train-subset", "10000", "--epochs", "2", "--schedule", "onecycle", "--lr", "0.2"]
    result = run_script(
        "train.py", "--data", cifar10_dir, "--out", out, "--width", "0.25", "--device", "cpu",
        "--batch-size", "64", "--nesterov", "--label-smoothing", "0.1", *recipe,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = run_script("eval.py", out / "last.pt", "--split", "test", "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["test"]["top1"] >= 40
