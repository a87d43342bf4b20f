"""What a batch goes through on its device before the network sees it: augmentations chosen
by name from a table, and the normalisation that ends every batch; and the views of
test-time augmentation.

An augmentation is one batched step on the device, (Batch, params) -> Batch, drawing from
the batch's generators, that declares what it works on (a Domain) and the parameters it
takes (params, by name). Most change the images alone (``images_only``); mixup and cutmix
also mix the targets. A pipeline is a sequence of names, applied in order: the stored uint8
pixels are converted into each step's domain as it comes, and normalised after the last.
Adding an augmentation is one entry of AUGMENTATIONS; train.py offers it in --augment and
its parameters as flags (--NAME-PARAMETER). An unknown name is a ValueError naming the
choices.

A test-time augmentation (TEST_AUGMENTATIONS) is a weighted mean of the logits of a few
views of every image (VIEWS); train.py and eval.py score it with --test-augment, beside the
plain score.
"""

from __future__ import annotations

import enum
import functools
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

# Random resized crop of the "imagenet" recipe: torchvision's aspect ratios, but a larger
# smallest area than ImageNet's 0.08, since a 32x32 image has little to spare.
RESIZED_CROP_SCALE = (0.35, 1.0)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
# AlexNet PCA lighting: eigenvalues and eigenvectors (columns) of the ImageNet RGB covariance,
# as fb.resnet.torch's Lighting uses them: rgb = eigvec @ (alpha * eigval), so the largest
# component shifts all three channels alike (a brightness change, -0.123, -0.126, -0.127 per
# unit alpha). The FishNet release's ColorAugmentation multiplies the eigenvalues with the rows
# of the column-reversed matrix instead, directions that are not eigenvectors; not followed.
LIGHTING_ALPHASTD = 0.1
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """float32 (images - mean) / std per channel, for uint8 images (0..255) or float images in
    [0, 1]. mean and std may already be tensors on the images' device (no copy is made then)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    if images.dtype == torch.uint8:
        return images.float().mul_(1 / (255 * std_t)).sub_(mean_t / std_t)
    return (images.float() - mean_t) / std_t


def crop_flip(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = 4
) -> torch.Tensor:
    """Crop each image of [B, C, H, W] from its zero-padded copy at offsets [B, 2] (row, col,
    each in 0..2*padding) and mirror it left-right where flips [B] is True."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(height, device=images.device)
    cols = offsets[:, 1:] + torch.arange(width, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    # Two gathers (rows, then columns) pick every image's own window without a Python loop.
    picked_rows = padded.gather(
        2, rows[:, None, :, None].expand(batch, channels, height, width + 2 * padding)
    )
    return picked_rows.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, padding: int = 4
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per sample (the CIFAR recipe)."""
    batch = images.shape[0]
    offsets = torch.randint(
        0, 2 * padding + 1, (batch, 2), generator=generator, device=generator.device
    )
    flips = torch.rand(batch, generator=generator, device=generator.device) < 0.5
    return crop_flip(images, offsets.to(images.device), flips.to(images.device), padding)


def random_resized_crop_flip(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = RESIZED_CROP_SCALE,
    ratio: tuple[float, float] = RESIZED_CROP_RATIO,
) -> torch.Tensor:
    """Per-sample random resized crop (bilinear, back to the input size) and horizontal flip of
    float [B, C, H, W] images, as one affine_grid/grid_sample.

    A crop covers a uniform fraction in `scale` of the image area with a log-uniform aspect
    ratio in `ratio`; a side that would exceed the image is clamped to it (torchvision redraws
    such crops instead).
    """
    batch = images.shape[0]
    draw = torch.rand(batch, 5, generator=generator, device=generator.device).to(images.device)
    area = scale[0] + (scale[1] - scale[0]) * draw[:, 0]
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * draw[:, 1]
    width = (area * log_ratio.exp()).sqrt().clamp(max=1)
    height = (area / log_ratio.exp()).sqrt().clamp(max=1)
    # In affine_grid's [-1, 1] coordinates a crop of relative size s has its centre in
    # [-(1 - s), 1 - s]; a negative x scale mirrors the crop.
    centre_x = (1 - width) * (2 * draw[:, 2] - 1)
    centre_y = (1 - height) * (2 * draw[:, 3] - 1)
    mirror = torch.where(draw[:, 4] < 0.5, -1.0, 1.0)
    zeros = torch.zeros_like(width)
    theta = torch.stack(
        [
            torch.stack([width * mirror, zeros, centre_x], dim=1),
            torch.stack([zeros, height, centre_y], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def pca_lighting(
    images: torch.Tensor, generator: torch.Generator, alphastd: float = LIGHTING_ALPHASTD
) -> torch.Tensor:
    """AlexNet PCA lighting noise on float RGB [B, 3, H, W] images in [0, 1] units: each image
    gets eigvec @ (alpha * eigval) added, alpha ~ N(0, alphastd) per image and component."""
    alpha = torch.randn(images.shape[0], 3, generator=generator, device=generator.device)
    shift = (alpha.to(images.device) * alphastd) @ _lighting_basis(images.device).T
    return images + shift[:, :, None, None]


@functools.cache
def _lighting_basis(device: torch.device) -> torch.Tensor:
    # Copied to each device once: a copy from the host per batch would wait for the device.
    return (torch.tensor(IMAGENET_EIGVEC) * torch.tensor(IMAGENET_EIGVAL)).to(device)


def cutout(images: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    """Zeroes a size x size square (clipped at the border) centred at a random pixel of every
    image of [B, C, H, W] (DeVries and Taylor, 2017); on normalised images zero is the mean."""
    batch, _, height, width = images.shape
    centres = torch.rand(batch, 2, generator=generator, device=generator.device).to(images.device)
    rows = torch.arange(height, device=images.device) - (centres[:, :1] * height).floor()
    cols = torch.arange(width, device=images.device) - (centres[:, 1:] * width).floor()
    half = size // 2
    inside_rows = (rows >= -half) & (rows < size - half)
    inside_cols = (cols >= -half) & (cols < size - half)
    keep = ~(inside_rows[:, None, :, None] & inside_cols[:, None, None, :])
    return images * keep


def random_crop(images: torch.Tensor, generator: torch.Generator, padding: int) -> torch.Tensor:
    """Random crop with zero padding, per sample, without a flip (to pair with
    alternating-flip)."""
    batch = images.shape[0]
    offsets = torch.randint(
        0, 2 * padding + 1, (batch, 2), generator=generator, device=generator.device
    )
    unflipped = torch.zeros(batch, dtype=torch.bool, device=images.device)
    return crop_flip(images, offsets.to(images.device), unflipped, padding)


_MASK32 = 0xFFFFFFFF


def _hash32(x):
    """A 32-bit integer hash with full avalanche, of a Python int or an int64 tensor alike:
    every product stays below 2**63, so a tensor never overflows."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def image_coins(indices: torch.Tensor, seed: int) -> torch.Tensor:
    """A fair coin per image of a split, bool [B] for the positions ``indices``: fixed by the
    seed for the whole run, the same on every device, drawn from no generator."""
    return (_hash32((indices & _MASK32) ^ _hash32(seed & _MASK32)) & 1).bool()


def alternating_flip(images: torch.Tensor, indices: torch.Tensor, epoch: int, seed: int):
    """Derandomised horizontal flip (Jordan's airbench): an image is mirrored in the epochs
    of one parity, chosen by its coin, and shown as it is in the others. Every image is
    seen both ways in any two epochs running, where a random flip shows a quarter of them
    the same way twice."""
    flips = image_coins(indices, seed) ^ bool(epoch % 2)
    return torch.where(flips[:, None, None, None], images.flip(3), images)


def class_shares(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets as float32 shares per class [B, classes]: int64 labels become one-hot rows,
    rows of shares (a batch mixed before) stay as they are."""
    if targets.is_floating_point():
        return targets
    return F.one_hot(targets, num_classes).float()


def mix_with_previous(
    images: torch.Tensor, targets: torch.Tensor, share: float, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image blended with the one before it in the batch (the first with the last),
    ``share`` of its own; its target alike. The batch is shuffled, so the partner is a
    random image, with no permutation to draw (torchvision's MixUp pairs them so too)."""
    shares = class_shares(targets, num_classes)
    mixed_images = images * share + images.roll(1, 0) * (1 - share)
    return mixed_images, shares * share + shares.roll(1, 0) * (1 - share)


def mixup(batch: Batch, alpha: float) -> Batch:
    """Mixup (Zhang et al., 2018): one share lambda ~ Beta(alpha, alpha) per batch, drawn on
    the host, so the device is never waited for."""
    share = batch.host_random.betavariate(alpha, alpha)
    images, targets = mix_with_previous(batch.images, batch.targets, share, batch.num_classes)
    return replace(batch, images=images, targets=targets)


def cutmix(batch: Batch, alpha: float) -> Batch:
    """CutMix (Yun et al., 2019): a box of every image is replaced by the same box of the
    previous image; lambda ~ Beta(alpha, alpha) sets the box's area, 1 - lambda of the image,
    centred at a uniform pixel and clipped at the border. The targets are mixed by the area
    actually pasted."""
    _, _, height, width = batch.images.shape
    draw = batch.host_random
    cut = math.sqrt(1 - draw.betavariate(alpha, alpha))
    centre_row, centre_col = draw.randrange(height), draw.randrange(width)
    half_rows, half_cols = int(height * cut) // 2, int(width * cut) // 2
    top, bottom = max(centre_row - half_rows, 0), min(centre_row + half_rows, height)
    left, right = max(centre_col - half_cols, 0), min(centre_col + half_cols, width)
    images = batch.images.clone()
    box = (slice(None), slice(None), slice(top, bottom), slice(left, right))
    images[box] = batch.images.roll(1, 0)[box]
    share = 1 - (bottom - top) * (right - left) / (height * width)
    shares = class_shares(batch.targets, batch.num_classes)
    targets = shares * share + shares.roll(1, 0) * (1 - share)
    return replace(batch, images=images, targets=targets)


class Domain(enum.IntEnum):
    """What a batch holds, in the order it passes through them: a batch is converted forward
    only (uint8 pixels cannot be recovered from normalised floats)."""

    PIXELS = 0  # uint8 0..255, as stored: moved and gathered at a quarter of float32's cost
    UNIT = 1  # float32 pixels / 255, in [0, 1]: for interpolation and colour shifts
    NORMALISED = 2  # float32 (x - mean) / std per channel, as the network takes it: 0 is the mean

    def __str__(self) -> str:
        words = {
            Domain.PIXELS: "uint8 pixels",
            Domain.UNIT: "float pixels in [0, 1]",
            Domain.NORMALISED: "normalised images",
        }
        return words[self]


def _into_unit(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255)


# Domain -> the conversion into it, (images, mean, std) -> images, from any earlier domain.
# uint8 pixels go straight to normalised images (normalize takes both), not through [0, 1].
CONVERSIONS: dict[Domain, Callable[..., torch.Tensor]] = {
    Domain.UNIT: _into_unit,
    Domain.NORMALISED: normalize,
}


@dataclass(frozen=True)
class Parameter:
    """A number an augmentation takes, train.py's flag --NAME-PARAMETER (parameter_key)."""

    name: str
    type: type[int] | type[float]
    default: float
    minimum: float
    maximum: float
    help: str


@dataclass(frozen=True)
class Batch:
    """A training batch on its way through the augmentations: what a step may read, and
    (images, targets) what it may change."""

    images: torch.Tensor
    targets: torch.Tensor  # int64 labels [B]; float32 shares per class [B, classes] once mixed
    indices: torch.Tensor  # the images' positions in the split
    generator: torch.Generator | None  # the loader's augmentation stream, on its device
    host_random: random.Random | None  # this batch's numbers drawn on the host (mixing shares)
    epoch: int
    seed: int
    num_classes: int | None  # needed by the augmentations that mix the targets


@dataclass(frozen=True)
class Augmentation:
    """step(batch, params) -> the batch with images of the same shape and dtype, in domain
    `works_on`; params maps the name of each of `parameters` to its value. One that
    `mixes_targets` turns them into float shares per class and needs the number of classes;
    a pipeline takes one such at most."""

    step: Callable[[Batch, Mapping[str, float]], Batch]
    works_on: Domain
    parameters: tuple[Parameter, ...] = ()
    mixes_targets: bool = False


def images_only(
    step: Callable[[torch.Tensor, torch.Generator, Mapping[str, float]], torch.Tensor],
) -> Callable[[Batch, Mapping[str, float]], Batch]:
    """An augmentation's step from one of the images alone, (images, generator, params) ->
    images."""
    return lambda batch, params: replace(batch, images=step(batch.images, batch.generator, params))


def _alpha(augmentation: str, source: str) -> Parameter:
    return Parameter(
        "alpha",
        float,
        default=1.0,  # the CIFAR-10 setting of the paper (lambda uniform on [0, 1])
        minimum=0.01,
        maximum=100.0,
        help=f"lambda ~ Beta(alpha, alpha), the share of each image's own {augmentation} "
        f"({source})",
    )


AUGMENTATIONS: dict[str, Augmentation] = {
    # The CIFAR recipe: zero padding of 4, a random 32x32 crop, a random horizontal flip.
    "crop-flip": Augmentation(
        images_only(lambda images, generator, params: random_crop_flip(images, generator)),
        Domain.PIXELS,
    ),
    # The paper's ImageNet recipe at 32x32: random resized crop and flip, then PCA lighting.
    "imagenet": Augmentation(
        images_only(
            lambda images, generator, params: pca_lighting(
                random_resized_crop_flip(images, generator), generator
            )
        ),
        Domain.UNIT,
    ),
    "none": Augmentation(images_only(lambda images, generator, params: images), Domain.PIXELS),
    # Erases to the mean, so on normalised images (DeVries and Taylor: 16 pixels on CIFAR-10).
    "cutout": Augmentation(
        images_only(lambda images, generator, params: cutout(images, generator, params["size"])),
        Domain.NORMALISED,
        (
            Parameter(
                "size",
                int,
                default=16,
                minimum=1,
                maximum=32,  # the image side
                help="side in pixels of the square cutout erases",
            ),
        ),
    ),
    # The crop of crop-flip without its flip, to pair with alternating-flip (airbench crops
    # by 2 pixels, with reflected borders).
    "crop": Augmentation(
        images_only(
            lambda images, generator, params: random_crop(images, generator, params["padding"])
        ),
        Domain.PIXELS,
        (
            Parameter(
                "padding",
                int,
                default=4,
                minimum=1,
                maximum=16,
                help="zero padding in pixels on each side before the random crop",
            ),
        ),
    ),
    "alternating-flip": Augmentation(
        lambda batch, params: replace(
            batch,
            images=alternating_flip(batch.images, batch.indices, batch.epoch, batch.seed),
        ),
        Domain.PIXELS,
    ),
    # Linear in the pixels, so mixing normalised images mixes the pixels alike.
    "mixup": Augmentation(
        lambda batch, params: mixup(batch, params["alpha"]),
        Domain.NORMALISED,
        (_alpha("pixels", "Zhang et al., 2018: 1 on CIFAR-10"),),
        mixes_targets=True,
    ),
    "cutmix": Augmentation(
        lambda batch, params: cutmix(batch, params["alpha"]),
        Domain.NORMALISED,
        (_alpha("area", "Yun et al., 2019: 1 on CIFAR"),),
        mixes_targets=True,
    ),
}


def choose(name: str) -> Augmentation:
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose from: {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]


def parameter_key(name: str, parameter: Parameter) -> str:
    """The key of augmentation `name`'s parameter among a run's settings (train.py's args):
    cutout's size is cutout_size, the flag --cutout-size."""
    return f"{name}_{parameter.name}".replace("-", "_")


def check_order(names: Sequence[str]) -> None:
    """A ValueError unless ``names`` lists augmentations, each once, in the order of what
    they work on (uint8 pixels, then float pixels in [0, 1], then normalised images), with
    ``none`` alone and one augmentation at most that mixes the targets."""
    if isinstance(names, str):
        raise ValueError(f"give the augmentations as a list of names, not the string {names!r}")
    domains = [choose(name).works_on for name in names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once")
    if "none" in names and len(names) > 1:
        raise ValueError("none means no augmentation and stands alone")
    mixing = [name for name in names if AUGMENTATIONS[name].mixes_targets]
    if len(mixing) > 1:
        raise ValueError(f"{' and '.join(mixing)} both mix the targets; give one of them")
    for (earlier, before), (later, after) in itertools.pairwise(zip(names, domains, strict=True)):
        if after < before:
            order = ", then ".join(map(str, Domain))
            raise ValueError(
                f"{later} (on {after}) cannot follow {earlier} (on {before}): augmentations "
                f"go in the order of what they work on: {order}"
            )


def mixes_targets(names: Sequence[str]) -> bool:
    """Whether a pipeline of ``names`` yields float shares per class instead of labels."""
    return any(choose(name).mixes_targets for name in names)


Transform = Callable[[Batch], Batch]


def pipeline(
    names: Sequence[str],
    settings: Mapping[str, object],
    mean: torch.Tensor,
    std: torch.Tensor,
) -> list[Transform]:
    """The transforms, batch -> batch, that take a batch of stored uint8 images through the
    augmentations `names` in order to normalised float32 images (mean and std: float32 [3]
    on the batch's device). settings: the augmentations' parameters by parameter_key (e.g. a
    run's args); one absent or None takes its default."""
    check_order(names)
    transforms: list[Transform] = []
    domain = Domain.PIXELS
    for name in names:
        augmentation = AUGMENTATIONS[name]
        if augmentation.works_on > domain:
            domain = augmentation.works_on
            transforms.append(_conversion(domain, mean, std))
        params = {}
        for parameter in augmentation.parameters:
            value = settings.get(parameter_key(name, parameter))
            params[parameter.name] = parameter.default if value is None else value
        transforms.append(_with_params(augmentation.step, params))
    if domain < Domain.NORMALISED:
        transforms.append(_conversion(Domain.NORMALISED, mean, std))
    return transforms


def _conversion(domain: Domain, mean: torch.Tensor, std: torch.Tensor) -> Transform:
    return lambda batch: replace(batch, images=CONVERSIONS[domain](batch.images, mean, std))


def _with_params(step: Callable[..., Batch], params: Mapping[str, float]) -> Transform:
    return lambda batch: step(batch, params)


def translate(images: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Images shifted down by ``rows`` and right by ``cols`` pixels (negative: up, left), the
    border reflected into the gap, as airbench's test-time translation does."""
    pad = max(abs(rows), abs(cols))
    height, width = images.shape[-2:]
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    return padded[:, :, pad - rows : pad - rows + height, pad - cols : pad - cols + width]


# The views of an image that test-time augmentation scores, on normalised [B, C, H, W].
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "plain": lambda images: images,
    "mirrored": lambda images: images.flip(3),
    "down-right": lambda images: translate(images, 1, 1),
    "down-right mirrored": lambda images: translate(images, 1, 1).flip(3),
    "up-left": lambda images: translate(images, -1, -1),
    "up-left mirrored": lambda images: translate(images, -1, -1).flip(3),
}


def check_test_augment(names: Sequence[str]) -> None:
    """A ValueError unless ``names`` lists test-time augmentations, each once."""
    for name in names:
        if name not in TEST_AUGMENTATIONS:
            choices = ", ".join(TEST_AUGMENTATIONS)
            raise ValueError(f"unknown test-time augmentation {name!r}; choose from: {choices}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once")


# A test-time augmentation: the weight of each view's logits in their mean. train.py's and
# eval.py's --test-augment score each one given beside the plain score.
TEST_AUGMENTATIONS: dict[str, dict[str, float]] = {
    # The image and its mirror image.
    "flip": {"plain": 1 / 2, "mirrored": 1 / 2},
    # airbench's: half the flip's mean, half that of the image shifted by a pixel each way
    # diagonally (and their mirror images).
    "translate": {
        "plain": 1 / 4,
        "mirrored": 1 / 4,
        "down-right": 1 / 8,
        "down-right mirrored": 1 / 8,
        "up-left": 1 / 8,
        "up-left mirrored": 1 / 8,
    },
}
