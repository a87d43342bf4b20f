"""Top-k counts and the evaluation of a split, with counts kept on the device."""

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from training.distributed import all_reduce_sum, is_main_process
from training.precision import autocast

TOPK = (1, 5)


class EvaluationStopped(Exception):
    """A stop request (Ctrl-C, SIGTERM) came while a split was scored; its scores are lost,
    what was trained before is not."""


# Under torchrun the processes decide together whether to stop, every so many batches (each
# process has as many): a decision waits for the device, which a single process never does.
AGREE_TO_STOP_EVERY = 10


def _stop_now(should_stop: Callable[[], bool], batch: int, device: torch.device) -> bool:
    """Whether to stop before batch number ``batch``."""
    if not dist.is_initialized():
        return should_stop()
    if batch % AGREE_TO_STOP_EVERY:
        return False
    flag = torch.tensor([int(should_stop())], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def count_topk_correct(logits: Tensor, targets: Tensor) -> Tensor:
    """Correct predictions among the top 1 and top 5 (or all classes, if fewer), on the device."""
    k = min(max(TOPK), logits.shape[1])
    hits = logits.topk(k, dim=1).indices == targets[:, None]
    return torch.stack([hits[:, : min(topk, k)].any(dim=1).sum() for topk in TOPK])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    device: torch.device,
    amp: str,
    *,
    flip: bool = False,
    desc: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Loss, top-1, top-5 (percent) and the confusion matrix (rows: true class) of a split.

    ``flip`` also scores the mean of the logits of every image and its mirror image
    (``flip_top1``, ``flip_top5``), beside the plain scores, never instead of them. ``desc``
    shows a progress bar with that label. Counts stay on the device until the end, so the
    loop never waits for the GPU. ``should_stop``, asked before every batch, ends the
    evaluation with :class:`EvaluationStopped` when it returns True.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros(2 * len(TOPK), device=device, dtype=torch.int64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    one = torch.ones((), device=device, dtype=torch.int64)
    batches = tqdm(
        loader,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        disable=desc is None or not is_main_process(),
    )
    for batch, (images, labels) in enumerate(batches):
        if should_stop is not None and _stop_now(should_stop, batch, device):
            batches.close()
            raise EvaluationStopped
        with autocast(device, amp):
            logits = model(images).float()
            if flip:
                mirrored = (logits + model(images.flip(3)).float()) / 2
                correct[len(TOPK) :] += count_topk_correct(mirrored, labels)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        correct[: len(TOPK)] += count_topk_correct(logits, labels)
        # Not torch.bincount: on CUDA it reads the indices' min and max back to the host.
        confusion.index_put_((labels * num_classes + logits.argmax(1),), one, accumulate=True)
    for total in (loss_sum, correct, confusion):
        all_reduce_sum(total)  # each process evaluated its own shard of the split
    confusion = confusion.view(num_classes, num_classes).cpu()
    samples = int(confusion.sum())
    top1, top5, flip_top1, flip_top5 = (100.0 * correct.cpu().double() / max(samples, 1)).tolist()
    result = {
        "loss": loss_sum.item() / max(samples, 1),
        "top1": top1,
        "top5": top5,
        "samples": samples,
        "confusion": confusion,
    }
    if flip:
        result.update(flip_top1=flip_top1, flip_top5=flip_top5)
    return result


def per_class_accuracy(confusion: Tensor) -> list[float]:
    return (100.0 * confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
