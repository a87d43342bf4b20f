"""The two canvas tasks, detection and segmentation, as a table: each builds its model on a
backbone, gives the loss of a batch of canvases, predicts, and scores held-out canvases.

tools/canvas.py trains and evaluates either by name (:data:`TASKS`).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dataloader.augment import normalize
from downstream.backbones import detection_model, feature_pyramid_backbone, segmentation_model
from downstream.canvas import Canvas, collate_detection, collate_segmentation
from downstream.metrics import ConfusionMatrix, box_average_precision
from models import Backbone

# Detections kept for scoring: every one above torchvision's 0.05, as COCO scores them.
MAX_DETECTIONS = 100


@dataclass(frozen=True)
class Normalization:
    """The mean and std of [0, 1] pixels that a backbone's inputs are normalised with."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


class NormalizedInput(nn.Module):
    """``model`` on [0, 1] pixels normalised first, as torchvision's detectors take them."""

    def __init__(self, model: nn.Module, normalization: Normalization) -> None:
        super().__init__()
        self.model = model
        self.normalization = normalization

    def forward(self, images: Tensor) -> object:
        return self.model(normalize(images, self.normalization.mean, self.normalization.std))


class Detection:
    """Faster R-CNN with a feature pyramid on the backbone's ``stages``; scored by box mAP."""

    name = "detection"
    score_names = ("map50", "map")

    def build(
        self,
        model: Backbone,
        num_labels: int,
        image_size: int,
        normalization: Normalization,
        *,
        stages: Sequence[str],
        fpn_channels: int,
        representation_size: int,
        **_: object,
    ) -> nn.Module:
        backbone = feature_pyramid_backbone(model, stages, out_channels=fpn_channels)
        # A canvas holds 1 to 3 objects: torchvision's 512 sampled proposals per image (and
        # 256 anchors) would be nearly all background, and cost most of a step on a CPU.
        return detection_model(
            backbone,
            num_labels,
            image_size,
            normalization.mean,
            normalization.std,
            representation_size=representation_size,
            rpn_batch_size_per_image=128,
            box_batch_size_per_image=128,
            box_detections_per_img=MAX_DETECTIONS,
        )

    def loss(self, model: nn.Module, canvases: Sequence[Canvas], device: torch.device) -> Tensor:
        images, targets = collate_detection(canvases)
        images = [image.to(device) for image in images]
        targets = [{key: value.to(device) for key, value in t.items()} for t in targets]
        return sum(model(images, targets).values())

    @torch.no_grad()
    def predict(
        self, model: nn.Module, canvases: Sequence[Canvas], device: torch.device
    ) -> list[dict[str, Tensor]]:
        """Per canvas: ``boxes``, ``scores`` and ``labels`` on the CPU."""
        images, _ = collate_detection(canvases)
        detections = model([image.to(device) for image in images])
        return [{key: value.cpu() for key, value in d.items()} for d in detections]

    def scores(
        self, predictions: list, canvases: Sequence[Canvas], num_labels: int
    ) -> dict[str, float]:
        targets = [{"boxes": c.boxes, "labels": c.labels} for c in canvases]
        return box_average_precision(predictions, targets, num_labels - 1)


class Segmentation:
    """torchvision's FCN or DeepLabV3 head on the backbone's ``stage``; scored by mean IoU."""

    name = "segmentation"
    score_names = ("mean_iou", "pixel_accuracy")

    def build(
        self,
        model: Backbone,
        num_labels: int,
        image_size: int,
        normalization: Normalization,
        *,
        stage: str | None,
        head: str,
        **_: object,
    ) -> nn.Module:
        segmenter = segmentation_model(model, num_labels, stage=stage, head=head)
        return NormalizedInput(segmenter, normalization)

    def _logits(self, model: nn.Module, images: Tensor, device: torch.device) -> Tensor:
        return model(images.to(device))["out"]

    def loss(self, model: nn.Module, canvases: Sequence[Canvas], device: torch.device) -> Tensor:
        images, masks = collate_segmentation(canvases)
        return F.cross_entropy(self._logits(model, images, device), masks.to(device))

    @torch.no_grad()
    def predict(
        self, model: nn.Module, canvases: Sequence[Canvas], device: torch.device
    ) -> list[Tensor]:
        """Per canvas: the label of every pixel, int64 [H, W] on the CPU."""
        images, _ = collate_segmentation(canvases)
        return list(self._logits(model, images, device).argmax(1).cpu())

    def scores(
        self, predictions: list, canvases: Sequence[Canvas], num_labels: int
    ) -> dict[str, float]:
        matrix = ConfusionMatrix(num_labels)
        for predicted, canvas in zip(predictions, canvases, strict=True):
            matrix.update(predicted, canvas.mask)
        return {"mean_iou": matrix.mean_iou(), "pixel_accuracy": matrix.pixel_accuracy()}


TASKS = {task.name: task for task in (Detection(), Segmentation())}
"""The canvas tasks by name."""
