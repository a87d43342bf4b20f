"""FishNet: a Tail-Body-Head backbone that keeps features of every resolution to the end.

Sun, Pang, Shi, Yi, Ouyang, "FishNet: A Versatile Backbone for Image, Region, and Pixel
Level Prediction", NeurIPS 2018. With ``width=1`` the models below have exactly the
parameter counts of the authors' release (16,628,904 for FishNet-99 with the ImageNet
stem and 1000 classes).

Feature indices follow the paper's code: ``feat[0]`` is the stem output and
``feat[i + 1]`` the output of stage ``i``; stages run tail, bridge, body, head.

The ablation switches (:data:`SWITCHES`) replace one design choice of the paper at a
time; their defaults build the published networks.
"""

from dataclasses import dataclass

from torch import Tensor, nn

from .blocks import (
    BODY_SHORTCUTS,
    BRIDGES,
    DOWNSAMPLING,
    UPSAMPLING,
    ClassifierHead,
    DownRefine,
    TailStage,
    UpRefine,
    check_choice,
    init_weights,
    make_bridge,
    make_stem,
)
from .features import Backbone, FeatureInfo, as_backbone, feature_entry
from .registry import register_model


@dataclass(frozen=True)
class FishConfig:
    planes: tuple[int, ...]
    """Output channels of the stem, then of every stage's trunk (tail, bridge, body, head)."""
    units: tuple[int, ...]
    """Residual units of every stage's trunk."""
    transfer_units: tuple[int, ...]
    """Residual units of the transfer branch of every body and head stage."""
    transfer_sources: tuple[int, ...]
    """For every body and head stage, the feature index its transfer branch refines."""

    @property
    def num_tail(self) -> int:
        return len(self.units) - 1 - len(self.transfer_units)


PLANES = (64, 128, 256, 512, 512, 512, 384, 256, 320, 832, 1600)
TRANSFER_SOURCES = (2, 1, 0, 6, 5, 4)
CONFIGS = {
    "fishnet99": FishConfig(
        PLANES,
        units=(2, 2, 6, 2, 1, 1, 1, 1, 2, 2),
        transfer_units=(1, 1, 1, 1, 1, 4),
        transfer_sources=TRANSFER_SOURCES,
    ),
    "fishnet150": FishConfig(
        PLANES,
        units=(2, 4, 8, 4, 2, 2, 2, 2, 2, 4),
        transfer_units=(2, 2, 2, 2, 2, 4),
        transfer_sources=TRANSFER_SOURCES,
    ),
    "fishnet201": FishConfig(
        PLANES,
        units=(3, 4, 12, 4, 2, 2, 2, 2, 3, 10),
        transfer_units=(2, 2, 2, 2, 2, 9),
        transfer_sources=TRANSFER_SOURCES,
    ),
}


SWITCHES = {
    "downsample": DOWNSAMPLING,
    "upsample": UPSAMPLING,
    "body_shortcut": BODY_SHORTCUTS,
    "body_dilation": (True, False),
    "transfer": (True, False),
    "bridge": BRIDGES,
}
"""FishNet's ablation switches and their values; the first value is the paper's, the default."""


