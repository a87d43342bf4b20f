"""The scores of the downstream models: COCO's box mean average precision for detection,
and mean intersection over union (with pixel accuracy) for segmentation.

Labels are 1..num_classes, 0 the background: a detector never reports the background, and
box_average_precision scores the classes alone; a segmentation's background is a label like
the others, and ConfusionMatrix counts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from utils import holds_integers

# COCO's IoU thresholds, 0.50:0.05:0.95, written out: an IoU equal to a threshold counts as a
# match, and decimals computed by steps of 0.05 would miss some equal ones by a rounding.
COCO_IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
# COCO samples the precision-recall curve at recalls 0, 0.01, ..., 1 (101 points).
RECALL_POINTS = torch.arange(101, dtype=torch.float64) / 100


def box_average_precision(
    detections: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
) -> dict[str, float]:
    """COCO's box mean average precision of ``detections`` against ``targets``, one dict per
    image each: detections {"boxes": float [d, 4] xyxy, "scores": [d], "labels": int64 [d]},
    targets {"boxes": float [k, 4] xyxy, "labels": int64 [k]}, labels in 1..num_classes.

    Returns {"map50": the mean over classes of the AP at IoU 0.5, "map": the mean over classes
    and ``iou_thresholds`` (which must include 0.5)}, floats in [0, 1].

    COCO's rules, per class and IoU threshold: the detections of all images in order of score
    (highest first; ties in the order given) are each matched to the ground-truth box of
    their image and class that no earlier detection matched and that overlaps them most, with
    IoU >= the threshold; a detection matched is a true positive, any other a false positive.
    The precision, made non-increasing in recall (at each recall the best precision at that
    recall or beyond), is read at recalls 0, 0.01, ..., 1 (0 beyond the highest recall
    reached), and their mean is the AP. A class without ground truth in any image is left out
    of the mean; if none has any, ValueError. Unlike COCO, every detection is kept (COCO
    keeps an image's 100 best, as many as torchvision's detectors report by default), and no
    ground truth is "crowd" or left out for its area.

    Tensors on any device are copied to the CPU: the matching is a loop over detections.
    """
    if len(detections) != len(targets):
        raise ValueError(
            f"detections and targets must be one per image alike; got {len(detections)} "
            f"and {len(targets)}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1; got {num_classes}")
    thresholds = torch.tensor([float(t) for t in iou_thresholds], dtype=torch.float64)
    if len(thresholds) == 0 or not bool(((thresholds > 0) & (thresholds <= 1)).all()):
        raise ValueError(f"iou_thresholds must be in (0, 1]; got {tuple(iou_thresholds)}")
    if 0.5 not in thresholds.tolist():
        raise ValueError(f"iou_thresholds must include 0.5 (for map50); got {iou_thresholds}")

    # Every detection of every image, in order of score within its image: its score, label
    # and whether it is a true positive at each threshold (hits [thresholds, detections]).
    all_scores, all_labels, all_hits = [], [], []
    # truths_per_label[c]: the ground-truth boxes of label c in all images (0 never counted).
    truths_per_label = torch.zeros(num_classes + 1, dtype=torch.int64)
    for image, (detected, target) in enumerate(zip(detections, targets, strict=True)):
        boxes = _boxes(detected, "detections", image)
        scores = _tensor(detected, "scores", "detections", image).double().reshape(-1)
        labels = _labels(detected, "detections", image, num_classes)
        truth_boxes = _boxes(target, "targets", image)
        truth_labels = _labels(target, "targets", image, num_classes)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"detections[{image}]: boxes, scores and labels must be as many; got "
                f"{len(boxes)}, {len(scores)} and {len(labels)}"
            )
        if len(truth_boxes) != len(truth_labels):
            raise ValueError(
                f"targets[{image}]: boxes and labels must be as many; got {len(truth_boxes)} "
                f"and {len(truth_labels)}"
            )
        order = torch.sort(scores, descending=True, stable=True).indices
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        all_scores.append(scores)
        all_labels.append(labels)
        all_hits.append(_match(boxes, labels, truth_boxes, truth_labels, thresholds))
        truths_per_label += torch.bincount(truth_labels, minlength=num_classes + 1)

    if int(truths_per_label.sum()) == 0:
        raise ValueError("no class has ground truth in any image: average precision is undefined")
    scores, labels = torch.cat(all_scores), torch.cat(all_labels)
    hits = torch.cat(all_hits, dim=1)
    average_precisions = []  # [thresholds] per class with ground truth
    for label in range(1, num_classes + 1):
        num_truths = int(truths_per_label[label])
        if num_truths == 0:
            continue
        chosen = labels == label
        # A stable sort of the detections in image order, each image's already in order of
        # score: ties go by image, then by the order given, as COCO's merge sort does.
        order = torch.sort(scores[chosen], descending=True, stable=True).indices
        average_precisions.append(_average_precision(hits[:, chosen][:, order], num_truths))
    per_class = torch.stack(average_precisions)  # [classes, thresholds]
    at_half = thresholds.tolist().index(0.5)
    return {"map50": float(per_class[:, at_half].mean()), "map": float(per_class.mean())}


def _match(
    boxes: Tensor,
    labels: Tensor,
    truth_boxes: Tensor,
    truth_labels: Tensor,
    thresholds: Tensor,
) -> Tensor:
    """Whether each of an image's detections (in order of score) is a true positive at each
    threshold, bool [thresholds, detections]: greedily matched, the best first, to the
    unmatched ground truth of its label that it overlaps most with IoU >= the threshold.

    Detections of different labels never compete for a ground truth, so one pass over all of
    them matches each label's alone."""
    hits = torch.zeros(len(thresholds), len(boxes), dtype=torch.bool)
    if len(boxes) == 0 or len(truth_boxes) == 0:
        return hits
    # IoU in float64, as COCO computes it, so that a ratio equal to a threshold is equal.
    iou = box_iou(boxes, truth_boxes)
    iou = torch.where(labels[:, None] == truth_labels[None, :], iou, 0.0)
    matched = torch.zeros(len(thresholds), len(truth_boxes), dtype=torch.bool)
    everywhere = torch.arange(len(thresholds))
    # A detection below every threshold with every ground truth is a false positive
    # throughout: only the others go through the loop.
    for detection in (iou.max(dim=1).values >= thresholds.min()).nonzero()[:, 0].tolist():
        overlap = iou[detection]
        candidates = (overlap[None, :] >= thresholds[:, None]) & ~matched
        best = torch.where(candidates, overlap[None, :], -1.0).max(dim=1)
        found = best.values >= 0
        matched[everywhere[found], best.indices[found]] = True
        hits[:, detection] = found
    return hits


