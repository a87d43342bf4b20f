"""--tensorboard: a run's curves as TensorBoard event files in OUT/tensorboard/.

The x axis is the run's optimizer step (steps per epoch x epoch + step in the epoch, from
1). Every progress update of the training loop (training.engine.PROGRESS_EVERY steps, the
epoch's last step and a stop) writes the training metrics of the steps since the previous
update, the learning rate and the images per second; every epoch writes its history row at
its last step. Only the first process writes (under torchrun the others get no curves).

tensorboard is an optional package: :func:`require_tensorboard` refuses the flag in one line
without it, before the run starts.
"""

import time
from collections.abc import Collection
from pathlib import Path

import torch

from training.engine import EpochProgress
from training.metrics import metric_values
from utils import UserError, one_line

CURVES_FOLDER = "tensorboard"  # in the run folder: `tensorboard --logdir runs` shows every run


def require_tensorboard() -> type:
    """torch's SummaryWriter; a one-line UserError when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise UserError(
            f"--tensorboard needs the tensorboard package ({one_line(error)}); install it "
            "with pip install tensorboard, or train without --tensorboard"
        ) from None
    return SummaryWriter


class TrainingCurves:
    """The scalars of one run, written into OUT/tensorboard/.

    Per progress update: ``train/KEY`` for every metric of training.metrics.METRICS (the
    mean over the images since the previous update, not the epoch's running mean),
    ``train/lr`` (the optimizer's learning rate at the update) and ``train/images_per_sec``
    (over the wall time since the previous update; this process's, as the history's
    ``images_per_sec``). Per epoch: the scored splits' metrics as ``SPLIT/KEY``
    (``valid/top1``, ``valid/flip_top1``, ``test/loss``) and the rest of the history row as
    ``epoch/KEY`` (``epoch/train_top1``, ``epoch/images_per_sec``, ``epoch/epoch_time``).
    """

    def __init__(
        self,
        writer,
        optimizer: torch.optim.Optimizer,
        steps_per_epoch: int,
        scored_splits: Collection[str],
    ) -> None:
        self.writer, self.optimizer = writer, optimizer
        self.steps_per_epoch, self.scored_splits = steps_per_epoch, scored_splits
        self.epoch = 0
        # The progress sums, images and wall time at the start of the current window.
        self.window_sums: list[float] = []
        self.window_images = 0
        self.window_started = 0.0

    @classmethod
    def open(
        cls,
        out: Path,
        optimizer: torch.optim.Optimizer,
        steps_per_epoch: int,
        scored_splits: Collection[str],
        steps_done: int,
    ) -> "TrainingCurves":
        """The curves of a run that has taken ``steps_done`` optimizer steps (0: a new run).

        A resumed run's writer starts with a purge mark: TensorBoard's readers then hide
        what a killed process wrote after its last checkpoint (steps past ``steps_done``),
        which this run writes again. The update at ``steps_done`` itself (a stop's, or an
        epoch's last), on disk before that checkpoint was written, is kept.
        """
        summary_writer = require_tensorboard()
        writer = summary_writer(
            out / CURVES_FOLDER, purge_step=steps_done + 1 if steps_done else None
        )
        return cls(writer, optimizer, steps_per_epoch, scored_splits)

    def start_epoch(self, epoch: int, progress: EpochProgress) -> None:
        """The first window of an epoch starts at its progress: zero, or where a resumed
        epoch stopped, so the stop's update and the next one share no step."""
        self.epoch = epoch
        self.window_sums = progress.sums.tolist()
        self.window_images = progress.samples
        self.window_started = time.perf_counter()

    def log_progress(self, index: int, progress: EpochProgress) -> None:
        """The window that ends after step ``index`` of the epoch; ``progress`` holds the
        epoch's sums so far (train_one_epoch's ``on_progress``)."""
        sums, now = progress.sums.tolist(), time.perf_counter()
        images = progress.samples - self.window_images
        window = [total - start for total, start in zip(sums, self.window_sums, strict=True)]
        step = self.steps_per_epoch * self.epoch + index + 1
        scalars = {f"train/{key}": value for key, value in metric_values(window, images).items()}
        scalars["train/lr"] = self.optimizer.param_groups[0]["lr"]
        scalars["train/images_per_sec"] = images / (now - self.window_started)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        # On disk before a stop's checkpoint is written, which a resumed run keeps it for.
        self.writer.flush()
        self.window_sums, self.window_images, self.window_started = sums, progress.samples, now

    def log_epoch(self, row: dict) -> None:
        """An epoch's history row, at its last step; written to disk before the epoch's
        checkpoint, so that a run resumed from that checkpoint finds it there."""
        step = self.steps_per_epoch * row["epoch"]
        for key, value in row.items():
            if key == "epoch":
                continue
            split, _, metric = key.partition("_")
            tag = f"{split}/{metric}" if split in self.scored_splits else f"epoch/{key}"
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
