"""The building blocks of FishNet (Sun et al., NeurIPS 2018, arXiv 1901.03495).

Every block is pre-activation (BN-ReLU before each convolution) and no block
applies an activation after its residual sum, so identity paths carry gradients
from the classifier to the stem untouched. That is the paper's point: no
"isolated" convolution sits on the path between resolutions.

For ablations, the sampling, the body shortcut and the bridge have alternatives
(the tuples below, the paper's choice first), each built by one small factory.
"""

from typing import ClassVar

import torch
from torch import Tensor, nn

DOWNSAMPLING = ("maxpool", "avgpool", "conv")
"""2x down-sampling of the tail and head stages (:func:`make_downsample`)."""
UPSAMPLING = ("nearest", "bilinear", "deconv")
"""2x up-sampling of the body stages (:func:`make_upsample`)."""
BODY_SHORTCUTS = ("reduce", "conv")
"""Shortcut of the first unit of a body stage: r(x) or a 1x1 projection (:class:`UpRefine`)."""
BRIDGES = ("se", "plain", "none")
"""The module between tail and body (:func:`make_bridge`)."""


def check_choice(what: str, value: object, choices: tuple) -> None:
    if value not in choices:
        names = ", ".join(map(repr, choices))
        raise ValueError(f"{what} must be one of {names}; got {value!r}")


def bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        *bn_relu(out_channels),
    )


STEM_INPUT_SIZES = {"cifar": 32, "imagenet": 224}
"""The side of the square images each stem (:func:`make_stem`) is made for: CIFAR's 32x32,
and the 224x224 crops on which the ImageNet models were trained and evaluated."""


def make_stem(kind: str, out_channels: int) -> nn.Sequential:
    """Three 3x3 convolutions; the ImageNet stem also reduces the resolution 4x.

    The CIFAR stem keeps 32x32 so that the tail still has room to halve it three times.
    """
    if kind not in STEM_INPUT_SIZES:
        raise ValueError(f"stem must be {' or '.join(map(repr, STEM_INPUT_SIZES))}, got {kind!r}")
    imagenet = kind == "imagenet"
    mid_channels = out_channels // 2
    layers = [
        conv_bn_relu(3, mid_channels, stride=2 if imagenet else 1),
        conv_bn_relu(mid_channels, mid_channels),
        conv_bn_relu(mid_channels, out_channels),
    ]
    if imagenet:
        layers.append(nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(*layers)


class ChannelReduction(nn.Module):
    """r(x) of the paper's Eq. 8: sums each group of k adjacent channels, C -> C / k.

    It has no parameters, so the up-sampling path stays free of isolated
    convolutions while still matching the residual branch's channel count.
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (x.shape[1] // self.k, self.k)).sum(2)

    def extra_repr(self) -> str:
        return f"k={self.k}"


def rename_keys(state_dict: dict, prefix: str, renames: dict[str, str]) -> None:
    """Renames in place the keys of ``state_dict`` that start with ``prefix`` + an old name
    of ``renames`` (old -> new, each ending in a dot) to the new name."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        for old, new in renames.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)
                break


class RenamedLayers:
    """A module whose layers were once named otherwise: ``LEGACY_NAMES`` maps the old
    names to today's, and ``load_state_dict`` renames a checkpoint's keys accordingly."""

    LEGACY_NAMES: ClassVar[dict[str, str]] = {}

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args) -> None:
        rename_keys(state_dict, prefix, self.LEGACY_NAMES)
        super()._load_from_state_dict(state_dict, prefix, *args)


def upgrade_state_dict(model: nn.Module, state_dict: dict) -> dict:
    """``state_dict`` with the keys of checkpoints written before ``model``'s layers had
    today's names renamed, as ``load_state_dict`` renames them: for checks that compare a
    checkpoint's keys with a model's before loading it."""
    upgraded = dict(state_dict)
    for name, module in model.named_modules():
        if isinstance(module, RenamedLayers):
            rename_keys(upgraded, f"{name}." if name else "", module.LEGACY_NAMES)
    return upgraded


class Bottleneck(RenamedLayers, nn.Module):
    """Pre-activation bottleneck residual unit: BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1.

    The shortcut is, in this order of precedence:
      1. ``reduce_channels=True`` (the first unit of a body stage, "UP mode"): r(x) with
         k = in_channels / out_channels, the identity when k = 1;
      2. in_channels != out_channels or stride > 1: BN-ReLU-conv1x1;
      3. otherwise the identity.
    """

    LEGACY_NAMES: ClassVar[dict[str, str]] = {
        "residual.0.": "bn1.",
        "residual.2.": "conv1.",
        "residual.3.": "bn2.",
        "residual.5.": "conv2.",
        "residual.6.": "bn3.",
        "residual.8.": "conv3.",
    }
    """The branch's layers in checkpoints written when it was one ``nn.Sequential``
    (``residual``, its ReLUs counted too) -> their names; such checkpoints load as they are."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        reduce_channels: bool = False,
    ) -> None:
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"bottleneck output channels must divide by 4, got {out_channels}")
        mid_channels = out_channels // 4
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(
            mid_channels,
            mid_channels,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=False,
        )
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        if reduce_channels:
            if in_channels % out_channels or stride != 1:
                raise ValueError(
                    f"channel reduction needs in_channels ({in_channels}) to be a multiple of "
                    f"out_channels ({out_channels}) and stride 1"
                )
            k = in_channels // out_channels
            self.shortcut = ChannelReduction(k) if k > 1 else nn.Identity()
        elif in_channels != out_channels or stride > 1:
            self.shortcut = nn.Sequential(
                *bn_relu(in_channels),
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + self.shortcut(x)

    def zero_init_last(self) -> None:
        """Zeroes the branch's last convolution: the unit then outputs its shortcut."""
        nn.init.zeros_(self.conv3.weight)


