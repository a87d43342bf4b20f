"""The weights of the authors' FishNet release (kevin-ssy/FishNet) as a state dict of this
repository's FishNet; ``python -m tools.convert`` writes them as a checkpoint.

Both implementations have the same tensors; only the names differ. Theirs: the stem is
``conv1``..``conv3``, the fish ``fish.fish.<stage>.<part>``, where each stage is a list
(tail: units, pool; bridge: score, score conv, units, SE gate; body and head: units,
transfer units, sampling; the last stage then the classifier's neck and fc) and each
bottleneck names its layers ``bn1, conv1, .., bn3, conv3, shortcut`` as ours does. Every tensor is
renamed by these rules and checked against our shape, so a tensor that does not fit is
refused rather than loaded into the wrong place.
"""

import torch

from .fishnet import CONFIGS, FishConfig

# The layers of their bottleneck, which has the names of ours: a unit's tensors keep them.
BOTTLENECK_LAYERS = ("bn1", "conv1", "bn2", "conv2", "bn3", "conv3", "shortcut")
# Our module prefixes that hold a sequence of bottlenecks.
UNIT_SEQUENCES = ("units.", "transfer.")


class ConversionError(ValueError):
    """The authors' state dict does not fit the model; the message is one line."""


def authors_prefixes(config: FishConfig) -> dict[str, str]:
    """Their module prefixes -> ours, for a FishNet of ``config``."""
    prefixes = {f"conv{i + 1}.": f"stem.{i}." for i in range(3)}
    num_tail, num_stages = config.num_tail, len(config.units)
    num_body = num_tail
    for stage in range(num_stages):
        theirs = f"fish.fish.{stage}."
        if stage < num_tail:
            prefixes[theirs + "0."] = f"tail.{stage}.units."
        elif stage == num_tail:
            prefixes |= {
                theirs + "0.": "bridge.score.",
                theirs + "1.": "bridge.score.5.",
                theirs + "2.": "bridge.units.",
                theirs + "3.0.": "bridge.gate.",
            }
        else:
            j = stage - num_tail - 1
            ours = f"body.{j}." if j < num_body else f"head.{j - num_body}."
            prefixes[theirs + "0."] = ours + "units."
            prefixes[theirs + "1."] = ours + "transfer."
    last = f"fish.fish.{num_stages - 1}."
    prefixes[last + "3."] = "classifier.neck."
    prefixes[last + "4.1."] = "classifier.fc."
    return prefixes


def our_name(key: str, prefixes: dict[str, str]) -> str:
    matches = [prefix for prefix in prefixes if key.startswith(prefix)]
    if not matches:
        raise ConversionError(f"{key}: no counterpart in this repository's FishNet")
    theirs = max(matches, key=len)
    ours, rest = prefixes[theirs], key[len(theirs) :]
    if ours.endswith(UNIT_SEQUENCES):
        parts = rest.split(".", 2)
        if len(parts) != 3:
            raise ConversionError(f"{key}: not a tensor of a bottleneck (unit.layer.tensor)")
        layer = parts[1]
        if layer not in BOTTLENECK_LAYERS:
            raise ConversionError(f"{key}: {layer!r} is not a layer of a bottleneck")
    return ours + rest


def unwrap(checkpoint: object) -> dict[str, torch.Tensor]:
    """The bare state dict of a checkpoint: their main.py saves {"state_dict": ..} of a
    DataParallel model, whose names start with ``module.``; a ConversionError for anything
    but a dict of names to tensors, bare or under ``state_dict``."""
    state = checkpoint
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
    if not (
        isinstance(state, dict)
        and state
        and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) and v.layout == torch.strided
            for k, v in state.items()
        )
    ):
        raise ConversionError(
            "not a FishNet checkpoint: no dict of names to tensors (dense ones), bare or as "
            "'state_dict'"
        )
    return {key.removeprefix("module."): value for key, value in state.items()}


def convert_state_dict(
    state: dict[str, torch.Tensor], name: str, width: float = 1.0
) -> tuple[dict[str, torch.Tensor], int]:
    """``state`` (their names, unwrapped) as a state dict of our ``name`` with the ImageNet
    stem; also returns the number of classes. A ConversionError says what does not fit."""
    from . import build_model

    if name not in CONFIGS:
        raise ConversionError(f"unknown FishNet {name!r}; choose one of: {', '.join(CONFIGS)}")
    fc_bias = state.get(f"fish.fish.{len(CONFIGS[name].units) - 1}.4.1.bias")
    if fc_bias is None or fc_bias.dim() != 1 or len(fc_bias) == 0:
        raise ConversionError(f"no classifier of a {name} in the checkpoint")
    with torch.device("meta"):  # names and shapes only
        model = build_model(name, num_classes=len(fc_bias), stem="imagenet", width=width)
    ours = model.state_dict()
    prefixes = authors_prefixes(CONFIGS[name])
    converted = {}
    for key, tensor in state.items():
        target = our_name(key, prefixes)
        if target not in ours:
            raise ConversionError(f"{key}: {target} is not a tensor of {name}")
        if tensor.shape != ours[target].shape:
            raise ConversionError(
                f"{key} has shape {tuple(tensor.shape)}, but {name}'s {target} has "
                f"{tuple(ours[target].shape)}"
            )
        if tensor.untyped_storage().nbytes() < tensor.numel() * tensor.element_size():
            # A view that repeats a few values (stride 0) can claim any shape for no bytes
            # in the file; saved as weights, the model it describes could not be built.
            raise ConversionError(f"{key} has fewer values than its shape {tuple(tensor.shape)}")
        converted[target] = tensor
    for target in ours.keys() - converted.keys():
        # PyTorch before 0.4.1 (the authors' release) saved no num_batches_tracked.
        if not target.endswith("num_batches_tracked"):
            raise ConversionError(f"the checkpoint has no tensor for {name}'s {target}")
        converted[target] = torch.zeros((), dtype=torch.long)
    return {key: converted[key] for key in ours}, len(fc_bias)


def infer_model(state: dict[str, torch.Tensor]) -> str:
    """The FishNet whose stages have as many units as the checkpoint's."""
    for name in CONFIGS:
        try:
            convert_state_dict(state, name)
        except ConversionError:
            continue
        return name
    raise ConversionError(
        f"the checkpoint fits none of {', '.join(CONFIGS)}; name one with --model"
    )
