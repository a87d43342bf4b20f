"""What a batch goes through on its device before the network sees it: augmentations chosen
by name from a table, and the normalisation that ends every batch.

An augmentation is one batched step on the device, (images, generator, params) -> images,
drawing from the generator, that declares what it works on (a Domain) and the parameters it
takes (params, by name). A pipeline is a sequence of names, applied in order: the stored
uint8 pixels are converted into each step's domain as it comes, and normalised after the
last. Adding an augmentation is one entry of AUGMENTATIONS; train.py offers it in
--augment and its parameters as flags (--NAME-PARAMETER). An unknown name is a ValueError
naming the choices.
"""

from __future__ import annotations

import enum
import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

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
class Augmentation:
    """step(images, generator, params) -> images of the same shape and dtype, on a batch in
    domain `works_on`; params maps the name of each of `parameters` to its value."""

    step: Callable[[torch.Tensor, torch.Generator, Mapping[str, float]], torch.Tensor]
    works_on: Domain
    parameters: tuple[Parameter, ...] = ()


AUGMENTATIONS: dict[str, Augmentation] = {
    # The CIFAR recipe: zero padding of 4, a random 32x32 crop, a random horizontal flip.
    "crop-flip": Augmentation(
        lambda images, generator, params: random_crop_flip(images, generator), Domain.PIXELS
    ),
    # The paper's ImageNet recipe at 32x32: random resized crop and flip, then PCA lighting.
    "imagenet": Augmentation(
        lambda images, generator, params: pca_lighting(
            random_resized_crop_flip(images, generator), generator
        ),
        Domain.UNIT,
    ),
    "none": Augmentation(lambda images, generator, params: images, Domain.PIXELS),
    # Erases to the mean, so on normalised images (DeVries and Taylor: 16 pixels on CIFAR-10).
    "cutout": Augmentation(
        lambda images, generator, params: cutout(images, generator, params["size"]),
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
    ``none`` alone."""
    if isinstance(names, str):
        raise ValueError(f"give the augmentations as a list of names, not the string {names!r}")
    domains = [choose(name).works_on for name in names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once")
    if "none" in names and len(names) > 1:
        raise ValueError("none means no augmentation and stands alone")
    for (earlier, before), (later, after) in itertools.pairwise(zip(names, domains, strict=True)):
        if after < before:
            order = ", then ".join(map(str, Domain))
            raise ValueError(
                f"{later} (on {after}) cannot follow {earlier} (on {before}): augmentations "
                f"go in the order of what they work on: {order}"
            )


Transform = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def pipeline(
    names: Sequence[str],
    settings: Mapping[str, object],
    mean: torch.Tensor,
    std: torch.Tensor,
) -> list[Transform]:
    """The transforms, (images, generator) -> images, that take a batch of stored uint8 images
    through the augmentations `names` in order to normalised float32 images (mean and std:
    float32 [3] on the batch's device). settings: the augmentations' parameters by
    parameter_key (e.g. a run's args); one absent or None takes its default."""
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
    return lambda images, generator: CONVERSIONS[domain](images, mean, std)


def _with_params(step: Callable[..., torch.Tensor], params: Mapping[str, float]) -> Transform:
    return lambda images, generator: step(images, generator, params)
