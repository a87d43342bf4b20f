"""The metrics of training and evaluation in one table, and the evaluation of a split.

Every metric is one :class:`Metric` entry of :data:`METRICS`: the training epoch's sums,
the evaluation's, the epoch line, the history's keys and CSV columns, the plots and
eval.py's report all read the table. Sums stay on the device until a value is asked for.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from dataloader.augment import TEST_AUGMENTATIONS, VIEWS
from training.distributed import all_reduce_sum, is_main_process
from training.precision import autocast


@dataclass(frozen=True)
class BatchOutcome:
    """What a batch's metrics are counted from, on the device."""

    loss_sum: Tensor  # the batch's loss summed over its images (float32)
    # [images, ranks]: the target's share of the class of the i-th highest logit; for a
    # label, 1 where that class is the label, else 0.
    ranked_hits: Tensor


@dataclass(frozen=True)
class Metric:
    """One metric: its value is ``scale * (sum over images of batch_sum) / images``."""

    key: str  # history keys (train_top1, valid_flip_top1), CSV columns, eval.py --json
    label: str  # for humans: "top-1"
    unit: str  # "%" or ""; shown in eval.py's table header
    digits: int  # decimals in the epoch line
    report_digits: int  # decimals in eval.py's table
    figure: str  # the plot it is drawn in (training.plots.FIGURES)
    batch_sum: Callable[[BatchOutcome], Tensor]  # the batch's sum, on the device
    scale: float = 1.0  # 100 for percentages
    ranks: int = 0  # how many of the highest logits batch_sum reads
    # --test-augment NAME scores it on NAME's mean of views too (key NAME_KEY: flip_top1)
    test_augmented: bool = False

    def value(self, total: float, images: int) -> float:
        return self.scale * total / images


def top_k(k: int) -> Metric:
    """Top-k accuracy in percent: images whose true class is among the k highest logits.
    An image of a batch mixed by mixup or cutmix counts the shares of its classes among
    them: a hit on the class of share lambda counts lambda (the expected accuracy against
    a label drawn from the mixed target)."""
    return Metric(
        key=f"top{k}",
        label=f"top-{k}",
        unit="%",
        digits=2,
        report_digits=2,
        figure="acc",
        batch_sum=lambda batch: batch.ranked_hits[:, :k].sum(),
        scale=100.0,
        ranks=k,
        test_augmented=True,
    )


METRICS: tuple[Metric, ...] = (
    Metric(
        key="loss",
        label="loss",
        unit="",
        digits=3,
        report_digits=4,
        figure="loss",
        batch_sum=lambda batch: batch.loss_sum,
    ),
    top_k(1),
    top_k(5),
)
BY_KEY = {metric.key: metric for metric in METRICS}
RANKS = max(metric.ranks for metric in METRICS)
HEADLINE = "top1"  # the score that picks best.pt and that one-line summaries give
TEST_AUGMENTED = tuple(metric for metric in METRICS if metric.test_augmented)


def batch_sums(logits: Tensor, targets: Tensor, loss_sum: Tensor, metrics=METRICS) -> Tensor:
    """The sums of ``metrics`` over a batch, one float64 vector on the device, in their
    order. ``targets``: int64 labels [B], or float shares per class [B, classes] (a mixed
    batch). ``loss_sum`` is the batch's summed loss, as the caller defines its loss."""
    ranks = logits.topk(min(RANKS, logits.shape[1]), dim=1).indices
    if targets.is_floating_point():
        ranked = targets.gather(1, ranks)
    else:
        ranked = (ranks == targets[:, None]).float()
    batch = BatchOutcome(loss_sum, ranked)
    return torch.stack([metric.batch_sum(batch).double() for metric in metrics])


def metric_values(totals: list[float], images: int, metrics=METRICS) -> dict[str, float]:
    """{key: value} of sums read back from the device (``totals``, in ``metrics``' order)."""
    return {m.key: m.value(total, images) for m, total in zip(metrics, totals, strict=True)}


