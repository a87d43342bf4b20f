"""A FishNet (or the ResNet baseline) as the backbone of torchvision's detection and
segmentation models.

FishNet's body and head keep features of every resolution with deep semantics (a 96x96
canvas gives the CIFAR-stem body a 96x96 map after the whole tail), which is what region and
pixel heads want. Any registered model works, since each has ``feature_info``:

- :func:`feature_pyramid_backbone` feeds the chosen stages' maps to a feature pyramid
  (torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork`) and has the
  ``out_channels`` that torchvision's detectors ask of a backbone;
- :func:`detection_model` puts Faster R-CNN on it, with one anchor size per level;
- :func:`segmentation_model` puts torchvision's FCN or DeepLabV3 head on the last of the
  highest-resolution maps and upsamples its logits to the input's size.

The stages are chosen by their ``feature_info`` names (:data:`STAGE_GROUPS` names FishNet's
three parts): the model is truncated after the last one chosen, so every parameter left
takes part in the forward pass and is trained.
"""

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.segmentation import FCN, DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from models import Backbone, FeatureListNet

# FishNet's parts by the names of their stages' maps. A pyramid takes one map per resolution,
# and each part has one: at a 96x96 input with the CIFAR stem, the tail's maps are 48, 24
# and 12 pixels wide, the body's 24, 48 and 96, the head's 48, 24 and 12.
STAGE_GROUPS = {
    "tail": ("tail1", "tail2", "tail3"),
    "body": ("body1", "body2", "body3"),
    "head": ("head1", "head2", "head3"),
}
# Anchors as wide as 8 strides of their level, as in the FPN paper (32 pixels at stride 4).
ANCHOR_STRIDES = 8
ANCHOR_ASPECT_RATIOS = (0.5, 1.0, 2.0)
ROI_OUTPUT_SIZE = 7  # the RoI pooling's grid, torchvision's


def stage_indices(model: Backbone, stages: Sequence[str]) -> tuple[int, ...]:
    """The ``feature_info`` indices of the maps named ``stages``; a ValueError names an
    unknown or repeated one and lists the model's."""
    names = [info["name"] for info in model.feature_info]
    unknown = [stage for stage in stages if stage not in names]
    if unknown or not stages:
        raise ValueError(
            f"stages must name maps of the model ({', '.join(names)}); got {list(stages)}"
        )
    if len(set(stages)) != len(stages):
        raise ValueError(f"a stage is named twice in {list(stages)}")
    return tuple(names.index(stage) for stage in stages)


def pyramid_indices(model: Backbone, stages: Sequence[str]) -> tuple[int, ...]:
    """The ``feature_info`` indices of ``stages`` from the finest map to the coarsest, the
    order of a feature pyramid's levels; a ValueError if two share a resolution."""
    indices = sorted(stage_indices(model, stages), key=lambda i: model.feature_info[i]["reduction"])
    reductions = [model.feature_info[i]["reduction"] for i in indices]
    if len(set(reductions)) != len(reductions):
        raise ValueError(
            f"stages {list(stages)} have reductions {reductions}: a feature pyramid takes one "
            "map per resolution"
        )
    return tuple(indices)


class FeaturePyramidBackbone(nn.Module):
    """The chosen maps of a model through a feature pyramid, finest first.

    ``forward`` returns an OrderedDict of ``out_channels`` maps keyed by the stages' names
    (and ``pool`` after them when ``extra_blocks`` is torchvision's ``LastLevelMaxPool``),
    which is what torchvision's detectors and their RoI pooling take. ``feature_info`` lists
    the chosen maps in that order.
    """

    def __init__(
        self,
        model: Backbone,
        stages: Sequence[str],
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
    ) -> None:
        super().__init__()
        self.body = FeatureListNet(model, pyramid_indices(model, stages))
        self.feature_info = self.body.feature_info
        self.fpn = FeaturePyramidNetwork(
            self.feature_info.channels(), out_channels, extra_blocks=extra_blocks
        )
        self.out_channels = out_channels

    @property
    def stages(self) -> list[str]:
        return [info["name"] for info in self.feature_info]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(OrderedDict(zip(self.stages, self.body(x), strict=True)))


