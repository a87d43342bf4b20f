"""Reading the prepared dataset (manifests made by data/download_data.py) and batching it.

Two ways in:
- ManifestDataset: a plain torch Dataset of PIL images, for torchvision transforms and a
  DataLoader.
- load_split + DeviceLoader: the fast path of train.py and eval.py. The split is decoded once
  into a uint8 tensor (cached beside the manifest), held whole on the training device, and
  shuffled, augmented and normalised there in batched tensor operations.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from dataloader.images import to_rgb
from dataloader.manifests import (
    MAX_IMAGE_BYTES,
    DataError,
    manifest_path,
    manifest_sha256,
    read_classes,
    read_manifest,
)
from utils import atomic_write, load_torch_file, one_line, read_regular_file

IMAGE_SHAPE = (3, 32, 32)
AUGMENTATIONS = ("crop-flip", "none", "imagenet")

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

# Random streams drawn from (seed, epoch, stream, ...): the shuffle is shared by all ranks,
# the augmentation differs per rank.
SHUFFLE_STREAM = 0
AUGMENT_STREAM = 1
# Bytes of a random generator's state: the CPU's Mersenne Twister, CUDA's Philox (seed and
# offset). A mid-epoch checkpoint saved on one cannot continue on the other.
GENERATOR_STATE_BYTES = {"cpu": 5056, "cuda": 16}


def open_rgb(manifest: Path, image_path: Path) -> Image.Image:
    """A manifest's image as RGB (dataloader.images.to_rgb); one that cannot be decoded or
    used is a DataError naming both."""
    try:
        encoded = io.BytesIO(read_regular_file(Path(image_path), MAX_IMAGE_BYTES))
        with Image.open(encoded) as opened:
            return to_rgb(opened)
    except Exception as error:
        # PIL's decoders report damaged, foreign or oversized files with many kinds of
        # exception (DecompressionBombError, ValueError for text chunks, struct.error, ...).
        raise DataError(
            f"{manifest}: cannot decode image {image_path} ({one_line(error)})"
        ) from None


class ManifestDataset(Dataset):
    """(PIL RGB image or transform(image), label) for every entry of a manifest."""

    def __init__(self, manifest_path: str | os.PathLike, transform: Callable | None = None) -> None:
        self.manifest_path = Path(manifest_path)
        self.classes = read_classes(self.manifest_path.parent)
        self.samples = read_manifest(self.manifest_path, len(self.classes))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[object, int]:
        image_path, label = self.samples[index]
        image = open_rgb(self.manifest_path, image_path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def _load_cache(cache: Path, key: dict, labels: torch.Tensor) -> torch.Tensor | None:
    """The cached images of a split, or None (to rebuild it) unless the cache stands for
    exactly the split read: its key (the manifest's sha256 and the image files' sizes and
    times), its labels in order and one uint8 [3, 32, 32] image per entry."""
    max_bytes = len(labels) * (math.prod(IMAGE_SHAPE) + labels.element_size()) + (1 << 20)
    try:
        content = load_torch_file(cache, max_bytes)
    except Exception:
        # A missing, special, oversized, inflating or unreadable cache is rebuilt, whatever
        # went wrong.
        return None
    if not isinstance(content, dict) or any(content.get(k) != v for k, v in key.items()):
        return None
    images, cached_labels = content.get("images"), content.get("labels")
    if (
        not isinstance(images, torch.Tensor)
        or not isinstance(cached_labels, torch.Tensor)
        or images.dtype != torch.uint8
        or images.shape != (len(labels), *IMAGE_SHAPE)
        or cached_labels.dtype != labels.dtype
        or not torch.equal(cached_labels, labels)
    ):
        return None
    return images


def image_files_sha256(entries: Sequence[tuple[str, int]]) -> str:
    """Identifies the image files of a manifest as they are now: their paths, sizes and
    modification times, so that a PNG replaced in place invalidates the cache."""
    digest = hashlib.sha256()
    for image_path, _ in entries:
        status = os.stat(image_path)
        digest.update(os.fsencode(image_path))  # a name that is not UTF-8 too
        digest.update(f"\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _save_cache(cache: Path, content: dict) -> None:
    try:
        atomic_write(cache, lambda temporary: torch.save(content, temporary))
    except OSError as error:
        warnings.warn(
            f"cannot write the cache {cache} ({error}); decoding again next time", stacklevel=3
        )


def load_split(data_dir: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as uint8 [N, 3, 32, 32] and their labels as int64 [N].

    Decoded once into <split>_cache.pt beside the manifest. The manifest is read and checked
    every time; the cache is used only when it holds the manifest's sha256, the sizes and
    modification times of the image files, its labels and one image per entry, and rebuilt
    otherwise.
    """
    manifest = manifest_path(data_dir, split)
    entries = read_manifest(manifest)
    labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
    key = {
        "manifest_sha256": manifest_sha256(data_dir, split),
        "images_sha256": image_files_sha256(entries),
    }
    cache = manifest.with_name(f"{split}_cache.pt")
    cached = _load_cache(cache, key, labels)
    if cached is not None:
        return cached, labels
    pixels = np.empty((len(entries), 32, 32, 3), dtype=np.uint8)
    for index, (image_path, _) in enumerate(entries):
        image = open_rgb(manifest, image_path)
        if image.size != (32, 32):
            raise DataError(
                f"{manifest}: image {image_path} is {image.width}x{image.height}, not 32x32"
            )
        pixels[index] = np.asarray(image)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    _save_cache(cache, {**key, "images": images, "labels": labels})
    return images, labels


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 [N, 3, H, W] images, in [0, 1] units.

    Computed exactly from per-channel histograms, so no float copy of the split is made.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 [N, C, H, W] images, got {images.dtype} {images.shape}")
    levels = torch.arange(256, dtype=torch.float64, device=images.device) / 255
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).double()
        mean = (counts * levels).sum() / counts.sum()
        means.append(mean)
        stds.append(((counts * (levels - mean) ** 2).sum() / counts.sum()).sqrt())
    return tuple(torch.stack(means).tolist()), tuple(torch.stack(stds).tolist())


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


