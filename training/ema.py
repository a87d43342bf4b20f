"""An exponential moving average of a model, updated after every step without waiting for
the device."""

import copy
from itertools import chain

import torch
from torch import nn


class ExponentialMovingAverage:
    """``average = decay * average + (1 - decay) * weights`` after every step, over the
    parameters and the floating-point buffers (batch-norm statistics); the first update
    copies the model. Integer buffers (batch-norm's ``num_batches_tracked``) are copied.

    The weights are those of torch.optim.swa_utils.AveragedModel with
    ``get_ema_multi_avg_fn(decay)`` and ``use_buffers=True``; the update is not. AveragedModel
    keeps its count of updates in a CPU tensor that it copies to the GPU once per dtype
    group at every update (each copy waits for the device) and walks the model's tensors in
    Python (about 1,600 operator calls for FishNet-99). Here the count is a Python number,
    the decay a Python float, and the tensors are paired once, so an update is two foreach
    calls and never waits.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"the decay must be between 0 and 1, got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.updates = 0
        pairs = list(
            zip(
                chain(self.module.parameters(), self.module.buffers()),
                chain(model.parameters(), model.buffers()),
                strict=True,
            )
        )
        self._averaged = [a for a, w in pairs if a.is_floating_point()]
        self._weights = [w.detach() for a, w in pairs if a.is_floating_point()]
        self._copied = [a for a, w in pairs if not a.is_floating_point()]
        self._sources = [w.detach() for a, w in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """Moves the average towards the model's current weights (copies them the first time)."""
        if self.updates == 0:
            torch._foreach_copy_(self._averaged, self._weights)
        else:
            torch._foreach_lerp_(self._averaged, self._weights, 1.0 - self.decay)
        if self._copied:
            torch._foreach_copy_(self._copied, self._sources)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"state_dict": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """``updates`` may be a one-element tensor: AveragedModel's count, which checkpoints
        written before this class hold."""
        updates = state["updates"]
        updates = int(updates.item()) if isinstance(updates, torch.Tensor) else updates
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
            raise TypeError(f"the count of updates must be a whole number, got {updates!r}")
        self.module.load_state_dict(state["state_dict"])
        self.updates = updates
