"""train.py and eval.py from the command line, as a user runs them."""

import json
import shutil
import subprocess

import pytest
import torch
from conftest import SMALL, one_line_error, run_script, without_timing
from PIL import Image


def train(data, out, *args) -> subprocess.CompletedProcess:
    result = run_script("train.py", "--data", data, "--out", out, *SMALL, *args)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_missing_data_asks_for_download_and_leaves_no_run_behind(tmp_path):
    out = tmp_path / "run"
    result = run_script("train.py", "--data", tmp_path / "nowhere", "--out", out, "--device", "cpu")
    assert result.returncode == 2
    assert "download_data.py" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # Nothing was written that would make the next attempt ask for --resume or --overwrite.
    assert not out.exists()


@pytest.mark.slow
def test_a_half_prepared_dataset_names_the_missing_manifest(synthetic_cifar10_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_cifar10_dir, data)
    (data / "valid_img2labels.json").unlink()
    result = run_script("train.py", "--data", data, "--out", tmp_path / "run", *SMALL)
    one_line_error(result, "valid_img2labels.json", "download_data.py")
    assert not (tmp_path / "run").exists()


@pytest.mark.real_data
def test_learns_real_cifar10_on_the_cpu(cifar10_dir, tmp_path):
    """One epoch of the cpu preset (width-0.25 FishNet-99, 10,000 real training images),
    scored on the 10,000 valid images after the epoch: about two minutes here.

    Five seeds (0-4) scored 38.24 to 41.89 % valid top-1 (mean 40.02, sd 1.47; chance is
    10 %): the bound sits 8 points, more than five standard deviations, below the lowest.
    """
    out = tmp_path / "run"
    result = run_script("train.py", "--preset", "cpu", "--epochs", "1", "--data", cifar10_dir,
                        "--out", out, "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = json.loads((out / "history.json").read_text())
    assert row["valid_top1"] >= 30


@pytest.mark.slow
def test_moving_average_flip_cutout_fp16_and_the_run_record(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    flags = ["--epochs", "1", "--ema", "0.9", "--test-augment", "flip", "--augment", "crop-flip",
             "cutout", "--cutout-size", "8", "--amp", "fp16"]  # fmt: skip
    train(synthetic_cifar10_dir, out, *flags)
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert "ema_state_dict" in checkpoint and checkpoint["scaler"]["scale"] > 0
    row = checkpoint["history"][0]
    assert {"valid_flip_top1", "valid_flip_top5", "startup_time", "eval_time"} <= set(row)
    record = json.loads((out / "args.json").read_text())
    assert record["args"]["ema"] == 0.9 and "train.py" in record["command"]
    assert "--ema 0.9" in record["command"]
    assert record["args"]["augment"] == ["crop-flip", "cutout"]
    assert record["args"]["cutout_size"] == 8

    # eval.py scores the moving average, as validation did, from any folder.
    result = run_script("eval.py", out / "best.pt", "--json", "--test-augment", "flip",
                        "--device", "cpu", "--split", "valid", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)["valid"]
    assert scores["top1"] == pytest.approx(row["valid_top1"])
    assert scores["flip_top1"] == pytest.approx(row["valid_flip_top1"])


@pytest.mark.slow
def test_the_fast_recipes_ingredients_train_and_evaluate(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    flags = ["--epochs", "2", "--augment", "crop", "alternating-flip", "cutmix", "--bn-momentum",
             "0.4", "--schedule", "linear", "--test-augment", "flip", "translate"]  # fmt: skip
    train(synthetic_cifar10_dir, out, *flags)
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert 0 <= row["train_top1"] <= row["train_top5"] <= 100
        assert {"valid_flip_top1", "valid_translate_top1", "valid_translate_top5"} <= set(row)
    record = json.loads((out / "args.json").read_text())["args"]
    assert (record["crop_padding"], record["cutmix_alpha"], record["mixup_alpha"]) == (4, 1.0, None)
    result = run_script("eval.py", out / "last.pt", "--json", "--test-augment", "translate",
                        "--device", "cpu", "--split", "valid")  # fmt: skip
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)["valid"]
    assert scores["translate_top1"] == pytest.approx(history[-1]["valid_translate_top1"])
    assert "flip_top1" not in scores


@pytest.mark.slow
def test_train_on_all_reports_test_only(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    train(synthetic_cifar10_dir, out, "--epochs", "1", "--train-on-all")
    (row,) = json.loads((out / "history.json").read_text())
    assert row["train_samples"] == 96  # 80 train + 20 valid images, full batches of 32
    assert "test_top1" in row and "valid_top1" not in row
    assert (out / "best.pt").is_file()


@pytest.mark.slow
def test_a_checkpoint_from_before_new_flags_still_resumes(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    train(synthetic_cifar10_dir, out, "--epochs", "1")
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    for key in (
        "ema",
        "cutout_size",
        "init",
        "decay_norm_bias",
        "train_on_all",
        "test_augment",
        "bn_momentum",
        "crop_padding",
        "mixup_alpha",
        "cutmix_alpha",
    ):
        del checkpoint["args"][key]
    checkpoint["args"]["augment"] = "crop-flip"  # one name, before the augmentation table
    del checkpoint["scaler"]
    checkpoint["args"]["amp"] = False  # older runs recorded bf16 autocast as a boolean
    torch.save(checkpoint, out / "last.pt")
    resumed = train(synthetic_cifar10_dir, out, "--epochs", "2", "--resume")  # step: may grow
    assert "resuming" in resumed.stdout
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_eval_refuses_data_the_run_was_not_scored_on(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    train(synthetic_cifar10_dir, out, "--epochs", "1")
    swapped = tmp_path / "swapped"
    shutil.copytree(synthetic_cifar10_dir, swapped)
    train_manifest = (swapped / "train_img2labels.json").read_text()
    (swapped / "valid_img2labels.json").write_text(train_manifest)
    (swapped / "valid_cache.pt").unlink(missing_ok=True)
    refused = run_script("eval.py", out / "best.pt", "--device", "cpu", "--split", "valid",
                         "--data", swapped)  # fmt: skip
    assert refused.returncode == 0 and "warning" in refused.stderr  # --data given: a warning
    checkpoint = torch.load(out / "best.pt", weights_only=True)
    checkpoint["dataset"]["path"] = str(swapped)
    torch.save(checkpoint, tmp_path / "moved.pt")
    one_line_error(run_script("eval.py", tmp_path / "moved.pt", "--device", "cpu"), "valid split")


def test_the_epoch_line_reads_every_metric_of_the_row():
    from train import describe_epoch

    row = {"epoch": 2, "lr_start": 0.05, "train_loss": 2.1, "train_top1": 20.0,
           "train_top5": 60.0, "valid_loss": 2.3456, "valid_top1": 18.0, "valid_top5": 55.125,
           "valid_flip_top1": 19.5, "valid_flip_top5": 56.0, "images_per_sec": 1234.4,
           "epoch_time": 5.04, "startup_time": 1.0, "eval_time": 0.25}  # fmt: skip
    # The time left: 2 more epochs at the pace of this one without its start-up.
    assert describe_epoch(row, 4, is_best=True) == (
        "epoch 2/4  start lr 0.05  train loss 2.100 top-1 20.00 top-5 60.00  valid loss 2.346 "
        "top-1 18.00 top-5 55.12 (flip 19.50)  1234 img/s  train 5.0 s (start-up 1.0 s) + "
        "eval 0.2 s  (best)  about 9 s left"
    )
    assert describe_epoch({**row, "epoch": 4}, 4, is_best=False).endswith("eval 0.2 s")
    many = describe_epoch({**row, "epoch_time": 601.0}, 100, is_best=False)
    assert many.endswith("about 16.3 h left")  # 98 epochs of 600.25 s


def test_a_gpu_recipe_on_a_cpu_is_warned_about_with_its_length(capsys):
    from models import build_model
    from train import warn_if_long_on_cpu
    from training.options import parse_args

    with torch.device("meta"):
        fishnet99, quarter = build_model("fishnet99"), build_model("fishnet99", width=0.25)
    warn_if_long_on_cpu(parse_args(["--preset", "fast"]), fishnet99, 12 * 39_936)
    # 3 x 1,304 M multiply-accumulates for each of 479,232 images at 20 G per second.
    assert "warning: --preset fast with these flags trains 479,232 images on a CPU: about " \
           "26.0 h" in capsys.readouterr().out  # fmt: skip
    warn_if_long_on_cpu(parse_args(["--preset", "cpu"]), quarter, 2 * 9_984)
    assert capsys.readouterr().out == ""


def test_the_plots_are_titled_with_model_recipe_hardware_and_a_folder_of_ones_own():
    from pathlib import Path

    from train import run_title
    from training.distributed import device_name
    from training.options import parse_args

    cpu = torch.device("cpu")
    args = parse_args(["--preset", "cpu"])
    assert run_title(args, Path(args.out), cpu) == (
        f"fishnet99, width 0.25, --preset cpu, {device_name(cpu)}"
    )
    args = parse_args(["--preset", "fast", "--epochs", "3", "--out", "runs/short"])
    assert run_title(args, Path(args.out), cpu) == (
        f"fishnet99, --preset fast --epochs 3, {device_name(cpu)}, short"
    )
    assert device_name(cpu).endswith("-core CPU")