def _average_precision(hits: Tensor, num_truths: int) -> Tensor:
    """COCO's 101-point AP at each threshold, float64 [thresholds], of a class's detections
    in order of score (hits: bool [thresholds, detections], true positives)."""
    if hits.shape[1] == 0:
        return torch.zeros(hits.shape[0], dtype=torch.float64)
    true_positives = hits.cumsum(dim=1, dtype=torch.float64)
    false_positives = (~hits).cumsum(dim=1, dtype=torch.float64)
    recall = true_positives / num_truths
    precision = true_positives / (true_positives + false_positives)
    # At each recall, the best precision at that recall or beyond (a running max from the right).
    precision = precision.flip(1).cummax(dim=1).values.flip(1)
    points = RECALL_POINTS.expand(len(hits), -1).contiguous()
    # The first detection reaching each recall point; one past the last where none does,
    # which reads the 0 appended.
    reached = torch.searchsorted(recall.contiguous(), points, side="left")
    precision = torch.cat([precision, torch.zeros(len(hits), 1, dtype=torch.float64)], dim=1)
    return precision.gather(1, reached).mean(dim=1)


def _tensor(entry: Mapping[str, Tensor], key: str, what: str, image: int) -> Tensor:
    if key not in entry:
        raise ValueError(f"{what}[{image}] has no {key!r}")
    return torch.as_tensor(entry[key]).detach().cpu()


def _boxes(entry: Mapping[str, Tensor], what: str, image: int) -> Tensor:
    boxes = _tensor(entry, "boxes", what, image).double()
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}[{image}]['boxes'] must be [n, 4]; got {tuple(boxes.shape)}")
    return boxes


def _labels(entry: Mapping[str, Tensor], what: str, image: int, num_classes: int) -> Tensor:
    labels = _tensor(entry, "labels", what, image).reshape(-1)
    if not holds_integers(labels):
        raise ValueError(f"{what}[{image}]['labels'] must be integers; got {labels.dtype}")
    if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(
            f"{what}[{image}]['labels'] must be in 1..{num_classes} (0 is the background); "
            f"got {labels.tolist()}"
        )
    return labels.long()


class ConfusionMatrix:
    """Pixel counts of a segmentation, accumulated over batches: ``matrix[t, p]`` (int64
    [num_labels, num_labels]) counts the pixels of target label t predicted as label p.
    The matrix stays on ``device``; the batches may be on any device."""

    def __init__(self, num_labels: int, device: torch.device | str = "cpu") -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1; got {num_labels}")
        self.num_labels = num_labels
        self.matrix = torch.zeros(num_labels, num_labels, dtype=torch.int64, device=device)

    def update(self, predicted: Tensor, target: Tensor) -> None:
        """Counts the pixels of predicted and target labels, integer tensors of one shape
        (e.g. [B, H, W]) with values in 0..num_labels - 1 (else ValueError)."""
        if predicted.shape != target.shape:
            raise ValueError(
                f"predicted and target must have one shape; got {tuple(predicted.shape)} "
                f"and {tuple(target.shape)}"
            )
        for name, labels in (("predicted", predicted), ("target", target)):
            if not holds_integers(labels):
                raise ValueError(f"{name} must hold integer labels; got {labels.dtype}")
            if labels.numel() and bool(((labels < 0) | (labels >= self.num_labels)).any()):
                raise ValueError(
                    f"{name} must be labels in 0..{self.num_labels - 1}; got values "
                    f"{int(labels.min())}..{int(labels.max())}"
                )
        n = self.num_labels
        pairs = target.reshape(-1).long() * n + predicted.reshape(-1).long()
        counts = torch.bincount(pairs, minlength=n * n).reshape(n, n)
        self.matrix += counts.to(self.matrix.device)

    def iou(self) -> Tensor:
        """Intersection over union per label, float64 [num_labels]: the pixels both target
        and predicted as the label, over those either; NaN for a label never seen in either."""
        matrix = self.matrix.double()
        both = matrix.diagonal()
        either = matrix.sum(dim=0) + matrix.sum(dim=1) - both
        return torch.where(either > 0, both / either.clamp(min=1), torch.nan)

    def mean_iou(self) -> float:
        """The mean of iou() over the labels seen in the target or the prediction."""
        self._check_counted()
        return float(self.iou().nanmean())

    def pixel_accuracy(self) -> float:
        """The share of pixels whose predicted label is the target's."""
        self._check_counted()
        return float(self.matrix.diagonal().sum().double() / self.matrix.sum().double())

    def _check_counted(self) -> None:
        if int(self.matrix.sum()) == 0:
            raise ValueError("no pixels counted yet: call update first")