def residual_units(
    in_channels: int,
    out_channels: int,
    num_units: int,
    dilation: int = 1,
    reduce_channels: bool = False,
) -> nn.Sequential:
    """``num_units`` bottlenecks: the first maps in -> out, the rest keep ``out_channels``."""
    first = Bottleneck(
        in_channels, out_channels, dilation=dilation, reduce_channels=reduce_channels
    )
    rest = (Bottleneck(out_channels, out_channels, dilation=dilation) for _ in range(num_units - 1))
    return nn.Sequential(first, *rest)


def transfer_block(channels: int, num_units: int) -> nn.Module:
    """Refines a feature of another part of the fish before it is concatenated (channels kept).

    With ``num_units=0`` (the ablation without transfer blocks) the feature is concatenated
    as it is: an ``nn.Identity``.
    """
    if num_units == 0:
        return nn.Identity()
    return nn.Sequential(*(Bottleneck(channels, channels) for _ in range(num_units)))


def make_downsample(kind: str, channels: int) -> nn.Module:
    """2x down-sampling that keeps the channels.

    - ``maxpool`` (the paper's): 2x2 max-pool, stride 2, no parameters;
    - ``avgpool``: 2x2 average pool, stride 2, no parameters;
    - ``conv``: BN-ReLU-conv2x2 with stride 2 (no bias), a learned down-sampling over the
      same 2x2 window: the strided "isolated" convolution that the paper keeps off the
      path between resolutions. It adds ``4 * channels**2 + 2 * channels`` parameters.
    """
    check_choice("downsample", kind, DOWNSAMPLING)
    if kind == "maxpool":
        return nn.MaxPool2d(2, stride=2)
    if kind == "avgpool":
        return nn.AvgPool2d(2, stride=2)
    return nn.Sequential(*bn_relu(channels), nn.Conv2d(channels, channels, 2, stride=2, bias=False))


def make_upsample(kind: str, channels: int) -> nn.Module:
    """2x up-sampling that keeps the channels.

    - ``nearest`` (the paper's): nearest-neighbour interpolation, no parameters;
    - ``bilinear``: bilinear interpolation (``align_corners=False``), no parameters;
    - ``deconv``: BN-ReLU-ConvTranspose2d(kernel 2, stride 2, no bias), the learned
      "isolated" up-sampling the paper avoids; it adds ``4 * channels**2 + 2 * channels``
      parameters.
    """
    check_choice("upsample", kind, UPSAMPLING)
    if kind == "deconv":
        return nn.Sequential(
            *bn_relu(channels), nn.ConvTranspose2d(channels, channels, 2, stride=2, bias=False)
        )
    return nn.Upsample(scale_factor=2, mode=kind)