class FishNet(Backbone):
    """FishNet assembled from a :class:`FishConfig`.

    ``forward_features`` returns the map of every stage, keyed ``stem``, ``tail1``..,
    ``bridge``, ``body1``.., ``head1``..; ``feature_info`` gives each one's channels
    and its down-sampling factor relative to the input, so the network serves as a
    backbone for detection or segmentation (timm's keys ``num_chs``, ``reduction``,
    ``module``; the factories' ``features_only=True`` gives timm's feature-list model).
    ``forward_head`` maps those features to logits.

    ``init`` is the initialisation, one of :data:`~models.blocks.INITS`: ``"authors"``
    (their release's) or ``"identity"`` (every residual unit starts as its shortcut, the
    classifier near zero), see :func:`~models.blocks.init_weights`.

    The keyword-only ablation switches (:data:`SWITCHES`) default to the paper's choices:

    - ``downsample``: 2x down-sampling of the tail and head stages, ``"maxpool"`` (2x2),
      ``"avgpool"`` (2x2) or ``"conv"`` (strided BN-ReLU-conv2x2), see
      :func:`~models.blocks.make_downsample`; the ImageNet stem's max-pool is not switched;
    - ``upsample``: 2x up-sampling of the body stages, ``"nearest"``, ``"bilinear"`` or
      ``"deconv"`` (BN-ReLU-ConvTranspose2d, kernel 2, stride 2), see
      :func:`~models.blocks.make_upsample`;
    - ``body_shortcut``: shortcut of each body stage's first unit, ``"reduce"`` (the
      channel reduction r(x)) or ``"conv"`` (a BN-ReLU-conv1x1 projection where the
      channels change, the identity where they do not);
    - ``body_dilation``: dilation 2**j in the units of body stage j, or 1 throughout;
    - ``transfer``: transfer blocks on the concatenated features, or none (identity);
    - ``bridge``: ``"se"`` (the SE-gated bridge), ``"plain"`` (its residual units on the
      tail feature, C -> C, without score and gate) or ``"none"`` (identity), see
      :func:`~models.blocks.make_bridge`.

    No switch changes a feature's channels or resolution, so ``feature_info`` is the same.
    """

    def __init__(
        self,
        config: FishConfig,
        num_classes: int = 10,
        stem: str = "cifar",
        *,
        downsample: str = "maxpool",
        upsample: str = "nearest",
        body_shortcut: str = "reduce",
        body_dilation: bool = True,
        transfer: bool = True,
        bridge: str = "se",
        init: str = "authors",
    ) -> None:
        super().__init__()
        self.switches = {
            "downsample": downsample,
            "upsample": upsample,
            "body_shortcut": body_shortcut,
            "body_dilation": body_dilation,
            "transfer": transfer,
            "bridge": bridge,
        }
        for name, value in self.switches.items():
            check_choice(name, value, SWITCHES[name])
        planes, units = config.planes, config.units
        num_tail = config.num_tail
        # Each body stage doubles the resolution a tail stage halved, back to the stem's.
        num_body = num_tail
        num_head = len(config.transfer_units) - num_body
        if len(planes) != len(units) + 1 or num_tail < 1 or num_head < 1:
            raise ValueError(f"inconsistent FishNet config: {config}")

        self.transfer_sources = config.transfer_sources
        self.stem = make_stem(stem, planes[0])
        channels = [planes[0]]
        reduction = [4 if stem == "imagenet" else 1]
        names = ["stem"]
        modules = ["stem"]

        self.tail = nn.ModuleList()
        for i in range(num_tail):
            self.tail.append(TailStage(channels[-1], planes[i + 1], units[i], downsample))
            channels.append(planes[i + 1])
            reduction.append(reduction[-1] * 2)
            names.append(f"tail{i + 1}")
            modules.append(f"tail.{i}")

        if planes[num_tail + 1] != channels[-1]:
            raise ValueError("the bridge must keep the channels of the last tail stage")
        self.bridge = make_bridge(bridge, channels[-1], units[num_tail])
        channels.append(channels[-1])
        reduction.append(reduction[-1])
        names.append("bridge")
        modules.append("bridge")

        self.body = nn.ModuleList()
        self.head = nn.ModuleList()
        for j, (source, num_transfer) in enumerate(
            zip(config.transfer_sources, config.transfer_units, strict=True)
        ):
            stage = num_tail + 1 + j
            in_channels, out_channels = channels[-1], planes[stage + 1]
            transfer_units = num_transfer if transfer else 0
            if j < num_body:
                block = UpRefine(
                    in_channels,
                    out_channels,
                    units[stage],
                    channels[source],
                    transfer_units,
                    dilation=2**j if body_dilation else 1,
                    upsample=upsample,
                    shortcut=body_shortcut,
                )
                self.body.append(block)
                reduction.append(reduction[-1] // 2)
                names.append(f"body{j + 1}")
                modules.append(f"body.{j}")
            else:
                block = DownRefine(
                    in_channels,
                    out_channels,
                    units[stage],
                    channels[source],
                    transfer_units,
                    downsample=downsample,
                )
                self.head.append(block)
                reduction.append(reduction[-1] * 2)
                names.append(f"head{j - num_body + 1}")
                modules.append(f"head.{j - num_body}")
            if reduction[source] != reduction[-1]:
                raise ValueError(f"stage {stage} concatenates a feature of another resolution")
            channels.append(out_channels + channels[source])

        self.classifier = ClassifierHead(channels[-1], num_classes)
        self.feature_info = FeatureInfo(
            feature_entry(*entry) for entry in zip(names, channels, reduction, modules, strict=True)
        )
        init_weights(self, init)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        feats = [self.stem(x)]
        for stage in self.tail:
            feats.append(stage(feats[-1]))
        if self.bridge is not None:
            feats.append(self.bridge(feats[-1]))
        # Not strict: a truncated backbone (see truncate) has fewer body and head stages.
        for stage, source in zip([*self.body, *self.head], self.transfer_sources, strict=False):
            feats.append(stage(feats[-1], feats[source]))
        return {info["name"]: feat for info, feat in zip(self.feature_info, feats, strict=True)}

    def get_classifier(self) -> nn.Module:
        return self.classifier.fc

    def truncate(self, num_features: int) -> None:
        first_body = len(self.tail) + 2  # feature index of the first body stage
        first_head = first_body + len(self.body)
        del self.tail[num_features - 1 :]
        if num_features < first_body:
            self.bridge = None
        del self.body[max(num_features - first_body, 0) :]
        del self.head[max(num_features - first_head, 0) :]
        super().truncate(num_features)


def check_width(width: float) -> None:
    """Multiples of 1/16 keep every channel count whole and valid (bottleneck, r(x), SE)."""
    if not width > 0 or (width * 16) % 1:
        raise ValueError(f"width must be a positive multiple of 1/16 (0.0625), got {width}")


def scale_channels(channels: int, width: float) -> int:
    check_width(width)
    return round(channels * width)


def _fishnet(
    name: str,
    num_classes: int,
    stem: str,
    width: float,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **kwargs,
) -> nn.Module:
    config = CONFIGS[name]
    if width != 1:
        config = FishConfig(
            tuple(scale_channels(p, width) for p in config.planes),
            config.units,
            config.transfer_units,
            config.transfer_sources,
        )
    model = FishNet(config, num_classes=num_classes, stem=stem, **kwargs)
    return as_backbone(model, features_only, out_indices)


# The factories take FishNet's keyword arguments: the ablation switches (SWITCHES; default:
# the paper's), e.g. fishnet99(bridge="none"), and init; and timm's features_only and
# out_indices, which make them return a FeatureListNet.
@register_model()
def fishnet99(
    num_classes: int = 10, stem: str = "cifar", width: float = 1.0, **kwargs
) -> nn.Module:
    """FishNet-99 (16.6 M parameters with the ImageNet stem); see models.fishnet."""
    return _fishnet("fishnet99", num_classes, stem, width, **kwargs)


@register_model()
def fishnet150(
    num_classes: int = 10, stem: str = "cifar", width: float = 1.0, **kwargs
) -> nn.Module:
    """FishNet-150 (25.0 M parameters with the ImageNet stem); see models.fishnet."""
    return _fishnet("fishnet150", num_classes, stem, width, **kwargs)


@register_model()
def fishnet201(
    num_classes: int = 10, stem: str = "cifar", width: float = 1.0, **kwargs
) -> nn.Module:
    """FishNet-201 (44.6 M parameters with the ImageNet stem); see models.fishnet."""
    return _fishnet("fishnet201", num_classes, stem, width, **kwargs)
