"""train.py --tensorboard: the curves in OUT/tensorboard/, read back with TensorBoard's own
reader, hold every progress update once, across a Ctrl-C and --resume too."""

import gc
import math
import os
import shutil
import signal
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
import training.engine
from training.engine import TrainStep
from training.options import parse_args, resume_mismatches
from utils import UserError

# 80 training images at batch 8: 10 steps an epoch; progress updates after steps 1, 5 and
# 9 (every PROGRESS_EVERY from the first) and 10 (the epoch's last).
BATCH, STEPS_PER_EPOCH, PROGRESS_EVERY, EPOCHS = 8, 10, 4, 2
TINY = ["--width", "0.0625", "--batch-size", BATCH, "--device", "cpu", "--epochs", EPOCHS]
UPDATES = [STEPS_PER_EPOCH * epoch + step for epoch in range(EPOCHS) for step in (1, 5, 9, 10)]
PROGRESS_TAGS = ("train/loss", "train/top1", "train/top5", "train/lr", "train/images_per_sec")


@pytest.fixture(autouse=True)
def frequent_progress(monkeypatch):
    monkeypatch.setattr(training.engine, "PROGRESS_EVERY", PROGRESS_EVERY)


def train_in_process(data, out, *flags) -> None:
    """train.py's main, with the signal handlers it installs put back afterwards."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        train.main(["--data", str(data), "--out", str(out), *map(str, [*TINY, *flags])])
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def stopped_in_process(data, out, *flags) -> int:
    """A run that train.py stops (Ctrl-C); its exit status. The process of a stopped
    train.py ends, which releases the run folder's lock; in-process the lock is released
    when the stopped run's frames are freed."""
    try:
        train_in_process(data, out, *flags)
    except SystemExit as stopped:
        status = stopped.code
    else:
        raise AssertionError("the run was not stopped")
    gc.collect()
    return status