def _step_bounds(
    num_items: int, global_batch: int, world_size: int, drop_last: bool = False
) -> list[tuple[int, int]]:
    """(start, stop) of every global batch of an epoch. ``drop_last`` keeps full batches
    only; otherwise a last one too small to give every rank a sample joins the one before,
    so no rank ever gets an empty batch."""
    if drop_last:
        starts = range(0, num_items - global_batch + 1, global_batch)
        return [(start, start + global_batch) for start in starts]
    bounds = [
        (start, min(start + global_batch, num_items)) for start in range(0, num_items, global_batch)
    ]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < world_size:
        bounds[-2:] = [(bounds[-2][0], num_items)]
    return bounds


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


def _stream_seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0])


class DeviceLoader:
    """Batches of a whole split kept on one device: (float32 normalised images [B, 3, 32, 32],
    int64 labels [B]), both on `device`.

    train=True: a new shuffle every epoch, drawn from (seed, epoch) so that the same seed gives
    the same batches and resuming at epoch e repeats epoch e (call set_epoch first), then the
    augmentation (`augment`: "crop-flip", "none" or "imagenet"). train=False: the split in
    order, only normalised. ``cutout`` (pixels, 0: off) erases a random square of every
    training image after the augmentation. ``drop_last`` keeps full batches only, so every
    step has the same shapes (one compilation, CUDA graphs); the shuffle changes every
    epoch, so every image is still trained on. Otherwise every sample is kept and the last
    batch may be smaller.

    With world_size > 1 every global batch of world_size * batch_size samples is split among
    the ranks, so the ranks see disjoint parts covering the epoch once, in the same number of
    batches. Iteration never waits for the device.

    `state_dict()` taken between batches (the epoch, the batches already yielded and the
    augmentation generator) and `load_state_dict()` let an interrupted epoch continue with
    exactly the batches it would have had.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        augment: str = "crop-flip",
        cutout: int = 0,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected uint8 [N, 3, H, W] images, got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != images.shape[:1]:
            raise ValueError(f"expected {images.shape[0]} labels, got {tuple(labels.shape)}")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        if batch_size < 1 or not 0 <= rank < world_size or seed < 0:
            raise ValueError("need batch_size >= 1, 0 <= rank < world_size and seed >= 0")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device)
        self.train = train
        self.augment = augment
        self.cutout_size = cutout
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.epoch = 0
        self.step = 0
        self._augment_generator: torch.Generator | None = None
        self._resume: dict | None = None
        self._bounds = _step_bounds(len(images), batch_size * world_size, world_size, drop_last)
        if not self._bounds:
            raise ValueError(
                f"{len(images)} images do not fill one batch of {batch_size * world_size}"
            )
        # tensor_split gives the first (n % world_size) ranks one sample more.
        self.num_samples = sum(
            (stop - start) // world_size + (rank < (stop - start) % world_size)
            for start, stop in self._bounds
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.step = 0
        self._resume = None

    def state_dict(self) -> dict:
        generator = self._augment_generator
        return {
            "epoch": self.epoch,
            "step": self.step,
            "augment_rng": generator.get_state() if generator is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """The next iteration continues the epoch at `state["step"]`. An augmentation
        generator saved on another kind of device cannot continue here: the rest of the
        epoch draws from a generator seeded by (seed, epoch, rank, step) instead."""
        self.epoch = state["epoch"]
        self.step = state["step"]
        self._resume = state

    def state_from_another_device(self, generator_state: torch.Tensor) -> bool:
        """Whether a saved augmentation generator state is that of another kind of device
        than this loader's (CPU and CUDA generators keep states of different sizes)."""
        own = torch.Generator(device=self.device).get_state().numel()
        return (
            generator_state.numel() != own
            and generator_state.numel() in GENERATOR_STATE_BYTES.values()
        )

    def __len__(self) -> int:
        return len(self._bounds)

    def _generator(self, *keys: int) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_stream_seed(self.seed, self.epoch, *keys))
        return generator

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.augment == "crop-flip":
            return normalize(random_crop_flip(images, generator), self._mean, self._std)
        if self.augment == "imagenet":
            images = random_resized_crop_flip(images.float().div_(255), generator)
            return normalize(pca_lighting(images, generator), self._mean, self._std)
        return normalize(images, self._mean, self._std)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        count = len(self.images)
        if self.train:
            order = torch.randperm(
                count, generator=self._generator(SHUFFLE_STREAM), device=self.device
            )
            augment_generator = self._generator(AUGMENT_STREAM, self.rank)
            saved = self._resume["augment_rng"] if self._resume else None
            if saved is not None and self.state_from_another_device(saved):
                augment_generator = self._generator(AUGMENT_STREAM, self.rank, self.step)
            elif saved is not None:
                augment_generator.set_state(saved)
            self._augment_generator = augment_generator
        else:
            order = torch.arange(count, device=self.device)
        first = self._resume["step"] if self._resume else 0
        self._resume = None
        for step in range(first, len(self._bounds)):
            start, stop = self._bounds[step]
            indices = torch.tensor_split(order[start:stop], self.world_size)[self.rank]
            images = self.images[indices]
            if self.train:
                images = self._augment(images, augment_generator)
                if self.cutout_size:
                    images = cutout(images, augment_generator, self.cutout_size)
            else:
                images = normalize(images, self._mean, self._std)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.step = step + 1
            yield images, self.labels[indices]
