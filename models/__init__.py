"""The model registry shared by training, evaluation and the benchmarks."""

from collections.abc import Mapping

from torch import nn

from .blocks import INITS, STEM_INPUT_SIZES, upgrade_state_dict
from .complexity import count_macs, count_parameters
from .features import Backbone, FeatureInfo, FeatureListNet

# Importing fishnet and resnet registers their factories.
from .fishnet import CONFIGS, SWITCHES, FishNet, check_width
from .registry import MODELS, register_model
from .resnet import PreActResNet


def model_names() -> list[str]:
    """The registered models (:func:`~models.registry.register_model`)."""
    return list(MODELS)


def build_model(name: str, **kwargs) -> nn.Module:
    """Builds a registered model; kwargs are the factory's: num_classes, stem, width, init
    (:data:`INITS`), FishNet's ablation switches, and timm's features_only and out_indices."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


def switch_flags(key: str, value: object) -> list[str]:
    """train.py's flags for switch ``key`` set to ``value``: ``["--downsample", "conv"]``,
    ``["--no-transfer"]``."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    return [flag, str(value)]


def switch_kwargs(name: str, options: Mapping[str, object]) -> dict:
    """The ablation switches in ``options`` (e.g. ``vars(args)``) as kwargs of model ``name``.

    A FishNet gets every switch of :data:`SWITCHES` (the paper's choice where ``options``
    has none). Other models have no switches: they get none, and a ValueError names any
    switch that ``options`` sets to other than the paper's choice.
    """
    values = {key: options.get(key, choices[0]) for key, choices in SWITCHES.items()}
    if name in CONFIGS:
        return values
    changed = [
        " ".join(switch_flags(key, value))
        for key, value in values.items()
        if value != SWITCHES[key][0]
    ]
    if changed:
        raise ValueError(
            f"{', '.join(changed)}: the ablation switches apply to FishNet only, not {name}"
        )
    return {}


__all__ = [
    "INITS",
    "MODELS",
    "STEM_INPUT_SIZES",
    "SWITCHES",
    "Backbone",
    "FeatureInfo",
    "FeatureListNet",
    "FishNet",
    "PreActResNet",
    "build_model",
    "check_width",
    "count_macs",
    "count_parameters",
    "model_names",
    "register_model",
    "switch_flags",
    "switch_kwargs",
    "upgrade_state_dict",
]
