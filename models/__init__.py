"""The model registry shared by training, evaluation and the benchmarks."""

from torch import nn

from .complexity import count_macs, count_parameters
from .fishnet import FishNet, check_width, fishnet99, fishnet150, fishnet201
from .resnet import PreActResNet, resnet50, resnet101

MODELS = {f.__name__: f for f in (fishnet99, fishnet150, fishnet201, resnet50, resnet101)}


def model_names() -> list[str]:
    return list(MODELS)


def build_model(name: str, **kwargs) -> nn.Module:
    """Builds a registered model; kwargs are the factory's (num_classes, stem, width)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = [
    "MODELS",
    "FishNet",
    "PreActResNet",
    "build_model",
    "check_width",
    "count_macs",
    "count_parameters",
    "model_names",
]
