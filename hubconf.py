"""torch.hub entry points, one per registered model (models.registry), made at import.

    model = torch.hub.load("path/to/this/repo", "fishnet99", source="local", width=0.5)
    backbone = torch.hub.load(REPO, "fishnet99", source="local", features_only=True,
                              out_indices=(5, 6, 7))
    trained = torch.hub.load(REPO, "fishnet99", source="local", checkpoint="runs/x/best.pt")
    probabilities = trained(trained.preprocess("cat.png")[None]).softmax(dim=1)

Every entry point takes its factory's keyword arguments (num_classes, stem, width, init,
FishNet's ablation switches, timm's features_only and out_indices) and ``checkpoint``: a
checkpoint written by train.py, whose model then replaces the factory's (only
features_only and out_indices may be given with it). Such a model comes back as predict.py
uses it: in evaluation mode, with the weights validation scored, ``pretrained_cfg`` (timm's
keys: input_size, mean, std, interpolation, crop_pct, num_classes, label_names) and
``preprocess``, which turns an image file or PIL image into its normalised input. Without a
checkpoint a model is a fresh one, in training mode, as torchvision's are.
"""

import contextlib
import os
import sys

import torch

dependencies = ["torch"]

# hubconf.py runs in the caller's process, whose own modules may be called "models",
# "dataloader", "training" or "utils" too. This repository's are imported with the caller's
# set aside and the repository first on sys.path, then kept here instead of in sys.modules,
# so that neither stands in for the other. All that the entry points use is imported inside
# _repository_imports(): an import after it (dataloader's lazy names too) would find the
# caller's modules.
_REPOSITORY = os.path.dirname(os.path.abspath(__file__))
_TOP_LEVEL_NAMES = ("models", "dataloader", "training", "utils")
_repository_modules = {}


def _take_modules():
    """Removes the modules named by _TOP_LEVEL_NAMES (submodules too) from sys.modules and
    returns them."""
    names = [name for name in sys.modules if name.partition(".")[0] in _TOP_LEVEL_NAMES]
    return {name: sys.modules.pop(name) for name in names}


@contextlib.contextmanager
def _repository_imports():
    """Imports inside resolve these names to this repository's modules only."""
    callers, path = _take_modules(), sys.path[:]
    sys.modules.update(_repository_modules)
    sys.path.insert(0, _REPOSITORY)
    try:
        yield
    finally:
        _repository_modules.update(_take_modules())
        sys.modules.update(callers)
        sys.path[:] = path


with _repository_imports():
    from models import MODELS as _MODELS
    from models import build_model as _build_model
    from models.features import as_backbone as _as_backbone


def _load_trained(path):
    """(model name, model ready to predict) of a checkpoint written by train.py: on the CPU,
    in evaluation mode, with ``pretrained_cfg`` and ``preprocess``."""
    # Imported on first use: training.checkpoint needs the data packages (numpy, Pillow),
    # which a model without a checkpoint does not.
    with _repository_imports():
        from training.checkpoint import load_checkpoint, load_ready_model

    checkpoint = load_checkpoint(path)
    ready = load_ready_model(path, torch.device("cpu"), amp="off", checkpoint=checkpoint)
    return checkpoint["model"]["name"], ready.model


def _entry(name, checkpoint, features_only, out_indices, kwargs):
    if checkpoint is None:
        return _build_model(name, features_only=features_only, out_indices=out_indices, **kwargs)
    if kwargs:
        raise ValueError(
            f"{checkpoint} defines the model; do not also pass {', '.join(sorted(kwargs))}"
        )
    trained_name, model = _load_trained(checkpoint)
    if trained_name != name:
        raise ValueError(f"{checkpoint} holds a {trained_name}, not a {name}")
    backbone = _as_backbone(model, features_only, out_indices).eval()
    backbone.pretrained_cfg, backbone.preprocess = model.pretrained_cfg, model.preprocess
    return backbone


def _entry_point(name, factory):
    """The entry point of registered model ``name``, described by its factory's docstring."""

    def entry_point(checkpoint=None, features_only=False, out_indices=None, **kwargs):
        return _entry(name, checkpoint, features_only, out_indices, kwargs)

    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__doc__ = factory.__doc__
    return entry_point


# torch.hub lists the module's public callables as its entry points.
globals().update({name: _entry_point(name, factory) for name, factory in _MODELS.items()})
