"""The canvas task: CIFAR-10 images pasted, resized, on a larger canvas, with their boxes and
a per-pixel mask, so that a detection or a segmentation model on FishNet's features can be
trained and scored on CIFAR-10 alone.

A canvas is ``size`` x ``size`` pixels: a smooth random background (a 4x4 grid of random
colours, upsampled), and 1..``max_objects`` square objects, each a split image resized to a
side in ``object_sizes``, wholly inside the canvas and overlapping no other object. Its
targets say the same thing twice: boxes with labels (detection), and a mask of labels
(segmentation), label 0 the background and CIFAR-10 class c label c + 1.

Canvas i is made from the seed and i alone (a generator seeded with a hash of both), not from
the order canvases are asked for or the global random state: any worker of a DataLoader
makes the same canvas i, and a run's validation canvases are the same in every epoch.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from utils import holds_integers

# Positions drawn for an object before it is given up for one that overlaps no earlier
# object: a canvas then has fewer objects than drawn (but never none, since the first object
# always fits).
PLACEMENT_TRIES = 50
# The background is a BACKGROUND_GRID x BACKGROUND_GRID grid of random colours upsampled to
# the canvas: smooth, so an object's edge still stands out, but not flat, so finding objects
# takes more than finding pixels of another colour.
BACKGROUND_GRID = 4

_MASK64 = (1 << 64) - 1


class Canvas(NamedTuple):
    """One canvas and its targets; k is its number of objects."""

    image: Tensor  # uint8 [3, size, size]
    boxes: Tensor  # float32 [k, 4], xyxy in pixels: object j covers x1 <= x < x2, y1 <= y < y2
    labels: Tensor  # int64 [k], 1..num_classes: the source image's class + 1
    mask: Tensor  # int64 [size, size]: 0 on the background, an object's label on its pixels
    sources: Tensor  # int64 [k]: the objects' indices in the dataset's images


def canvas_seed(seed: int, index: int) -> int:
    """The generator seed of canvas ``index``: seed * 1_000_003 + index taken modulo 2**64 and
    passed through splitmix64's finaliser, so that nearby seeds and indices give unrelated
    generator states."""
    x = (seed * 1_000_003 + index) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def resize(image: Tensor, side: int) -> Tensor:
    """A uint8 [3, H, W] image resized to uint8 [3, side, side]: bilinear, antialiased when
    shrinking (as torchvision's Resize), rounded to the nearest pixel value."""
    resized = F.interpolate(
        image[None].float(),
        size=(side, side),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def random_background(size: int, generator: torch.Generator) -> Tensor:
    """uint8 [3, size, size]: a grid of uniform random colours upsampled bilinearly."""
    colours = torch.randint(
        0, 256, (1, 3, BACKGROUND_GRID, BACKGROUND_GRID), generator=generator
    ).float()
    background = F.interpolate(colours, size=(size, size), mode="bilinear", align_corners=False)
    return background[0].round().clamp(0, 255).to(torch.uint8)


class CanvasDataset(torch.utils.data.Dataset):
    """``length`` canvases made from a split's images (uint8 [N, 3, H, W]) and labels (int64
    [N], 0..num_classes - 1), as dataloader.splits.load_split returns them.

    Each canvas has a number of objects uniform in 1..max_objects; each object is an image
    chosen uniformly from the N, resized to a square of side uniform in object_sizes (both
    ends included) and placed at a uniform position where it overlaps no earlier object
    (PLACEMENT_TRIES positions are tried; an object that finds no room is left out).
    ``num_labels`` = num_classes + 1 counts the background's label 0.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        length: int,
        seed: int,
        size: int = 96,
        max_objects: int = 3,
        object_sizes: tuple[int, int] = (24, 48),
        num_classes: int = 10,
    ) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8:
            raise ValueError(f"images must be a uint8 tensor; got {_describe(images)}")
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
            raise ValueError(
                f"images must be [N, 3, H, W] with N >= 1; got shape {tuple(images.shape)}"
            )
        if not isinstance(labels, Tensor) or not holds_integers(labels) or labels.ndim != 1:
            raise ValueError(f"labels must be a 1-D integer tensor; got {_describe(labels)}")
        if len(labels) != len(images):
            raise ValueError(f"labels must be one per image ({len(images)}); got {len(labels)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1; got {num_classes}")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"labels must be in 0..{num_classes - 1} (num_classes={num_classes}); "
                f"got {int(labels.min())}..{int(labels.max())}"
            )
        if length < 1:
            raise ValueError(f"length must be at least 1; got {length}")
        if max_objects < 1:
            raise ValueError(f"max_objects must be at least 1; got {max_objects}")
        if len(object_sizes) != 2:
            raise ValueError(f"object_sizes must be (smallest, largest); got {tuple(object_sizes)}")
        smallest, largest = object_sizes
        if not 1 <= smallest <= largest:
            raise ValueError(
                f"object_sizes must be (smallest, largest) with 1 <= smallest <= largest; "
                f"got {tuple(object_sizes)}"
            )
        if size < largest:
            raise ValueError(
                f"size must be at least the largest object size ({largest}); got {size}"
            )
        self.images = images
        self.labels = labels.long()
        self.length = int(length)
        self.seed = int(seed)
        self.size = int(size)
        self.max_objects = int(max_objects)
        self.object_sizes = (int(smallest), int(largest))
        self.num_classes = int(num_classes)
        self.num_labels = self.num_classes + 1

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Canvas:
        """Canvas ``index`` (negative indices count from the end, as in a list)."""
        index = operator.index(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"canvas {index} out of range for {self.length} canvases")
        generator = torch.Generator().manual_seed(canvas_seed(self.seed, index))
        # The draws come in a fixed order (background, count, then each object's source, side
        # and positions), so a canvas is the same whatever was made before it.
        image = random_background(self.size, generator)
        count = int(torch.randint(1, self.max_objects + 1, (), generator=generator))
        smallest, largest = self.object_sizes
        mask = torch.zeros(self.size, self.size, dtype=torch.int64)
        placed: list[tuple[int, int, int]] = []  # (x, y, side) of each object pasted
        sources: list[int] = []
        for _ in range(count):
            source = int(torch.randint(0, len(self.images), (), generator=generator))
            side = int(torch.randint(smallest, largest + 1, (), generator=generator))
            positions = torch.randint(
                0, self.size - side + 1, (PLACEMENT_TRIES, 2), generator=generator
            )
            position = _first_free(positions, side, placed)
            if position is None:
                continue
            x, y = position
            label = int(self.labels[source]) + 1
            image[:, y : y + side, x : x + side] = resize(self.images[source], side)
            mask[y : y + side, x : x + side] = label
            placed.append((x, y, side))
            sources.append(source)
        boxes = torch.tensor([[x, y, x + edge, y + edge] for x, y, edge in placed])
        source_indices = torch.tensor(sources, dtype=torch.int64)
        return Canvas(
            image=image,
            boxes=boxes.float().reshape(-1, 4),
            labels=self.labels[source_indices] + 1,
            mask=mask,
            sources=source_indices,
        )


def _first_free(
    positions: Tensor, side: int, placed: Sequence[tuple[int, int, int]]
) -> tuple[int, int] | None:
    """The first (x, y) of positions [tries, 2] where a side x side square overlaps none of
    the squares ``placed`` ((x, y, side) each; sharing an edge is no overlap), or None."""
    if not placed:
        return int(positions[0, 0]), int(positions[0, 1])
    others = torch.tensor(placed)
    x, y = positions[:, :1], positions[:, 1:]
    other_x, other_y, other_side = others[:, 0], others[:, 1], others[:, 2]
    overlaps = (
        (x < other_x + other_side)
        & (other_x < x + side)
        & (y < other_y + other_side)
        & (other_y < y + side)
    )
    free = (~overlaps.any(dim=1)).nonzero()
    if len(free) == 0:
        return None
    first = int(free[0, 0])
    return int(positions[first, 0]), int(positions[first, 1])


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def collate_detection(canvases: Sequence[Canvas]) -> tuple[list[Tensor], list[dict]]:
    """A batch for a torchvision detection model: float [3, S, S] images in [0, 1] (the
    model normalises them itself) and targets {"boxes": float32 [k, 4], "labels": int64 [k]}."""
    images = [canvas.image.float() / 255 for canvas in canvases]
    targets = [{"boxes": canvas.boxes, "labels": canvas.labels} for canvas in canvases]
    return images, targets


def collate_segmentation(canvases: Sequence[Canvas]) -> tuple[Tensor, Tensor]:
    """A batch for a segmentation model: float images [B, 3, S, S] in [0, 1] and masks int64
    [B, S, S] of labels 0..num_classes."""
    images = torch.stack([canvas.image for canvas in canvases]).float() / 255
    masks = torch.stack([canvas.mask for canvas in canvases])
    return images, masks