class TailStage(nn.Module):
    """Tail (down-sampling) stage: residual units, then 2x down-sampling (a 2x2 max-pool)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_units: int, downsample: str = "maxpool"
    ) -> None:
        super().__init__()
        self.units = residual_units(in_channels, out_channels, num_units)
        self.downsample = make_downsample(downsample, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.units(x))


class Bridge(nn.Module):
    """Between tail and body: a score map gated by a squeeze-and-excitation attention.

    ``out = R(score) * att + att``, where ``score`` widens the last tail feature to 2C,
    ``att`` is the SE gate computed from ``score`` and R is ``num_units`` residual units
    2C -> C. Resolution is unchanged.
    """

    def __init__(self, channels: int, num_units: int) -> None:
        super().__init__()
        if channels % 16:
            raise ValueError(f"bridge channels must be a multiple of 16, got {channels}")
        self.score = nn.Sequential(
            *bn_relu(channels),
            nn.Conv2d(channels, channels // 2, 1, bias=False),
            *bn_relu(channels // 2),
            nn.Conv2d(channels // 2, 2 * channels, 1, bias=True),
        )
        self.gate = nn.Sequential(
            *bn_relu(2 * channels),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(2 * channels, channels // 16, 1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 16, channels, 1, bias=True),
            nn.Sigmoid(),
        )
        self.units = residual_units(2 * channels, channels, num_units)

    def forward(self, x: Tensor) -> Tensor:
        score = self.score(x)
        attention = self.gate(score)
        return self.units(score) * attention + attention


def make_bridge(kind: str, channels: int, num_units: int) -> nn.Module:
    """The module between tail and body; channels and resolution are kept.

    - ``se`` (the paper's): :class:`Bridge`, the score map gated by squeeze-and-excitation;
    - ``plain``: the bridge's ``num_units`` residual units applied to the tail feature
      itself (C -> C), without the score and the SE gate;
    - ``none``: ``nn.Identity``, no bridge at all: the last tail feature goes straight to
      the body (a seed implementation's proposal, for a more direct gradient path).
    """
    check_choice("bridge", kind, BRIDGES)
    if kind == "se":
        return Bridge(channels, num_units)
    if kind == "plain":
        return residual_units(channels, channels, num_units)
    return nn.Identity()


class UpRefine(nn.Module):
    """UR block (body stage): refine, reduce channels by k, 2x up-sampling (nearest).

    The trunk's first unit uses the channel reduction r(x) as its shortcut
    (``shortcut="reduce"``; ``"conv"`` gives it the usual BN-ReLU-conv1x1 projection
    where the channels change, and the identity where they do not); all its units use
    dilation so the receptive field grows while the resolution rises. The transfer branch
    refines the tail (or bridge) feature of the output resolution, and the two are
    concatenated.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_units: int,
        transfer_channels: int,
        num_transfer_units: int,
        dilation: int,
        upsample: str = "nearest",
        shortcut: str = "reduce",
    ) -> None:
        super().__init__()
        check_choice("shortcut", shortcut, BODY_SHORTCUTS)
        self.units = residual_units(
            in_channels,
            out_channels,
            num_units,
            dilation=dilation,
            reduce_channels=shortcut == "reduce",
        )
        self.upsample = make_upsample(upsample, out_channels)
        self.transfer = transfer_block(transfer_channels, num_transfer_units)

    def forward(self, x: Tensor, lateral: Tensor) -> Tensor:
        return torch.cat([self.upsample(self.units(x)), self.transfer(lateral)], dim=1)


class DownRefine(nn.Module):
    """DR block (head stage): refine, 2x down-sampling (a 2x2 max-pool), concatenate a refined
    body feature."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_units: int,
        transfer_channels: int,
        num_transfer_units: int,
        downsample: str = "maxpool",
    ) -> None:
        super().__init__()
        self.units = residual_units(in_channels, out_channels, num_units)
        self.downsample = make_downsample(downsample, out_channels)
        self.transfer = transfer_block(transfer_channels, num_transfer_units)

    def forward(self, x: Tensor, lateral: Tensor) -> Tensor:
        return torch.cat([self.downsample(self.units(x)), self.transfer(lateral)], dim=1)


class ClassifierHead(nn.Module):
    """BN-ReLU-conv1x1 (C -> C/2)-BN-ReLU, global average pool, conv1x1 to the classes."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.neck = nn.Sequential(
            *bn_relu(in_channels),
            nn.Conv2d(in_channels, in_channels // 2, 1, bias=False),
            *bn_relu(in_channels // 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(in_channels // 2, num_classes, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.neck(x))).flatten(1)


def init_authors(model: nn.Module) -> None:
    """The initialisation of the authors' release: He normal by fan-out, BN at identity.

    Transposed convolutions (only in the ``deconv`` ablation) get the same He normal.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def init_identity(model: nn.Module) -> None:
    """The authors' initialisation, then every residual unit starts as its shortcut.

    Only the bottlenecks add a branch onto a shortcut: their ``zero_init_last`` (timm's name)
    zeroes the branch's last convolution, so that every unit outputs its shortcut (the
    identity, r(x) or the projection): a transfer block starts as the identity and the
    signal reaches the classifier through shortcuts alone. Projection shortcuts, the
    bridge's score and gate and the samplings are the path itself, not a branch beside it,
    and keep their He init. The classifier's
    small (not zero) weights give logits near zero, a loss near ln(classes), and still
    pass a gradient to the zeroed convolutions, so every parameter trains from the second
    step on.
    """
    init_authors(model)
    for module in model.modules():
        if hasattr(module, "zero_init_last"):
            module.zero_init_last()
    classifier = model.get_classifier()
    nn.init.normal_(classifier.weight, std=CLASSIFIER_STD)
    nn.init.zeros_(classifier.bias)


CLASSIFIER_STD = 1e-3
INITIALIZERS = {"authors": init_authors, "identity": init_identity}
INITS = tuple(INITIALIZERS)
"""Initialisations of a model's weights (:func:`init_weights`); the first is the default."""


def init_weights(model: nn.Module, init: str = "authors") -> None:
    """Initialises ``model`` in place as ``init`` (one of :data:`INITS`) says.

    The model must have ``get_classifier()``, its layer that outputs the logits.
    """
    check_choice("init", init, INITS)
    INITIALIZERS[init](model)
