"""Two ways to iterate a prepared split:
- ManifestDataset: a plain torch Dataset of PIL images, for torchvision transforms and a
  DataLoader.
- DeviceLoader: the fast path of train.py and eval.py. The split (dataloader.splits.load_split)
  is held whole on the training device, and shuffled, augmented and normalised there in
  batched tensor operations.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dataloader.augment import Batch, mixes_targets, pipeline
from dataloader.manifests import read_classes, read_manifest
from dataloader.splits import open_rgb

# Random streams drawn from (seed, epoch, stream, ...): the shuffle is shared by all ranks,
# the augmentation differs per rank. The host's numbers of a batch (mixing shares) are drawn
# from (seed, epoch, HOST_STREAM, rank, step): no state to save, and none to wait for.
SHUFFLE_STREAM = 0
AUGMENT_STREAM = 1
HOST_STREAM = 2
# Bytes of a random generator's state: the CPU's Mersenne Twister, CUDA's Philox (seed and
# offset). A mid-epoch checkpoint saved on one cannot continue on the other.
GENERATOR_STATE_BYTES = {"cpu": 5056, "cuda": 16}


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


def _stream_seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0])


class DeviceLoader:
    """Batches of a whole split kept on one device: (float32 normalised images [B, 3, 32, 32],
    int64 labels [B]), both on `device`.

    train=True: a new shuffle every epoch, drawn from (seed, epoch) so that the same seed gives
    the same batches and resuming at epoch e repeats epoch e (call set_epoch first), then the
    augmentations `augment`, names of dataloader.augment.AUGMENTATIONS applied in order, with
    their parameters from `augment_params` (by parameter_key, e.g. {"cutout_size": 8} or a
    run's settings; an absent one takes its default). train=False: the split in order, only
    normalised. ``drop_last`` keeps full batches only, so every step has the same shapes (one
    compilation, CUDA graphs); the shuffle changes every epoch, so every image is still
    trained on. Otherwise every sample is kept and the last batch may be smaller.

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
        augment: Sequence[str] = ("crop-flip",),
        augment_params: Mapping[str, object] | None = None,
        num_classes: int | None = None,
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
        # Built (and the names checked) for evaluation too, where only normalisation is used.
        augmented = pipeline(augment, augment_params or {}, self._mean, self._std)
        self.augment = tuple(augment)
        self._transforms = augmented if train else pipeline((), {}, self._mean, self._std)
        self._mixes = train and mixes_targets(augment)
        if self._mixes and num_classes is None:
            raise ValueError(f"{' '.join(augment)} mixes the targets: give num_classes")
        self.num_classes = num_classes
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
            augment_generator = None
        first = self._resume["step"] if self._resume else 0
        self._resume = None
        for step in range(first, len(self._bounds)):
            start, stop = self._bounds[step]
            indices = torch.tensor_split(order[start:stop], self.world_size)[self.rank]
            host_random = None
            if self._mixes:
                key = _stream_seed(self.seed, self.epoch, HOST_STREAM, self.rank, step)
                host_random = random.Random(key)
            batch = Batch(
                images=self.images[indices],
                targets=self.labels[indices],
                indices=indices,
                generator=augment_generator,
                host_random=host_random,
                epoch=self.epoch,
                seed=self.seed,
                num_classes=self.num_classes,
            )
            for transform in self._transforms:
                batch = transform(batch)
            images = batch.images
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.step = step + 1
            yield images, batch.targets
