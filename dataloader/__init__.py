"""Data access for training and evaluation: manifests, cached splits, augmentations and the
on-device loader.

The manifest readers (``dataloader.manifests``) need no torch; the other modules are
imported on first use of one of their names, so that data/download_data.py, which reads
manifests only, starts without torch (about 2 s).
"""

import importlib

from dataloader.manifests import (
    DEFAULT_DATA,
    SPLITS,
    DataError,
    manifest_path,
    manifest_sha256,
    read_classes,
    read_manifest,
)

# Name -> the module that defines it, imported when the name is first used.
_LAZY_NAMES = {
    "AUGMENTATIONS": "dataloader.augment",
    "DeviceLoader": "dataloader.loader",
    "ManifestDataset": "dataloader.loader",
    "channel_stats": "dataloader.splits",
    "crop_flip": "dataloader.augment",
    "cutout": "dataloader.augment",
    "load_split": "dataloader.splits",
    "normalize": "dataloader.augment",
    "pca_lighting": "dataloader.augment",
    "random_crop_flip": "dataloader.augment",
    "random_resized_crop_flip": "dataloader.augment",
}

__all__ = [
    "DEFAULT_DATA",
    "SPLITS",
    "DataError",
    "manifest_path",
    "manifest_sha256",
    "read_classes",
    "read_manifest",
    *_LAZY_NAMES,
]


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'dataloader' has no attribute {name!r}")