def feature_pyramid_backbone(
    model: Backbone,
    stages: Sequence[str] = STAGE_GROUPS["head"],
    out_channels: int = 256,
    extra_blocks: ExtraFPNBlock | None = None,
) -> FeaturePyramidBackbone:
    """``model`` (a registered model, fresh or trained) as a detection backbone: the maps
    ``stages`` (by default FishNet's head, whose maps have seen every resolution) through a
    feature pyramid of ``out_channels`` channels. ``model`` is truncated in place."""
    return FeaturePyramidBackbone(model, stages, out_channels, extra_blocks)


def detection_model(
    backbone: FeaturePyramidBackbone,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    anchor_sizes: Sequence[int] | None = None,
    representation_size: int = 1024,
    **faster_rcnn_options,
) -> FasterRCNN:
    """Faster R-CNN on ``backbone``, for ``num_classes`` labels (background included) and
    square images of ``image_size`` pixels, which it takes as they are (torchvision would
    resize them to 800).

    ``mean`` and ``std`` normalise [0, 1] pixels. Each level gets anchors of one size
    (by default 8 strides of it) in three aspect ratios. The box head is torchvision's two
    fully connected layers of ``representation_size``. Other options go to FasterRCNN.
    """
    strides = backbone.feature_info.reduction()
    if anchor_sizes is None:
        anchor_sizes = [ANCHOR_STRIDES * stride for stride in strides]
    if len(anchor_sizes) != len(strides):
        raise ValueError(f"one anchor size per level: {len(strides)} levels, {anchor_sizes}")
    anchors = AnchorGenerator(
        sizes=tuple((size,) for size in anchor_sizes),
        aspect_ratios=(ANCHOR_ASPECT_RATIOS,) * len(anchor_sizes),
    )
    roi_pool = MultiScaleRoIAlign(backbone.stages, ROI_OUTPUT_SIZE, sampling_ratio=2)
    box_head = TwoMLPHead(backbone.out_channels * ROI_OUTPUT_SIZE**2, representation_size)
    return FasterRCNN(
        backbone,
        min_size=image_size,
        max_size=image_size,
        image_mean=list(mean),
        image_std=list(std),
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        **faster_rcnn_options,
    )


class _OutputMap(nn.Module):
    """One map of a model under the key ``out``, as torchvision's segmentation models take
    their backbone's output."""

    def __init__(self, model: Backbone, index: int) -> None:
        super().__init__()
        self.body = FeatureListNet(model, (index,))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.body(x)[0]}


def _fcn(backbone: nn.Module, channels: int, num_classes: int) -> nn.Module:
    return FCN(backbone, FCNHead(channels, num_classes))


def _deeplabv3(backbone: nn.Module, channels: int, num_classes: int) -> nn.Module:
    return DeepLabV3(backbone, DeepLabHead(channels, num_classes))


SEGMENTATION_HEADS = {"fcn": _fcn, "deeplabv3": _deeplabv3}
"""torchvision's segmentation models by name, each built from (backbone, channels, classes)."""


def finest_stage(model: Backbone) -> str:
    """The last map at the model's highest resolution: FishNet's last body stage, whose map
    has the input's resolution and has been through the whole tail."""
    reductions = model.feature_info.reduction()
    last = max(i for i, r in enumerate(reductions) if r == min(reductions))
    return model.feature_info[last]["name"]


def segmentation_model(
    model: Backbone, num_classes: int, stage: str | None = None, head: str = "fcn"
) -> nn.Module:
    """torchvision's ``head`` (:data:`SEGMENTATION_HEADS`) on the map ``stage`` of ``model``
    (by default :func:`finest_stage`). Its ``forward(x)`` returns ``{"out": logits}``, the
    logits [B, num_classes, H, W] upsampled to the input's size. ``model`` is truncated in
    place."""
    if head not in SEGMENTATION_HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(SEGMENTATION_HEADS)}")
    (index,) = stage_indices(model, [stage or finest_stage(model)])
    channels = model.feature_info[index]["num_chs"]
    return SEGMENTATION_HEADS[head](_OutputMap(model, index), channels, num_classes)