def score_keys(test_augment: Sequence[str] = ()) -> list[str]:
    """The keys :func:`evaluate` scores with ``test_augment``, in the history's order."""
    return [m.key for m in METRICS] + [
        f"{name}_{m.key}" for name in test_augment for m in TEST_AUGMENTED
    ]


def describe_scores(row: dict, split: str) -> str:
    """A split's scores in a history row, as the epoch line shows them: "valid loss 1.234
    top-1 56.78 top-5 90.12", and the headline score of each test-time augmentation scored:
    "(flip 57.01, translate 57.30)"."""
    text = f"{split} " + " ".join(
        f"{m.label} {row[f'{split}_{m.key}']:.{m.digits}f}" for m in METRICS
    )
    digits = BY_KEY[HEADLINE].digits
    augmented = [
        f"{name} {row[key]:.{digits}f}"
        for name in TEST_AUGMENTATIONS
        if (key := f"{split}_{name}_{HEADLINE}") in row
    ]
    return text + (f" ({', '.join(augmented)})" if augmented else "")


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


def view_logits(model: nn.Module, images: Tensor, views: Iterable[str]) -> dict[str, Tensor]:
    """The float32 logits of every view of ``images`` (names of dataloader.augment.VIEWS),
    each in the images' memory format."""
    channels_last = images.is_contiguous(memory_format=torch.channels_last)
    logits = {}
    for name in views:
        view = VIEWS[name](images)
        if channels_last:
            view = view.contiguous(memory_format=torch.channels_last)
        logits[name] = model(view).float()
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    device: torch.device,
    amp: str,
    *,
    test_augment: Sequence[str] = (),
    desc: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Every metric of :data:`METRICS` (by key), the number of images (``samples``) and the
    confusion matrix (rows: true class) of a split.

    ``test_augment`` (names of dataloader.augment.TEST_AUGMENTATIONS) also scores each one's
    weighted mean of the logits of views of every image (``flip_top1``, ``translate_top5``:
    the metrics marked ``test_augmented``), beside the plain scores, never instead of them;
    a view two of them share is computed once. ``desc`` shows a progress bar with that
    label. Sums stay on the device until the end, so the loop never waits for the GPU.
    ``should_stop``, asked before every batch, ends the evaluation with
    :class:`EvaluationStopped` when it returns True.
    """
    model.eval()
    weights = {name: TEST_AUGMENTATIONS[name] for name in test_augment}
    views = {view for name in weights for view in weights[name]} - {"plain"}
    sums = torch.zeros(len(METRICS), device=device, dtype=torch.float64)
    augmented_sums = {
        name: torch.zeros(len(TEST_AUGMENTED), device=device, dtype=torch.float64)
        for name in weights
    }
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
            by_view = {"plain": logits, **view_logits(model, images, sorted(views))}
        for name, weight in weights.items():
            mean = sum(share * by_view[view] for view, share in weight.items())
            mean_loss = nn.functional.cross_entropy(mean, labels, reduction="sum")
            augmented_sums[name] += batch_sums(mean, labels, mean_loss, TEST_AUGMENTED)
        loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum")
        sums += batch_sums(logits, labels, loss_sum)
        # Not torch.bincount: on CUDA it reads the indices' min and max back to the host.
        confusion.index_put_((labels * num_classes + logits.argmax(1),), one, accumulate=True)
    for total in (sums, *augmented_sums.values(), confusion):
        all_reduce_sum(total)  # each process evaluated its own shard of the split
    confusion = confusion.view(num_classes, num_classes).cpu()
    samples = int(confusion.sum())
    result = metric_values(sums.tolist(), max(samples, 1))
    for name, total in augmented_sums.items():
        scores = metric_values(total.tolist(), max(samples, 1), TEST_AUGMENTED)
        result.update({f"{name}_{key}": value for key, value in scores.items()})
    return {**result, "samples": samples, "confusion": confusion}


def per_class_accuracy(confusion: Tensor) -> list[float]:
    return (100.0 * confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
