"""Mixed precision: bf16 where the GPU computes it natively, fp16 with a gradient scaler on
older GPUs (V100, T4, RTX 20xx), or full fp32."""

from contextlib import nullcontext

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
AMP_CHOICES = ("auto", *AMP_DTYPES)


def resolve_amp(choice: str | bool | None, device: torch.device) -> str:
    """The precision a run uses: ``auto`` is bf16 on GPUs with native bf16 (Ampere and
    later), fp16 on older GPUs and fp32 on CPUs. Checkpoints written before fp16 existed
    hold True (bf16) or False."""
    if isinstance(choice, bool):
        return "bf16" if choice else "off"
    if choice in AMP_DTYPES:
        return choice
    if choice not in (None, "auto"):
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {choice!r}")
    if device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def autocast(device: torch.device, amp: str):
    """The autocast context of a precision; fp32 runs get a no-op context."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none (disabled)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
