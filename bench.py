"""Benchmarks: python bench.py <subcommand> [options].

data   images per second of the on-device loader (DeviceLoader, crop-flip) against a
       torchvision DataLoader (PIL decode and transforms in worker processes) over the
       same training manifest, on the same device
"""

import argparse
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from dataloader import (
    DeviceLoader,
    ManifestDataset,
    channel_stats,
    load_split,
    manifest_path,
)
from utils import non_negative_int, positive_float, positive_int, run_cli

DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "cifar10"


def images_per_second(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    seconds: float,
) -> float:
    """Rate over `seconds` of batches, not counting the first (start-up, warm-up)."""
    iterator = iter(batches)
    next(iterator)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for images, labels in iterator:
            images.to(device, non_blocking=True)
            labels.to(device, non_blocking=True)
            count += images.shape[0]
            if time.perf_counter() - started >= seconds:
                break
        else:
            iterator = iter(batches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - started)


def bench_data(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    images, labels = load_split(args.data, "train")
    mean, std = channel_stats(images)
    fast = DeviceLoader(
        images, labels, args.batch_size, mean=mean, std=std, train=True, device=device
    )
    baseline = DataLoader(
        ManifestDataset(
            manifest_path(args.data, "train"),
            transform=transforms.Compose(
                [
                    transforms.RandomCrop(32, padding=4),
                    transforms.RandomHorizontalFlip(),
                    transforms.ToTensor(),
                    transforms.Normalize(mean, std),
                ]
            ),
        ),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    print(
        f"{len(images):,} training images, batch {args.batch_size}, device {device}, "
        f"{args.seconds:g} s each",
        flush=True,
    )
    fast_rate = images_per_second(fast, device, args.seconds)
    print(f"DeviceLoader (crop-flip):                    {fast_rate:12,.0f} images/s", flush=True)
    baseline_rate = images_per_second(baseline, device, args.seconds)
    print(
        f"DataLoader (PIL, {args.workers} workers, torchvision transforms): "
        f"{baseline_rate:9,.0f} images/s"
    )
    print(f"ratio: {fast_rate / baseline_rate:.1f}x")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmarks of this repository.")
    subcommands = parser.add_subparsers(dest="subcommand", required=True)
    data = subcommands.add_parser(
        "data", help="on-device loader against a torchvision DataLoader, in images per second"
    )
    data.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"prepared dataset folder (default: {DEFAULT_DATA})",
    )
    data.add_argument(
        "--batch-size", type=positive_int, default=256, help="batch size (default: 256)"
    )
    data.add_argument(
        "--workers",
        type=non_negative_int,
        default=2,
        help="DataLoader worker processes (default: 2)",
    )
    data.add_argument(
        "--seconds",
        type=positive_float,
        default=10.0,
        help="time to measure each loader (default: 10)",
    )
    data.add_argument("--device", default="cpu", help="device of both loaders (default: cpu)")
    data.set_defaults(run=bench_data)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    run_cli(main)
