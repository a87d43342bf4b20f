"""bench.py train and tta as CI smoke tests, and the torch.compile fallback."""

import json
import re

import pytest
import torch
from conftest import run_script

import bench
from training.distributed import device_name
from training.options import parse_args as parse_train_args
from utils import UserError

CPU_SMALL = ["--width", "0.25", "--device", "cpu"]


@pytest.mark.slow
def test_bench_train_runs_both_pipelines(synthetic_cifar10_dir, tmp_path):
    result = run_script(
        "bench.py", "train", "--data", synthetic_cifar10_dir, *CPU_SMALL, "--batch-size", "8",
        "--steps", "2", "--warmup", "1", "--workers", "0", "--json", tmp_path / "step.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rates = re.findall(
        r"^(this repository|seed-style).*?\s([\d,]+)\s+([\d.]+)\s", result.stdout, re.M
    )
    assert [name for name, _, _ in rates] == ["this repository", "seed-style"]
    assert all(int(rate.replace(",", "")) > 0 and float(tflops) > 0 for _, rate, tflops in rates)
    assert re.search(r"^ratio: [\d.]+x$", result.stdout, re.M)
    # --json: the same figures for programs (bench.py gpu-report reads them).
    figures = json.loads((tmp_path / "step.json").read_text())
    hardware = device_name(torch.device("cpu"))  # "2-core CPU": the cores the run could use
    assert (figures["batch_size"], figures["device"], figures["peak_tflops"]) == (8, hardware, None)
    shown = {name: int(rate.replace(",", "")) for name, rate, _ in rates}
    for name, pipeline in figures["pipelines"].items():
        assert round(pipeline["images_per_sec"]) == shown[name] and pipeline["tflops"] > 0
        assert pipeline["fraction_of_peak"] is None and pipeline["startup_s"] > 0


@pytest.mark.slow
def test_bench_tta_reports_the_time_to_each_target(synthetic_cifar10_dir, tmp_path):
    result = run_script(
        "bench.py", "tta", "--targets", "1", "99.9", "--split", "test", "--out", tmp_path / "tta",
        "--data", synthetic_cifar10_dir, *CPU_SMALL, "--batch-size", "32", "--epochs", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\| 1\.00 % \| [\d.]+ s \| 1 \|$", result.stdout, re.M), result.stdout
    assert re.search(r"^\| 99\.90 % \| not reached in \d+ s \| - \|$", result.stdout, re.M)
    assert "final after 2 epochs" in result.stdout


@pytest.mark.slow
def test_bench_rejects_unknown_flags():
    result = run_script("bench.py", "train", "--lr", "0.1")
    assert result.returncode == 2 and "unrecognized arguments: --lr 0.1" in result.stderr


def test_presets_set_defaults_that_flags_override():
    fast = parse_train_args(["--preset", "fast"])
    assert (fast.schedule, fast.batch_size, fast.nesterov) == ("onecycle", 512, True)
    assert parse_train_args(["--preset", "fast", "--epochs", "3"]).epochs == 3
    seed = parse_train_args([])
    assert (seed.schedule, seed.batch_size, seed.epochs, seed.lr) == ("step", 256, 100, 0.1)


@pytest.mark.slow
def test_bench_augment_times_every_pipeline_and_test_time_augmentation(
    synthetic_cifar10_dir, capsys
):
    pipelines = ["crop-flip", "crop alternating-flip", "crop-flip mixup"]
    bench.main(["augment", "--data", str(synthetic_cifar10_dir), *CPU_SMALL, "--batch-size", "8",
                "--steps", "1", "--rounds", "2", "--warmup", "1",
                "--pipelines", *pipelines])  # fmt: skip
    out = capsys.readouterr().out
    rows = re.findall(r"^\| ([a-z -]+) \| ([\d.]+) \([\d.]+-[\d.]+\) \|", out, re.M)
    names = [name for name, _ in rows]
    assert names == ["crop-flip", "crop alternating-flip", "crop-flip mixup", "none", "flip",
                     "translate"]  # fmt: skip
    assert all(float(ms) > 0 for _, ms in rows)
    assert re.search(r"^\| crop-flip \| .* \| 1\.00 \|$", out, re.M)


def test_bench_augment_refuses_a_pipeline_train_py_would_refuse():
    with pytest.raises(UserError, match=r"--pipelines 'mixup cutmix': mixup and cutmix both mix"):
        bench.main(["augment", "--pipelines", "crop-flip", "mixup cutmix"])


@pytest.mark.parametrize(("pipelines", "message"), [
    (["crop-flip", ""], "--pipelines '': no augmentation named"),
    (["crop-flip", "crop-flip "], "--pipelines 'crop-flip ': given more than once"),
])  # fmt: skip
def test_bench_augment_refuses_an_empty_or_repeated_pipeline(pipelines, message):
    with pytest.raises(UserError, match=re.escape(message)):
        bench.main(["augment", "--pipelines", *pipelines])
