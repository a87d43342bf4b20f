"""Data access for training and evaluation: manifests, cached splits and the on-device loader."""

from dataloader.dataloader import (
    AUGMENTATIONS,
    SPLITS,
    DataError,
    DeviceLoader,
    ManifestDataset,
    channel_stats,
    crop_flip,
    load_split,
    manifest_path,
    normalize,
    pca_lighting,
    random_crop_flip,
    random_resized_crop_flip,
    read_classes,
    read_manifest,
)

__all__ = [
    "AUGMENTATIONS",
    "SPLITS",
    "DataError",
    "DeviceLoader",
    "ManifestDataset",
    "channel_stats",
    "crop_flip",
    "load_split",
    "manifest_path",
    "normalize",
    "pca_lighting",
    "random_crop_flip",
    "random_resized_crop_flip",
    "read_classes",
    "read_manifest",
]
