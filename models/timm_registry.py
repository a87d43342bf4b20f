"""Registers the models with timm, when timm is installed (it is not a dependency).

``timm.create_model("fishnet99", features_only=True, out_indices=(5, 6, 7))`` then builds
them like timm's own. The ResNet baselines are registered as ``preact_resnet50`` and
``preact_resnet101``, since timm's ``resnet50`` is another (post-activation) network.
"""

from collections.abc import Callable, Mapping

from torch import nn

TIMM_NAMES = {
    "fishnet99": "fishnet99",
    "fishnet150": "fishnet150",
    "fishnet201": "fishnet201",
    "resnet50": "preact_resnet50",
    "resnet101": "preact_resnet101",
}


def timm_entry(factory: Callable[..., nn.Module], timm_name: str) -> Callable[..., nn.Module]:
    """``factory`` with the arguments timm's ``create_model`` adds (there are no pretrained
    weights to download: load a checkpoint of this repository instead)."""

    def entry(
        pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs
    ) -> nn.Module:
        if pretrained:
            raise ValueError(f"{timm_name} has no pretrained weights to download")
        return factory(**kwargs)

    entry.__name__ = entry.__qualname__ = timm_name
    entry.__module__ = __name__  # timm files each entry under its function's module
    entry.__doc__ = factory.__doc__
    return entry


def register_with_timm(models: Mapping[str, Callable[..., nn.Module]]) -> bool:
    """Registers ``models`` (this repository's names and factories); False without timm."""
    try:
        from timm.models import register_model
    except ImportError:
        return False
    for name, factory in models.items():
        register_model(timm_entry(factory, TIMM_NAMES[name]))
    return True
