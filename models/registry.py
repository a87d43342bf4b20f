"""The one registry of the models: ``@register_model`` on a factory is all a new model needs.

A registered factory is built by name (:func:`build_model`), listed by :func:`model_names`,
is an entry point of hubconf.py and, when timm is installed (it is not a dependency), a
timm model: ``timm.create_model("fishnet99", features_only=True, out_indices=(5, 6, 7))``
then builds it like timm's own.

A factory takes ``num_classes``, ``stem``, ``width`` and ``init``, and timm's
``features_only`` and ``out_indices``; it returns a :class:`~models.features.Backbone`, or
with ``features_only`` its :class:`~models.features.FeatureListNet`. Its docstring is the
model's description in torch.hub and timm.
"""

from collections.abc import Callable, Mapping

from torch import nn

Factory = Callable[..., nn.Module]

MODELS: dict[str, Factory] = {}
"""The registered factories by name (the factory's), in the order of registration."""
TIMM_NAMES: dict[str, str] = {}
"""Each registered model's name in timm's registry."""


def register_model(timm_name: str | None = None) -> Callable[[Factory], Factory]:
    """Registers the decorated factory under its name, and with timm as ``timm_name`` (by
    default the same name: a model that timm has under this name, another network, needs
    another)."""

    def register(factory: Factory) -> Factory:
        name = factory.__name__
        if name in MODELS:
            raise ValueError(f"a model called {name!r} is registered already")
        MODELS[name] = factory
        TIMM_NAMES[name] = timm_name or name
        register_with_timm({name: factory})
        return factory

    return register


def unregister_model(name: str) -> None:
    """Removes model ``name`` from :data:`MODELS` (timm's registry keeps it)."""
    del MODELS[name], TIMM_NAMES[name]


def timm_entry(factory: Factory, timm_name: str) -> Factory:
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


def register_with_timm(models: Mapping[str, Factory]) -> bool:
    """Registers ``models`` (registered names and factories) with timm; False without timm."""
    try:
        from timm.models import register_model as timm_register_model
    except ImportError:
        return False
    for name, factory in models.items():
        timm_register_model(timm_entry(factory, TIMM_NAMES[name]))
    return True
