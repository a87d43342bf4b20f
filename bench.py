"""Benchmarks: python bench.py <subcommand> [options].

data   images per second of the on-device loader (DeviceLoader, crop-flip) against a
       torchvision DataLoader (PIL decode and transforms in worker processes) over the
       same training manifest, on the same device
train  training images per second and TFLOP/s of this repository's pipeline (data on the
       device, channels-last, bf16, torch.compile, fused SGD) against a pipeline like the
       seeds' (DataLoader with PIL transforms, fp32, NCHW, eager), same model and device
tta    time to accuracy: trains a recipe (train.py's flags and presets) until the chosen
       split reaches each target top-1 or the time budget ends

Speed is only compared within one run: the two pipelines run side by side.
"""

import argparse
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

import train
from dataloader import (
    DeviceLoader,
    ManifestDataset,
    channel_stats,
    load_split,
    manifest_path,
    read_classes,
)
from models import build_model, count_macs
from train import log, training_step
from utils import (
    all_reduce_sum,
    init_distributed,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
)

DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "cifar10"
# Dense bf16 tensor-core peaks (TFLOP/s) of the GPUs this benchmark knows by name.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


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


def seed_style_loader(
    data: Path, batch_size: int, workers: int, mean, std, device: torch.device
) -> DataLoader:
    """The seeds' input pipeline: PIL decode and torchvision transforms in worker processes."""
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    return DataLoader(
        ManifestDataset(manifest_path(data, "train"), transform=transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


def bench_data(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    images, labels = load_split(args.data, "train")
    mean, std = channel_stats(images)
    fast = DeviceLoader(
        images, labels, args.batch_size, mean=mean, std=std, train=True, device=device
    )
    baseline = seed_style_loader(args.data, args.batch_size, args.workers, mean, std, device)
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


def forever(loader: Iterable) -> Iterator:
    while True:
        yield from loader


def training_rate(model, loader, optimizer, amp: bool, device, steps: int, warmup: int) -> float:
    """Training images per second over `steps` steps, after `warmup` (compilation, autotuning)."""
    criterion = nn.CrossEntropyLoss()
    batches = forever(loader)
    model.train()
    images_seen = 0
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            started = time.perf_counter()
            images_seen = 0
        images, labels = next(batches)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        training_step(model, images, labels, criterion, optimizer, amp)
        images_seen += len(labels)
    synchronize(device)
    return images_seen / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def bench_train(args: argparse.Namespace) -> None:
    run = train.parse_args(
        [
            *("--model", args.model, "--width", args.width, "--data", str(args.data)),
            *("--batch-size", str(args.batch_size), "--device", args.device),
        ]
    )
    rank, world_size, device = init_distributed(run.device)
    amp = device.type == "cuda" if args.amp is None else args.amp
    compiled = device.type == "cuda" if args.compile is None else args.compile
    torch.backends.cudnn.benchmark = True
    images, labels = load_split(run.data, "train")
    mean, std = channel_stats(images)
    classes = len(read_classes(run.data))

    def fresh_model(channels_last: bool) -> nn.Module:
        torch.manual_seed(0)
        model = build_model(run.model, num_classes=classes, width=run.width).to(device)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    reference = fresh_model(False)
    flops_per_image = 6 * count_macs(reference, 32)  # forward 2 per MAC, backward 4
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    log(
        f"{run.model} (width {run.width}), batch {run.batch_size} per process, "
        f"{world_size} process(es) on {device.type} ({name}), "
        f"{flops_per_image / 6e6:.1f} M MACs per image, {args.steps} steps after {args.warmup}"
    )

    ours = fresh_model(True)
    loader = DeviceLoader(
        images, labels, run.batch_size, mean=mean, std=std, train=True, device=device,
        channels_last=True, rank=rank, world_size=world_size,
    )  # fmt: skip
    optimizer = train.make_optimizer(run, ours, device)
    model = train.distribute(ours, device)
    model = train.compile_model(model) if compiled else model
    ours_rate = training_rate(model, loader, optimizer, amp, device, args.steps, args.warmup)

    seed_loader = seed_style_loader(run.data, run.batch_size, args.workers, mean, std, device)
    seed_optimizer = torch.optim.SGD(
        reference.parameters(), lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay
    )
    seed_model = train.distribute(reference, device)
    seed_rate = training_rate(
        seed_model, seed_loader, seed_optimizer, False, device, args.steps, args.warmup
    )
    # Every process measured its own rate; the totals are their sums.
    ours_rate, seed_rate = all_reduce_sum(torch.tensor([ours_rate, seed_rate])).tolist()

    features = ", ".join(
        ["data on the device", "channels-last"]
        + (["bf16"] if amp else [])
        + (["torch.compile"] if compiled else [])
    )
    header = f"{'pipeline':<72} {'images/s':>10} {'TFLOP/s':>8} {'of peak':>8}"
    if world_size > 1:
        header += f" {'images/s per process':>21}"
    log(header)
    for label, rate in (
        (f"this repository ({features})", ours_rate),
        (f"seed-style (DataLoader + PIL, {args.workers} workers, fp32, NCHW, eager)", seed_rate),
    ):
        tflops = rate * flops_per_image / 1e12
        share = f"{100 * tflops / (peak * world_size):.1f} %" if peak else "-"
        line = f"{label:<72} {rate:>10,.0f} {tflops:>8.3g} {share:>8}"
        if world_size > 1:
            line += f" {rate / world_size:>21,.0f}"
        log(line)
    if not peak:
        log("peak unknown for this device: pass --peak-tflops to see the fraction")
    log(f"ratio: {ours_rate / seed_rate:.2f}x")
    train.shutdown_distributed()


def bench_tta(args: argparse.Namespace) -> None:
    train_flags = args.train_flags
    run = train.parse_args(
        ["--preset", args.preset, "--out", str(args.out), "--overwrite", *train_flags]
    )
    targets = sorted(args.targets)
    reached: dict[float, tuple[float, int]] = {}
    final: dict = {}
    overhead = 0.0  # this benchmark's own evaluations, not part of the training time

    def on_epoch(row: dict, evaluate_split) -> bool:
        nonlocal overhead
        wall = row["elapsed"] - overhead
        started = time.perf_counter()
        if args.split == "valid":
            top1, top5 = row["valid_top1"], row["valid_top5"]
        else:
            result = evaluate_split(args.split)
            top1, top5 = result["top1"], result["top5"]
        overhead += time.perf_counter() - started
        for target in targets:
            if target not in reached and top1 >= target:
                reached[target] = (wall, row["epoch"])
        final.update(epoch=row["epoch"], wall=wall, top1=top1, top5=top5)
        print(
            f"tta: epoch {row['epoch']}, {wall:.1f} s: {args.split} top-1 {top1:.2f} %", flush=True
        )
        return len(reached) == len(targets) or wall >= args.budget

    train.train(run, on_epoch)
    print(f"\ntime to {args.split} top-1 ({run.model}, preset {args.preset}):")
    print("| target | wall time | epoch |\n|---|---|---|")
    for target in targets:
        wall, epoch = reached.get(target, (None, None))
        when = f"{wall:.1f} s" if wall is not None else f"not reached in {final['wall']:.0f} s"
        print(f"| {target:.2f} % | {when} | {epoch or '-'} |")
    print(
        f"final after {final['epoch']} epochs, {final['wall']:.1f} s: {args.split} top-1 "
        f"{final['top1']:.2f} %, top-5 {final['top5']:.2f} %"
    )


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

    training = subcommands.add_parser(
        "train", help="this pipeline against a seed-style one, in training images per second"
    )
    training.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared dataset")
    training.add_argument("--model", default="fishnet99")
    training.add_argument("--width", default="1.0", help="channel multiplier")
    training.add_argument("--batch-size", type=positive_int, default=256)
    training.add_argument("--steps", type=positive_int, default=50, help="timed steps")
    training.add_argument("--warmup", type=positive_int, default=10, help="untimed steps first")
    training.add_argument("--workers", type=non_negative_int, default=2, help="seed-style loader")
    training.add_argument("--device", default="auto")
    training.add_argument("--amp", action=argparse.BooleanOptionalAction, help="default: on CUDA")
    training.add_argument("--compile", action=argparse.BooleanOptionalAction, help="default: CUDA")
    training.add_argument(
        "--peak-tflops", type=positive_float, default=None, help="device peak, if not known here"
    )
    training.set_defaults(run=bench_train)

    tta = subcommands.add_parser(
        "tta",
        help="time to accuracy; other flags go to train.py",
        description="Trains with train.py's flags until the split reaches every target.",
    )
    tta.add_argument("--preset", default="fast", choices=train.PRESETS)
    tta.add_argument("--targets", type=positive_float, nargs="+", default=[85.06, 94.0])
    tta.add_argument("--split", choices=("valid", "test"), default="test")
    tta.add_argument("--budget", type=positive_float, default=600, help="seconds of training")
    tta.add_argument("--out", type=Path, default=Path("runs/tta"), help="the run's folder")
    tta.set_defaults(run=bench_tta)

    args, rest = parser.parse_known_args(argv)
    if rest and args.subcommand != "tta":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.train_flags = rest
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    run_cli(main)
