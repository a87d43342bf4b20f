"""Data access for training and evaluation: manifests, cached splits and the on-device loader.

The manifest readers (``dataloader.manifests``) need no torch; the loader
(``dataloader.dataloader``) is imported on first use of one of its names, so that
data/download_data.py, which reads manifests only, starts without torch (about 2 s).
"""

import importlib

from dataloader.manifests import (
    SPLITS,
    DataError,
    manifest_path,
    manifest_sha256,
    read_classes,
    read_manifest,
)

_LOADER_NAMES = (
    "AUGMENTATIONS",
    "DeviceLoader",
    "ManifestDataset",
    "channel_stats",
    "crop_flip",
    "cutout",
    "load_split",
    "normalize",
    "pca_lighting",
    "random_crop_flip",
    "random_resized_crop_flip",
)

__all__ = [
    "SPLITS",
    "DataError",
    "manifest_path",
    "manifest_sha256",
    "read_classes",
    "read_manifest",
    *_LOADER_NAMES,
]


def __getattr__(name: str):
    if name in _LOADER_NAMES:
        return getattr(importlib.import_module("dataloader.dataloader"), name)
    raise AttributeError(f"module 'dataloader' has no attribute {name!r}")