def read_curves(out, purge: bool = True) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in out/tensorboard/ as TensorBoard shows it, {tag: [(step, value)]}; with
    ``purge=False``, also what TensorBoard hides (events after a resumed run's start)."""
    events = EventAccumulator(
        str(out / "tensorboard"), size_guidance={"scalars": 0}, purge_orphaned_data=purge
    ).Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def steps(curve: list[tuple[int, float]]) -> list[int]:
    return [step for step, _ in curve]


def epoch_mean_of_windows(curves: dict, epoch: int) -> float:
    """The epoch's training loss from its progress updates: each window's mean weighted by
    its images (a batch for each step since the previous update)."""
    updates = [(s, v) for s, v in curves["train/loss"] if (s - 1) // STEPS_PER_EPOCH == epoch]
    total, previous = 0.0, STEPS_PER_EPOCH * epoch
    for step, loss in updates:
        total += loss * BATCH * (step - previous)
        previous = step
    return total / (BATCH * STEPS_PER_EPOCH)


@pytest.mark.slow
def test_every_progress_update_and_epoch_is_one_point(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    train_in_process(synthetic_cifar10_dir, out, "--tensorboard", "--test-augment", "flip")
    curves = read_curves(out)
    for tag in PROGRESS_TAGS:
        assert steps(curves[tag]) == UPDATES, tag
        assert all(math.isfinite(value) for _, value in curves[tag]), tag
    history = torch.load(out / "last.pt", weights_only=True)["history"]
    for epoch, row in enumerate(history):
        # The windows' means add up to the epoch's: no step counted twice or left out.
        assert epoch_mean_of_windows(curves, epoch) == pytest.approx(row["train_loss"], rel=1e-5)
    at_epoch_ends = [STEPS_PER_EPOCH * row["epoch"] for row in history]
    for tag, key in [("valid/top1", "valid_top1"), ("valid/loss", "valid_loss"),
                     ("valid/flip_top1", "valid_flip_top1"), ("epoch/train_top1", "train_top1"),
                     ("epoch/images_per_sec", "images_per_sec"),
                     ("epoch/epoch_time", "epoch_time")]:  # fmt: skip
        assert steps(curves[tag]) == at_epoch_ends, tag
        assert [value for _, value in curves[tag]] == pytest.approx(
            [row[key] for row in history], rel=1e-6
        ), tag
    lr = dict(curves["train/lr"])
    assert lr[1] == pytest.approx(0.1)  # the step schedule holds 0.1 for 30 epochs


@pytest.mark.slow
def test_a_stopped_and_resumed_run_continues_its_curves(
    synthetic_cifar10_dir, tmp_path, monkeypatch
):
    out, stop_after = tmp_path / "run", 7  # in the middle of epoch 1, between two updates
    steps_taken = 0
    original_step = TrainStep.__call__

    def step_then_ctrl_c(self, images, labels):
        nonlocal steps_taken
        steps_taken += 1
        if steps_taken == stop_after:
            os.kill(os.getpid(), signal.SIGINT)
        return original_step(self, images, labels)

    with monkeypatch.context() as patch:
        patch.setattr(TrainStep, "__call__", step_then_ctrl_c)
        status = stopped_in_process(synthetic_cifar10_dir, out, "--tensorboard")
    assert status == 128 + signal.SIGINT
    assert steps(read_curves(out)["train/loss"]) == [1, 5, stop_after]

    train_in_process(synthetic_cifar10_dir, out, "--tensorboard", "--resume")
    curves = read_curves(out)
    for tag in PROGRESS_TAGS:
        assert steps(curves[tag]) == sorted([*UPDATES, stop_after]), tag
        assert all(math.isfinite(value) for _, value in curves[tag]), tag
    history = torch.load(out / "last.pt", weights_only=True)["history"]
    assert epoch_mean_of_windows(curves, 0) == pytest.approx(history[0]["train_loss"], rel=1e-5)
    assert steps(curves["valid/top1"]) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


@pytest.mark.slow
def test_a_resume_hides_what_a_killed_run_wrote_after_its_checkpoint(
    synthetic_cifar10_dir, tmp_path
):
    out = tmp_path / "run"
    train_in_process(synthetic_cifar10_dir, out, "--tensorboard", "--epochs", "1")
    shutil.copyfile(out / "last.pt", tmp_path / "epoch-1.pt")
    train_in_process(synthetic_cifar10_dir, out, "--tensorboard", "--resume")
    # As if that run had been killed before writing its checkpoint after epoch 2: its
    # events are on disk, and the run resumes from epoch 1 and trains epoch 2 again.
    shutil.copyfile(tmp_path / "epoch-1.pt", out / "last.pt")
    train_in_process(synthetic_cifar10_dir, out, "--tensorboard", "--resume")
    assert len(list((out / "tensorboard").iterdir())) == 3
    epoch_2 = [step for step in UPDATES if step > STEPS_PER_EPOCH]
    on_disk = read_curves(out, purge=False)
    assert steps(on_disk["train/loss"]) == UPDATES + epoch_2  # epoch 2 written twice
    curves = read_curves(out)
    assert steps(curves["train/loss"]) == UPDATES
    assert steps(curves["valid/top1"]) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def test_without_the_package_the_flag_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard fails
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"the tensorboard package .*pip install tensorboard"):
        train.main(["--data", str(tmp_path / "nowhere"), "--out", str(out), "--tensorboard"])
    assert not out.exists()


def test_a_new_run_clears_the_old_curves(tmp_path):
    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"old")
    (out / "last.pt").write_bytes(b"old")
    args = parse_args(["--out", str(out), "--overwrite"])
    lock, checkpoint = train.claim_output(args, out, main_process=True)
    lock.release()
    assert checkpoint is None
    assert not (out / "tensorboard").exists() and not (out / "last.pt").exists()


def test_tensorboard_may_be_switched_on_or_off_on_resume():
    assert resume_mismatches(vars(parse_args([])), parse_args(["--tensorboard"])) == []


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_or_link_named_tensorboard_is_refused_before_anything_is_written(tmp_path, kind):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("kept")
    if kind == "file":
        (out / "tensorboard").write_text("kept")
    else:
        (out / "tensorboard").symlink_to(elsewhere)
    args = parse_args(["--out", str(out), "--tensorboard"])
    with pytest.raises(UserError, match=r"tensorboard is a file or a link, not the folder"):
        train.claim_output(args, out, main_process=True)
    assert not (out / "args.json").exists() and (elsewhere / "keep").read_text() == "kept"
