"""Devices and torchrun: one process per GPU, the first one prints and writes."""

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from utils import UserError, one_line


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


# What torchrun sets for every process besides LOCAL_RANK; init_process_group reads them.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_SECONDS = 600  # NCCL's own default for a collective
MAX_PROCESSES = 1 << 16


def device_name(device: torch.device) -> str:
    """The hardware a device is, as results tables and plot titles name it: the GPU's name,
    or the CPU with the cores this process may use."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return f"{len(usable) if usable else os.cpu_count()}-core CPU"


def _launch_settings() -> tuple[int, int, int]:
    """(local rank, rank, world size) from torchrun's variables, checked: a process started
    by hand with some of them would otherwise fail with a traceback or wait forever."""
    missing = [name for name in LAUNCH_VARIABLES if not os.environ.get(name)]
    if missing:
        raise UserError(
            f"LOCAL_RANK is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            "not: start the processes with torchrun, or unset LOCAL_RANK"
        )
    try:
        local_rank, rank, world_size, port = (
            int(os.environ[name]) for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")
        )
    except ValueError:
        raise UserError(
            "LOCAL_RANK, RANK, WORLD_SIZE and MASTER_PORT must be whole numbers"
        ) from None
    in_range = 0 <= rank < world_size <= MAX_PROCESSES and 0 <= local_rank < world_size
    if not (in_range and 0 < port < 65536):
        raise UserError(
            f"RANK {rank}, LOCAL_RANK {local_rank}, WORLD_SIZE {world_size} or MASTER_PORT "
            f"{port} out of range"
        )
    return local_rank, rank, world_size


def init_distributed(
    device_name: str, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun every process joins the process group
    (NCCL between GPUs, one GPU per process; gloo on CPUs); otherwise (0, 1, device).

    ``timeout_seconds`` bounds the wait for the other processes to join, and for any
    collective operation afterwards: a process whose peers never come ends with one line.
    """
    device = resolve_device(device_name)
    if "LOCAL_RANK" not in os.environ:
        return 0, 1, device
    local_rank, rank, world_size = _launch_settings()
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        if rank == 0:
            tqdm.write(
                f"joining {world_size} processes at {address} (waiting up to "
                f"{timeout_seconds:g} s for them)"
            )
        try:
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo",
                timeout=datetime.timedelta(seconds=timeout_seconds),
            )
        except (RuntimeError, ValueError) as error:  # torch's DistError is a RuntimeError
            raise UserError(
                f"the {world_size} processes did not all join at {address} within "
                f"{timeout_seconds:g} s ({one_line(error)}); start every one of them, "
                "as torchrun does"
            ) from None
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
