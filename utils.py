"""What train.py, eval.py and bench.py share: devices, precision, metrics, checkpoints, plots."""

import argparse
import csv
import json
import os
import pickle
import random
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import matplotlib
import torch
import torch.distributed as dist
from matplotlib.ticker import MaxNLocator
from torch import Tensor, nn

from dataloader import DataError
from models import build_model

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

UMASK = os.umask(0o022)
os.umask(UMASK)
CHECKPOINT_FORMAT = "fishnet-cifar-checkpoint"
CHECKPOINT_VERSION = 1
TOPK = (1, 5)


class UserError(Exception):
    """A mistake in the command, a file or the data: reported as one line, exit status 2."""


def run_cli(main: Callable[[], object]) -> None:
    """Runs a command-line entry point, turning user errors into one line and exit status 2."""
    program = Path(sys.argv[0]).name
    try:
        main()
    except (UserError, DataError) as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        sys.exit(130)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic


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


def is_main_process() -> bool:
    """Only the first process prints and writes files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sums a tensor over all processes, in place; a single process keeps it as it is."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


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


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast: it needs no loss scaling, unlike fp16."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def count_topk_correct(logits: Tensor, targets: Tensor) -> Tensor:
    """Correct predictions among the top 1 and top 5 (or all classes, if fewer), on the device."""
    k = min(max(TOPK), logits.shape[1])
    hits = logits.topk(k, dim=1).indices == targets[:, None]
    return torch.stack([hits[:, : min(topk, k)].any(dim=1).sum() for topk in TOPK])


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, num_classes: int, device: torch.device, amp: bool
) -> dict:
    """Loss, top-1, top-5 (percent) and the confusion matrix (rows: true class) of a split.

    Counts stay on the device until the end, so the loop never waits for the GPU.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros(len(TOPK), device=device, dtype=torch.int64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    for images, labels in loader:
        with autocast(device, amp):
            logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        correct += count_topk_correct(logits, labels)
        confusion += torch.bincount(
            labels * num_classes + logits.argmax(1), minlength=num_classes * num_classes
        )
    for total in (loss_sum, correct, confusion):
        all_reduce_sum(total)  # each process evaluated its own shard of the split
    confusion = confusion.view(num_classes, num_classes).cpu()
    samples = int(confusion.sum())
    top1, top5 = (100.0 * correct.cpu().double() / max(samples, 1)).tolist()
    return {
        "loss": loss_sum.item() / max(samples, 1),
        "top1": top1,
        "top5": top5,
        "samples": samples,
        "confusion": confusion,
    }


def per_class_accuracy(confusion: Tensor) -> list[float]:
    return (100.0 * confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Writes through a temporary file in the same folder, then renames it into place.

    A reader (or a run killed mid-save) sees either the old file or the new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp's 0600 would hide results from collaborators
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    checkpoint = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **checkpoint}
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: Path) -> dict:
    """Loads a checkpoint of this repository; anything else is a one-line UserError.

    ``weights_only=True`` unpickles tensors and plain containers only, so a checkpoint
    cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols of foreign files
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise UserError(f"{path}: not a readable checkpoint ({first_line(error)})") from None
        raise UserError(
            f"{path}: holds objects other than tensors and plain containers; "
            "refusing to load it, since unpickling them could run code"
        ) from None
    except Exception as error:
        raise UserError(f"{path}: not a readable checkpoint ({first_line(error)})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a checkpoint of this repository")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise UserError(
            f"{path}: checkpoint version {checkpoint.get('version')}, "
            f"this code reads version {CHECKPOINT_VERSION}"
        )
    return checkpoint


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__


def model_from_checkpoint(checkpoint: dict, path: Path) -> nn.Module:
    spec = checkpoint["model"]
    try:
        model = build_model(spec["name"], **spec["kwargs"])
        model.load_state_dict(checkpoint["state_dict"])
    except (ValueError, RuntimeError, TypeError) as error:
        raise UserError(
            f"{path}: the weights do not fit {spec['name']} ({first_line(error)})"
        ) from None
    return model


def write_history(history: list[dict], out_dir: Path) -> None:
    """history.json, history.csv (one row per epoch), acc.png and loss.png."""
    atomic_write(
        out_dir / "history.json", lambda tmp: tmp.write_text(json.dumps(history, indent=1))
    )

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)

    atomic_write(out_dir / "history.csv", write_csv)
    plot_history(history, out_dir)


def plot_history(history: list[dict], out_dir: Path) -> None:
    epochs = [row["epoch"] for row in history]
    style = {"marker": "o", "markersize": 3}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for split, color in (("train", "tab:blue"), ("valid", "tab:orange")):
        for k, linestyle in (("top1", "-"), ("top5", "--")):
            values = [row[f"{split}_{k}"] for row in history]
            label = f"{split} top-{k[-1]}"
            ax.plot(epochs, values, color=color, linestyle=linestyle, label=label, **style)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy", ylim=(0, 100))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out_dir / "acc.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(epochs, [r["train_loss"] for r in history], label="train", **style)
    ax.plot(epochs, [r["valid_loss"] for r in history], label="valid", **style)
    ax.set(xlabel="epoch", ylabel="cross-entropy", title="Loss", yscale="log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out_dir / "loss.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def plot_confusion(confusion: Tensor, classes: list[str], title: str, path: Path) -> None:
    size = max(5.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion.numpy(), cmap="Blues")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=90)
    ax.set_yticks(ticks, classes)
    if len(classes) <= 20:
        threshold = confusion.max().item() / 2
        for i in ticks:
            for j in ticks:
                value = confusion[i, j].item()
                color = "white" if value > threshold else "black"
                ax.text(j, i, value, ha="center", va="center", color=color, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
