"""Parameter and multiply-accumulate counts, as the architecture tables report them."""

import copy

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one image's forward pass.

    ``torch.utils.flop_counter`` counts the FLOPs of convolutions and matrix products
    (two per multiply-accumulate) and nothing else. The pass runs on a copy on the meta
    device, so it computes nothing and leaves the model untouched.
    """
    # Imported here: torch.utils.flop_counter loads triton where it is installed, about
    # 0.4 s that every `import models` would otherwise pay.
    from torch.utils.flop_counter import FlopCounterMode

    meta_model = copy.deepcopy(model).to("meta").eval()
    image = torch.empty(1, 3, image_size, image_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(image)
    return counter.get_total_flops() // 2
