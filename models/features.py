"""timm's backbone interface: ``feature_info`` and ``features_only`` models.

A segmentation or detection library asks a backbone for some of its feature maps
(``out_indices``) and reads their channels and strides from ``feature_info`` to build
its decoder. :class:`Backbone` is that interface, which every registered model has, and
:class:`FeatureListNet` builds timm's ``features_only`` model on it.
"""

from torch import Tensor, nn


def feature_entry(name: str, channels: int, reduction: int, module: str) -> dict:
    """One ``feature_info`` entry: timm's keys, plus this repository's ``name``/``channels``."""
    return {
        "num_chs": channels,
        "reduction": reduction,
        "module": module,
        "name": name,
        "channels": channels,
    }


class FeatureInfo(list):
    """A list of ``feature_info`` entries with timm's per-key accessors."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]

    def module_name(self) -> list[str]:
        return [info["module"] for info in self]


def resolve_indices(out_indices: tuple[int, ...] | None, num_features: int) -> tuple[int, ...]:
    """``out_indices`` as non-negative indices (negative ones count from the end, as in timm);
    ``None`` selects every feature."""
    if out_indices is None:
        return tuple(range(num_features))
    resolved = tuple(i + num_features if i < 0 else i for i in out_indices)
    if not resolved or any(not 0 <= i < num_features for i in resolved):
        raise ValueError(
            f"out_indices must be indices of the {num_features} features "
            f"(0..{num_features - 1}, or negative from the end); got {tuple(out_indices)}"
        )
    return resolved


class Backbone(nn.Module):
    """The interface of every registered model (timm's), which :class:`FeatureListNet` uses.

    - ``feature_info``: a :class:`FeatureInfo`, one entry per feature map, in order;
    - ``forward_features(x)``: every feature map, keyed by its ``feature_info`` name;
    - ``forward_head(features)``: the logits of ``forward_features``' output, by default
      the ``classifier`` applied to the last feature;
    - ``truncate(num_features)``: keeps the first ``num_features`` features only;
    - ``get_classifier()``: the layer that outputs the logits.

    ``forward(x)`` is ``forward_head(forward_features(x))``.
    """

    feature_info: FeatureInfo
    classifier: nn.Module | None

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward_head(self, features: dict[str, Tensor]) -> Tensor:
        return self.classifier(features[self.feature_info[-1]["name"]])

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The layer that outputs the logits (timm's name for it)."""
        raise NotImplementedError

    def truncate(self, num_features: int) -> None:
        """Drops the classifier and the ``feature_info`` of the features from index
        ``num_features`` on; a subclass first drops the stages that compute them, so that
        every parameter left takes part in ``forward_features``."""
        self.classifier = None
        self.feature_info = FeatureInfo(self.feature_info[:num_features])


class FeatureListNet(nn.Module):
    """A backbone returning the chosen feature maps as a list (timm's ``features_only``).

    The stages after the last chosen feature and the classifier are dropped (the wrapped
    model's ``truncate``), so every parameter left is used. ``feature_info`` lists the
    chosen features only, in the order of ``forward``'s list.
    """

    def __init__(self, model: Backbone, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.out_indices = resolve_indices(out_indices, len(model.feature_info))
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)
        model.truncate(max(self.out_indices) + 1)
        self.model = model

    def forward(self, x: Tensor) -> list[Tensor]:
        features = list(self.model.forward_features(x).values())
        return [features[i] for i in self.out_indices]


def as_backbone(
    model: Backbone, features_only: bool, out_indices: tuple[int, ...] | None
) -> nn.Module:
    """What a factory returns: ``model``, or with ``features_only`` its :class:`FeatureListNet`."""
    if features_only:
        return FeatureListNet(model, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices needs features_only=True")
    return model
