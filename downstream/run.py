"""A canvas run's state and its pieces: one optimizer step, scoring the held-out canvases.

Every step draws its batch and its random numbers from (seed, step) alone: batch ``k``
holds canvases ``k * batch_size`` onwards, and the global generator, which torchvision's
samplers of anchors and proposals draw from, is seeded for the step. So a run resumed from
its state (:meth:`CanvasRun.state_dict`) goes on exactly as an unbroken one.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from downstream.canvas import CanvasDataset
from utils import UserError

# Steps seed the global generator with seed * STEP_SEEDS + step: distinct for every (seed,
# step) of a run shorter than this.
STEP_SEEDS = 1_000_003


@dataclass
class CanvasRun:
    """What a canvas run holds between steps; ``state_dict`` is what --resume needs."""

    task: object  # an entry of downstream.tasks.TASKS
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_canvases: CanvasDataset
    eval_canvases: CanvasDataset
    batch_size: int
    seed: int
    device: torch.device
    step: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return self.train_canvases.num_labels

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.history = list(state["history"])

    def train_step(self) -> float:
        """One optimizer step on the next batch; its loss."""
        torch.manual_seed(self.seed * STEP_SEEDS + self.step)
        start = self.step * self.batch_size
        batch = [self.train_canvases[i] for i in range(start, start + self.batch_size)]
        self.model.train()
        loss = self.task.loss(self.model, batch, self.device)
        if not torch.isfinite(loss):
            raise UserError(f"the loss is {loss.item()} at step {self.step + 1}; try a lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.item()

    def predict(self, canvases: Sequence) -> list:
        self.model.eval()
        return self.task.predict(self.model, canvases, self.device)

    def evaluate(self) -> dict:
        """The task's scores on every held-out canvas, recorded in ``history`` with the step."""
        predictions = []
        canvases = [self.eval_canvases[i] for i in range(len(self.eval_canvases))]
        for start in range(0, len(canvases), self.batch_size):
            predictions += self.predict(canvases[start : start + self.batch_size])
        scores = self.task.scores(predictions, canvases, self.num_labels)
        row = {"step": self.step, **scores}
        self.history.append(row)
        return row
