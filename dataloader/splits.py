"""A prepared split read whole: its images decoded once into a uint8 tensor, cached beside
the manifest, and their per-channel statistics."""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dataloader.images import to_rgb
from dataloader.manifests import (
    MAX_IMAGE_BYTES,
    DataError,
    manifest_path,
    manifest_sha256,
    read_manifest,
)
from utils import atomic_write, load_torch_file, one_line, read_regular_file

IMAGE_SHAPE = (3, 32, 32)


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
