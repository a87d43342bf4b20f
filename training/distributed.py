"""Devices and torchrun: one process per GPU, the first one prints and writes."""

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training.cli import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU here")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun every process joins the process group
    (NCCL between GPUs, one GPU per process; gloo on CPUs); otherwise (0, 1, device)."""
    device = resolve_device(device_name)
    if "LOCAL_RANK" not in os.environ:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def wait_for_all_processes() -> None:
    """Under torchrun, returns once every process has come here: at the end of a run no
    process tears down the process group while the first one still writes its files."""
    if dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Only the first process prints and writes files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def log(message: str) -> None:
    """Prints on the first process, above any progress bar."""
    if is_main_process():
        tqdm.write(message)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sums a tensor over all processes, in place; a single process keeps it as it is."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def distribute(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel under torchrun: gradients are averaged over the processes."""
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.index is not None else None
    )
