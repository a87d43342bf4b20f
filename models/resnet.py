"""Pre-activation bottleneck ResNet (He et al., ECCV 2016), the baseline FishNet is compared with.

It is built from the same :class:`~models.blocks.Bottleneck` unit and stem as FishNet, so
the two differ only in how stages are wired: a ResNet down-samples with strided
convolutions and never returns to a higher resolution.
"""

from collections import OrderedDict
from typing import ClassVar

from torch import Tensor, nn

from .blocks import Bottleneck, RenamedLayers, init_weights, make_stem
from .features import Backbone, FeatureInfo, as_backbone, feature_entry
from .fishnet import scale_channels
from .registry import register_model

PLANES = (64, 256, 512, 1024, 2048)


class PreActResNet(RenamedLayers, Backbone):
    """``forward_features`` returns the map of every stage, keyed ``stem``, ``stage1``..;
    ``feature_info`` and ``init`` are as in :class:`~models.fishnet.FishNet`."""

    LEGACY_NAMES: ClassVar[dict[str, str]] = {
        "classifier.0.": "classifier.bn.",
        "classifier.4.": "classifier.fc.",
    }
    """The classifier's layers in checkpoints written when they had positions for names."""

    def __init__(
        self,
        units: tuple[int, ...],
        planes: tuple[int, ...] = PLANES,
        num_classes: int = 10,
        stem: str = "cifar",
        *,
        init: str = "authors",
    ) -> None:
        super().__init__()
        if len(planes) != len(units) + 1:
            raise ValueError("planes must list the stem and every stage")
        self.stem = make_stem(stem, planes[0])
        self.stages = nn.ModuleList()
        reduction = 4 if stem == "imagenet" else 1
        self.feature_info = FeatureInfo([feature_entry("stem", planes[0], reduction, "stem")])
        for i, num_units in enumerate(units):
            stride = 1 if i == 0 else 2
            in_channels, out_channels = planes[i], planes[i + 1]
            self.stages.append(
                nn.Sequential(
                    Bottleneck(in_channels, out_channels, stride=stride),
                    *(Bottleneck(out_channels, out_channels) for _ in range(num_units - 1)),
                )
            )
            reduction *= stride
            self.feature_info.append(
                feature_entry(f"stage{i + 1}", out_channels, reduction, f"stages.{i}")
            )
        self.classifier = nn.Sequential(
            OrderedDict(
                bn=nn.BatchNorm2d(planes[-1]),
                relu=nn.ReLU(inplace=True),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Linear(planes[-1], num_classes),
            )
        )
        init_weights(self, init)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return {info["name"]: feat for info, feat in zip(self.feature_info, feats, strict=True)}

    def get_classifier(self) -> nn.Module:
        return self.classifier.fc

    def truncate(self, num_features: int) -> None:
        del self.stages[num_features - 1 :]
        super().truncate(num_features)


def _resnet(
    units: tuple[int, ...],
    num_classes: int,
    stem: str,
    width: float,
    init: str = "authors",
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
) -> nn.Module:
    planes = tuple(scale_channels(p, width) for p in PLANES)
    model = PreActResNet(units, planes, num_classes=num_classes, stem=stem, init=init)
    return as_backbone(model, features_only, out_indices)


# The factories take init, and timm's features_only and out_indices, which make them return
# a FeatureListNet. timm's resnet50 is another (post-activation) network.
@register_model(timm_name="preact_resnet50")
def resnet50(num_classes: int = 10, stem: str = "cifar", width: float = 1.0, **kwargs) -> nn.Module:
    """Pre-activation ResNet-50, the baseline; see models.resnet."""
    return _resnet((3, 4, 6, 3), num_classes, stem, width, **kwargs)


@register_model(timm_name="preact_resnet101")
def resnet101(
    num_classes: int = 10, stem: str = "cifar", width: float = 1.0, **kwargs
) -> nn.Module:
    """Pre-activation ResNet-101, the baseline; see models.resnet."""
    return _resnet((3, 4, 23, 3), num_classes, stem, width, **kwargs)
