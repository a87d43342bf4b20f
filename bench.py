"""Benchmarks: python bench.py <subcommand> [options].

data   images per second of the on-device loader (DeviceLoader, crop-flip) against a
       torchvision DataLoader (PIL decode and transforms in worker processes) over the
       same training manifest, on the same device
train  training images per second and TFLOP/s of this repository's pipeline (data on the
       device, channels-last, bf16, torch.compile, fused SGD) against a pipeline like the
       seeds' (DataLoader with PIL transforms, fp32, NCHW, eager), same model and device
tta    time to accuracy: trains a recipe (train.py's flags and presets) until the chosen
       split reaches each target top-1 or the time budget ends
report the results table: presets over seeds, mean and spread of their test scores
augment
       the cost of each augmentation pipeline (loader alone, and a whole training step)
       and of each test-time augmentation (an evaluation batch), side by side
gpu-report
       one machine measured in one command within a time budget: train.py --preset fast,
       the training step at batch 512, eval.py and predict.py; OUT/report.md and the logs

Speed is only compared within one run: the two pipelines run side by side.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from dataloader import (
    DEFAULT_DATA,
    SPLITS,
    DeviceLoader,
    ManifestDataset,
    channel_stats,
    load_split,
    manifest_path,
    manifest_sha256,
    read_classes,
    read_manifest,
)
from dataloader.augment import TEST_AUGMENTATIONS, check_order
from models import build_model, count_macs, model_names
from training.checkpoint import checkpoints_in, refuse_existing_run
from training.cli import (
    DeadlinePassed,
    Ended,
    HelpFormatter,
    at_most,
    check_output_file,
    check_output_folder,
    exit_text,
    non_negative_int,
    positive_float,
    positive_int,
    rerun_command,
    run_child,
    run_cli,
)
from training.distributed import (
    all_reduce_sum,
    device_name,
    distribute,
    init_distributed,
    is_main_process,
    log,
    resolve_device,
    shutdown_distributed,
)
from training.engine import TrainStep
from training.metrics import evaluate
from training.optim import make_optimizer
from training.options import PRESETS, model_width, seed_number
from training.options import parse_args as parse_train_args
from training.precision import AMP_CHOICES, resolve_amp
from utils import UserError, atomic_write, markdown_table, synchronize, write_text

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
FIGURES = ("acc.png", "loss.png")  # a run's curves, which bench.py report copies
# Bounds of the flags whose larger values would hang or exhaust the machine.
MAX_SECONDS = 3600
step_count = at_most(positive_int, 100_000)
batch_size = at_most(positive_int, 1 << 16)
worker_count = at_most(non_negative_int, 64)
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
    while not count or time.perf_counter() - started < seconds:  # one batch at least
        for images, labels in iterator:
            images.to(device, non_blocking=True)
            labels.to(device, non_blocking=True)
            count += images.shape[0]
            if time.perf_counter() - started >= seconds:
                break
        else:
            iterator = iter(batches)
    synchronize(device)
    return count / (time.perf_counter() - started)


def seed_style_loader(
    data: Path, batch_size: int, workers: int, mean, std, device: torch.device
) -> DataLoader:
    """The seeds' input pipeline: PIL decode and torchvision transforms in worker processes."""
    # Imported here: torchvision takes about 2 s to import, which the other benchmarks
    # (and --help) need not pay.
    from torchvision import transforms

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
    device = resolve_device(args.device)
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


def time_steps(step, batches: Iterator, device: torch.device, count: int) -> tuple[float, int]:
    """(seconds, images) of ``count`` training steps, the device waited for."""
    synchronize(device)
    started, images_seen = time.perf_counter(), 0
    for _ in range(count):
        images, labels = next(batches)
        step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        images_seen += len(labels)
    synchronize(device)
    return time.perf_counter() - started, images_seen


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def seeded_model(
    args: argparse.Namespace, classes: int, device: torch.device, channels_last: bool
) -> nn.Module:
    """--model at --width on ``device``, with the same weights at every call (seed 0), so
    that the pipelines compared start alike."""
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=classes, width=args.width).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def bench_train(args: argparse.Namespace) -> None:
    if args.json is not None:
        check_output_file(args.json, "--json", kind="text")
    rank, world_size, device = init_distributed(args.device)
    amp = resolve_amp(args.amp, device)
    compiled = device.type == "cuda" if args.compile is None else args.compile
    mode = args.compile_mode if device.type == "cuda" and world_size == 1 else None
    torch.backends.cudnn.benchmark = True
    images, labels = load_split(args.data, "train")
    if len(labels) < args.batch_size * world_size:
        raise UserError(
            f"--batch-size {args.batch_size} x {world_size} process(es) is more than the "
            f"{len(labels)} training images of {args.data}; use a smaller --batch-size"
        )
    mean, std = channel_stats(images)
    classes = len(read_classes(args.data))

    reference = seeded_model(args, classes, device, channels_last=False)
    flops_per_image = 6 * count_macs(reference, 32)  # forward 2 per MAC, backward 4
    peak = peak_tflops(device, args.peak_tflops)
    name = device_name(device)
    log(
        f"{args.model} (width {args.width}), batch {args.batch_size} per process, "
        f"{world_size} process(es) on {device.type} ({name}), "
        f"{flops_per_image / 6e6:.1f} M MACs per image, {args.steps} steps after {args.warmup}"
    )
    criterion = nn.CrossEntropyLoss()

    ours = seeded_model(args, classes, device, channels_last=True)
    loader = DeviceLoader(
        images,
        labels,
        args.batch_size,
        mean=mean,
        std=std,
        train=True,
        device=device,
        channels_last=True,
        rank=rank,
        world_size=world_size,
        drop_last=True,
    )
    # train.py's default recipe (SGD), with its fused update on CUDA.
    optimizer = make_optimizer(ours, fused=device.type == "cuda")
    step = TrainStep(
        distribute(ours, device),
        optimizer,
        criterion,
        device,
        amp,
        compile_mode=mode,
        compiled=compiled,
    )
    batches = forever(loader)
    startup, _ = time_steps(step, batches, device, args.warmup)
    seconds, seen = time_steps(step, batches, device, args.steps)
    ours_rate = seen / seconds

    seed_loader = seed_style_loader(args.data, args.batch_size, args.workers, mean, std, device)
    seed_optimizer = make_optimizer(reference)  # the seeds' SGD, not fused
    seed_step = TrainStep(distribute(reference, device), seed_optimizer, criterion, device, "off")
    seed_batches = forever(seed_loader)
    seed_startup, _ = time_steps(seed_step, seed_batches, device, args.warmup)
    seconds, seen = time_steps(seed_step, seed_batches, device, args.steps)
    seed_rate = seen / seconds
    # Every process measured its own rate; the totals are their sums. On the run's device:
    # NCCL, which joins GPU processes, takes CUDA tensors only.
    rates = torch.tensor([ours_rate, seed_rate], dtype=torch.float64, device=device)
    ours_rate, seed_rate = all_reduce_sum(rates).tolist()

    features = ", ".join(
        ["data on the device", "channels-last"]
        + ([amp] if amp != "off" else [])
        + ([f"torch.compile ({mode or 'default'})"] if compiled else [])
    )
    header = f"{'pipeline':<72} {'start-up s':>10} {'images/s':>10} {'TFLOP/s':>8} {'of peak':>8}"
    if world_size > 1:
        header += f" {'images/s per process':>21}"
    log(header)
    pipelines = {
        "this repository": {
            "features": features,
            "images_per_sec": ours_rate,
            "startup_s": startup,
        },
        "seed-style": {
            "features": f"DataLoader + PIL, {args.workers} workers, fp32, NCHW, eager",
            "images_per_sec": seed_rate,
            "startup_s": seed_startup,
        },
    }
    for label, pipeline in pipelines.items():
        rate = pipeline["images_per_sec"]
        tflops = rate * flops_per_image / 1e12
        share = tflops / (peak * world_size) if peak else None
        pipeline.update(tflops=tflops, fraction_of_peak=share)
        shown = f"{100 * share:.1f} %" if share is not None else "-"
        named = f"{label} ({pipeline['features']})"
        line = (
            f"{named:<72} {pipeline['startup_s']:>10.1f} {rate:>10,.0f} {tflops:>8.3g} {shown:>8}"
        )
        if world_size > 1:
            line += f" {rate / world_size:>21,.0f}"
        log(line)
    log(f"start-up: the first {args.warmup} steps ({step.startup_work()} for ours)")
    if not peak:
        log("peak unknown for this device: pass --peak-tflops to see the fraction")
    log(f"ratio: {ours_rate / seed_rate:.2f}x")
    if args.json is not None and is_main_process():
        figures = {
            "model": args.model,
            "width": args.width,
            "batch_size": args.batch_size,
            "processes": world_size,
            "device": name,
            "steps": args.steps,
            "warmup": args.warmup,
            "peak_tflops": peak,
            "pipelines": pipelines,
            "ratio": ours_rate / seed_rate,
        }
        write_text(args.json, json.dumps(figures, indent=1) + "\n")
    shutdown_distributed()


# The pipelines bench.py augment compares by default: the CIFAR recipe first (the ratios'
# reference), then each ingredient of the fast recipes added to it.
DEFAULT_AUGMENT_PIPELINES = (
    "crop-flip",
    "crop alternating-flip",
    "crop-flip cutout",
    "crop-flip mixup",
    "crop-flip cutmix",
)


def augment_pipelines(texts: list[str]) -> list[list[str]]:
    """--pipelines: each a space-separated list of augmentations, checked as --augment is."""
    pipelines = []
    for text in texts:
        names = text.split()
        try:
            if not names:
                raise ValueError("no augmentation named; give none for none")
            check_order(names)
        except ValueError as error:
            raise UserError(f"--pipelines {text!r}: {error}") from None
        if names in pipelines:
            raise UserError(f"--pipelines {text!r}: given more than once")
        pipelines.append(names)
    return pipelines


def bench_augment(args: argparse.Namespace) -> None:
    """Times, in rounds that take the pipelines in turn (so a machine's drift touches them
    alike): the loader alone, then whole training steps, of every pipeline; and evaluation
    batches with every test-time augmentation. Medians over the rounds, with their range."""
    pipelines = augment_pipelines(args.pipelines)
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    torch.backends.cudnn.benchmark = True
    images, labels = load_split(args.data, "train")
    if len(labels) < args.batch_size:
        raise UserError(
            f"--batch-size {args.batch_size} is more than the {len(labels)} training images "
            f"of {args.data}; use a smaller --batch-size"
        )
    mean, std = channel_stats(images)
    classes = len(read_classes(args.data))
    common = {"mean": mean, "std": std, "device": device, "channels_last": True}

    runs = {}
    for names in pipelines:
        loader = DeviceLoader(images, labels, args.batch_size, train=True, augment=names,
                              num_classes=classes, drop_last=True, **common)  # fmt: skip
        model = seeded_model(args, classes, device, channels_last=True)
        step = TrainStep(model, make_optimizer(model), nn.CrossEntropyLoss(), device, amp)
        runs[" ".join(names)] = (forever(loader), step)
    log(
        f"{args.model} (width {args.width}), batch {args.batch_size}, {device_name(device)}, "
        f"{amp}, eager; {args.rounds} rounds of {args.steps} steps per pipeline, after "
        f"{args.warmup} untimed"
    )
    for batches, step in runs.values():
        time_steps(step, batches, device, args.warmup)
    loader_ms = {name: [] for name in runs}
    step_ms = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (batches, step) in runs.items():
            synchronize(device)
            started = time.perf_counter()
            for _ in range(args.steps):
                next(batches)
            synchronize(device)
            loader_ms[name].append(1000 * (time.perf_counter() - started) / args.steps)
            seconds, _ = time_steps(step, batches, device, args.steps)
            step_ms[name].append(1000 * seconds / args.steps)
    reference = statistics.median(step_ms[next(iter(runs))])
    rows = [
        [
            name,
            _median_and_range(loader_ms[name], 2),
            _median_and_range(step_ms[name], 1),
            f"{statistics.median(step_ms[name]) / reference:.2f}",
        ]
        for name in runs
    ]
    header = ["--augment", "loader ms/batch", "training step ms", "step / first"]
    print(markdown_table(header, rows), flush=True)

    test_images, test_labels = load_split(args.data, "test")
    evaluated = (
        test_images[: args.batch_size * args.steps],
        test_labels[: args.batch_size * args.steps],
    )
    test_loader = DeviceLoader(*evaluated, args.batch_size, train=False, **common)
    model = seeded_model(args, classes, device, channels_last=True)
    choices = [[], *([name] for name in TEST_AUGMENTATIONS)]
    for names in choices:
        evaluate(model, test_loader, classes, device, amp, test_augment=names)  # warm-up
    eval_ms = {" ".join(names) or "none": [] for names in choices}
    for _ in range(args.rounds):
        for names in choices:
            synchronize(device)
            started = time.perf_counter()
            evaluate(model, test_loader, classes, device, amp, test_augment=names)
            eval_ms[" ".join(names) or "none"].append(
                1000 * (time.perf_counter() - started) / len(test_loader)
            )
    reference = statistics.median(eval_ms["none"])
    rows = [
        [name, _median_and_range(times, 1), f"{statistics.median(times) / reference:.2f}"]
        for name, times in eval_ms.items()
    ]
    print()
    print(markdown_table(["--test-augment", "evaluation ms/batch", "batch / none"], rows))


def _median_and_range(values: list[float], digits: int) -> str:
    low, middle, high = min(values), statistics.median(values), max(values)
    return f"{middle:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def check_train_flags(flags: list[str], outs: list[Path]) -> argparse.Namespace:
    """train.py's flags, checked before any run starts, as are the run folders ``outs``:
    none may hold a run that the flags do not say what to do with (--overwrite, --resume)."""
    run = parse_train_args(flags, passed_on_by="bench.py")
    for out in outs:
        check_output_folder(out, "--out")
        if not {"--overwrite", "--resume"} & set(flags):
            refuse_existing_run(out)
    return run


def run_train_script(flags: list[str], out: Path) -> list[dict]:
    """Runs train.py as a user would and returns its history. Ctrl-C or SIGTERM stop it as
    they stop train.py (its run saved, to go on with --resume)."""
    if "--resume" in flags and not (out / "last.pt").exists():
        flags = [flag for flag in flags if flag != "--resume"]  # this run has not started
    command = [sys.executable, str(TRAIN_SCRIPT), *flags, "--out", str(out)]
    try:
        status = run_child(command)
    except Ended as ended:
        again = rerun_command("bench.py", drop=("--resume", "--overwrite"), add=("--resume",))
        raise Ended(ended.status, f"{ended}; the run in {out} resumes with: {again}") from None
    if status:
        raise Ended(status, f"train.py ended with exit status {status} (its message above)")
    return json.loads((out / "history.json").read_text())


def training_seconds(history: list[dict]) -> list[float]:
    """Cumulative training time after each epoch, start-up (compilation) and evaluation apart."""
    total, times = 0.0, []
    for row in history:
        total += row["epoch_time"] - row.get("startup_time", 0.0)
        times.append(total)
    return times


def bench_tta(args: argparse.Namespace) -> None:
    flags = ["--preset", args.preset, *args.train_flags]
    if args.split == "test":
        flags.append("--report-test")
    run = check_train_flags(flags, [args.out])
    if args.split == "valid" and run.train_on_all:
        raise UserError("--split valid: --train-on-all trains on the valid split; use --split test")
    history = run_train_script(flags, args.out)
    times = training_seconds(history)
    targets = sorted(args.targets)
    print(
        f"\ntime to {args.split} top-1 (preset {args.preset}; training time, start-up and "
        "evaluation apart):"
    )
    print("| target | training time | epoch |\n|---|---|---|")
    for target in targets:
        hit = next(
            (i for i, row in enumerate(history) if row[f"{args.split}_top1"] >= target), None
        )
        when = f"{times[hit]:.1f} s" if hit is not None else f"not reached in {times[-1]:.0f} s"
        print(f"| {target:.2f} % | {when} | {hit + 1 if hit is not None else '-'} |")
    last = history[-1]
    startup = sum(row.get("startup_time", 0.0) for row in history)
    print(
        f"final after {last['epoch']} epochs, {times[-1]:.1f} s of training: {args.split} top-1 "
        f"{last[f'{args.split}_top1']:.2f} %, top-5 {last[f'{args.split}_top5']:.2f} %; "
        f"start-up {startup:.1f} s, wall time {last['elapsed']:.1f} s in all"
    )


def bench_report(args: argparse.Namespace) -> None:
    """Runs presets over seeds and writes the results table's rows (mean ± std)."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    runs = {
        (preset, seed): args.out / f"{preset}-seed{seed}"
        for preset in args.presets
        for seed in args.seeds
    }
    for preset in args.presets:
        check_train_flags(["--preset", preset, *args.train_flags], list(runs.values()))
    check_output_file(args.out / "results.md", "--out", kind="text")
    figures = args.figures or args.out
    check_output_folder(figures, "--figures")
    kept = checkpoints_in(figures)
    if kept:
        raise UserError(
            f"--figures {figures}: holds a run ({', '.join(kept)}); name another folder"
        )
    for name in FIGURES:
        check_output_file(figures / name, "--figures", kind="png")
    rows, best = [], None
    for preset in args.presets:
        finals = []
        for seed in args.seeds:
            out = runs[preset, seed]
            flags = ["--preset", preset, "--seed", str(seed), "--report-test", *args.train_flags]
            history = run_train_script(flags, out)
            last = history[-1]
            finals.append(
                (
                    last["test_top1"],
                    last["test_top5"],
                    training_seconds(history)[-1],
                    sum(r.get("startup_time", 0.0) for r in history),
                    out,
                )
            )
            if best is None or last["test_top1"] > best[0]:
                best = (last["test_top1"], out)
        top1, top5, seconds, startup = (torch.tensor([f[i] for f in finals]) for i in range(4))

        def spread(values: torch.Tensor, digits: int) -> str:
            std = values.std().item() if len(values) > 1 else 0.0
            return f"{values.mean().item():.{digits}f} ± {std:.{digits}f}"

        command = shlex.join(["python", "train.py", "--preset", preset, *args.train_flags])
        rows.append(
            f"| `{preset}` | {spread(top1, 2)} | {spread(top5, 2)} | {len(finals)} | "
            f"{spread(seconds, 1)} | {spread(startup, 1)} | {device} | CIFAR-10, JPEG q75 copy | "
            f"{datetime.date.today().isoformat()} | `{command}` |"
        )
    header = (
        "| preset | test top-1 (%) | test top-5 (%) | runs | training s | start-up s | GPU | "
        "data | date | command |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    table = "\n".join([header, *rows]) + "\n"
    write_text(args.out / "results.md", table)
    print("\n" + table)
    for name in FIGURES:
        atomic_write(figures / name, lambda tmp, n=name: shutil.copyfile(best[1] / n, tmp))
    print(f"table: {args.out / 'results.md'}; curves of the best run ({best[1]}): {figures}")


# -- gpu-report --------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent
SEED_TOP1 = 85.06  # the seeds' reported test top-1 (%), the target of the time to accuracy
PREDICTED_IMAGES = 8  # the first images of the test manifest, given to predict.py
# --tiny: the same stages at a toy size, for CI on a CPU.
TINY_TRAIN_FLAGS = (
    *("--width", "0.0625", "--train-subset", "256"),
    *("--epochs", "2", "--batch-size", "32"),
)
TINY_STEP_FLAGS = ("--width", "0.0625", "--steps", "2", "--warmup", "1", "--workers", "0")
# What train.py records of torch.compile in the first epoch's row, where it compiles.
COMPILE_KEYS = (
    "compile_graphs",
    "compile_graph_breaks",
    "compile_recompilations",
    "cudagraph_skips",
    "compile_failed",
)
REPORT_LOGS = ("train.log", "train-step.log", "eval.log", "predict.log")
STEP_JSON = "train-step.json"
LOG_TAIL_LINES = 20


@dataclass
class Child:
    """One program the report runs: its command and log, and how it ended."""

    name: str
    command: list[str]
    log: Path
    status: int | None = None  # None: it did not run
    seconds: float = 0.0
    # Why it stopped early or did not run: "budget", "no checkpoint", "stopped by SIGINT".
    cut: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == 0 and self.cut is None

    @property
    def failed(self) -> bool:
        return self.status not in (None, 0) and self.cut is None

    def outcome(self) -> str:
        if self.status is None:
            return f"skipped ({self.cut})"
        how, took = exit_text(self.status), f"{self.seconds:.1f} s"
        if self.cut == "budget":
            return f"stopped at the budget after {took} ({how})"
        if self.cut is not None:
            return f"{self.cut} after {took} ({how})"
        return f"failed after {took} ({how})" if self.status else f"finished in {took} ({how})"


class Budget:
    """Runs the report's programs one after another in the time left of ``seconds``; once
    one is stopped (the budget ran out, or Ctrl-C), the later ones are skipped."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.ends = self.started + seconds
        self.halted: Child | None = None  # the program stopped, or the first one skipped

    def run(self, child: Child) -> Child:
        left = self.ends - time.monotonic()
        if self.halted is None and left <= 0:
            child.cut, self.halted = "budget", child
        if self.halted is not None:
            child.cut = child.cut or self.halted.cut
            return child
        print(f"{child.name}: running, its output in {child.log}", flush=True)
        started = time.monotonic()
        try:
            child.status = run_child(child.command, deadline=left, log=child.log)
        except DeadlinePassed as stopped:
            child.status, child.cut, self.halted = stopped.child_status, "budget", child
        except Ended as stopped:  # Ctrl-C or SIGTERM, passed on to the child
            child.status, child.cut, self.halted = stopped.status, str(stopped), child
        child.seconds = time.monotonic() - started
        print(f"{child.name}: {child.outcome()}", flush=True)
        return child


def git(*args: str) -> str | None:
    """git's output in this repository, or None outside one (or without git)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit_described() -> str:
    head = git("rev-parse", "HEAD")
    if head is None:
        return "unknown"
    changes = git("status", "--porcelain")
    if changes is None:
        return f"{head} (uncommitted changes unknown)"
    return f"{head} with uncommitted changes" if changes else head


def driver_version() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    versions = done.stdout.split()  # one line per GPU, all the same driver
    return versions[0] if done.returncode == 0 and versions else "unknown"


def describe_machine(data: Path, device: torch.device) -> list[tuple[str, str]]:
    """Stage 1: what the figures were measured on. The data is named by its folder and its
    manifests' hashes only: which copy of CIFAR-10 it is cannot be told from them."""
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        gpu = f"{torch.cuda.get_device_name(device)} ({memory:.0f} GiB)"
        driver = driver_version()
    else:
        gpu, driver = "none: measured on the CPU", "-"
    return [
        ("device", str(device)),
        ("GPU", gpu),
        ("driver", driver),
        ("torch", torch.__version__),
        ("CUDA (torch.version.cuda)", torch.version.cuda or "none (a CPU build of torch)"),
        ("CPUs", str(os.cpu_count())),
        ("commit", commit_described()),
        ("data folder", str(data.resolve())),
        *((f"`{manifest_path(data, s).name}` sha256", manifest_sha256(data, s)) for s in SPLITS),
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
    ]


def check_report_folder(out: Path, overwrite: bool) -> None:
    """Refuses, before any program runs, a --out that is a file, or that holds a report or
    a run that --overwrite does not allow to replace."""
    check_output_folder(out, "--out")
    kept = [name for name in ("report.md",) if (out / name).exists()]
    kept += [f"fast/{name}" for name in checkpoints_in(out / "fast")]
    if kept and not overwrite:
        raise UserError(
            f"--out {out}: holds a report or run ({', '.join(kept)}); pass --overwrite to "
            "replace it, or name another --out"
        )
    check_output_folder(out / "fast", "--out")
    for name in ("report.md", STEP_JSON, *REPORT_LOGS):
        check_output_file(out / name, "--out", kind="text")


def clear_earlier_results(out: Path) -> None:
    """Removes what an earlier report left that this one reads or shows: a program stopped
    before it writes its files must not be reported with an earlier run's figures."""
    for path in (out / "fast" / "history.json", out / STEP_JSON, *(out / n for n in REPORT_LOGS)):
        path.unlink(missing_ok=True)


def log_lines(log: Path) -> list[str]:
    """The log's lines as a terminal would have left them: of a progress bar redrawn with
    carriage returns, its last state."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]


def json_in_log(log: Path) -> object | None:
    """The last JSON object that a program printed (at the start of a line) into its log,
    among the other lines of its output."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    decoder = json.JSONDecoder()
    for match in reversed(list(re.finditer(r"(?:^|\r)\{", text, re.M))):
        try:
            return decoder.raw_decode(text, match.end() - 1)[0]
        except ValueError:
            continue
    return None


def read_json(path: Path) -> object | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def training_figures(history: list[dict]) -> list[tuple[str, str]]:
    """Stage 2's figures, from the run's history.json."""
    first, last = history[0], history[-1]
    rows = [
        ("epochs finished", str(len(history))),
        (
            "start-up (epoch 1: compilation, CUDA-graph capture)",
            f"{first.get('startup_time', 0.0):.1f} s",
        ),
    ]
    counters = [(key, str(first[key])) for key in COMPILE_KEYS if key in first]
    rows += counters or [("compilation", "not compiled")]
    steady = [row["images_per_sec"] for row in history[1:]]
    rows.append(
        (
            "steady images/s (mean of the epochs after the first)",
            f"{statistics.mean(steady):,.0f}" if steady else "- (one epoch only)",
        )
    )
    times = training_seconds(history)
    hit = next((i for i, row in enumerate(history) if row["test_top1"] >= SEED_TOP1), None)
    reached = (
        f"{times[hit]:.1f} s (epoch {hit + 1})"
        if hit is not None
        else f"not reached in {times[-1]:.0f} s"
    )
    evals = [row["eval_time"] for row in history]
    rows += [
        (f"training time to {SEED_TOP1:.2f} % test top-1", reached),
        ("final test top-1", f"{last['test_top1']:.2f} %"),
        ("final test top-5", f"{last['test_top5']:.2f} %"),
        ("eval time per epoch", f"mean {statistics.mean(evals):.2f} s, max {max(evals):.2f} s"),
        ("wall time of the run (train.py's own)", f"{last['elapsed']:.1f} s"),
    ]
    return rows


def code_block(lines: list[str]) -> str:
    return "\n".join(["```", *lines, "```"])


def child_section(child: Child, out: Path) -> list[str]:
    """A program's outcome, exact command and log; the end of the log where it did not
    finish."""
    parts = [f"Outcome: **{child.outcome()}**.", code_block([shlex.join(child.command)])]
    if child.status is not None:
        parts.append(f"Log: `{child.log.relative_to(out)}`.")
    if child.status is not None and not child.succeeded:
        tail = [line for line in log_lines(child.log) if line][-LOG_TAIL_LINES:]
        parts += ["The end of its log:", code_block(tail or ["(empty)"])]
    return parts


def training_section(train: Child, out: Path) -> list[str]:
    parts = ["## 2. `train.py --preset fast`", *child_section(train, out)]
    history = read_json(out / "fast" / "history.json")
    if isinstance(history, list) and history:
        parts.append(markdown_table(("figure", "value"), training_figures(history)))
    elif train.status is not None:
        parts.append("No epoch finished: no figures.")
    compiles = [line for line in log_lines(train.log) if line.startswith("compile")]
    if compiles:
        parts += ["train.py's compile lines:", code_block(compiles)]
    return parts


def step_section(step: Child, out: Path, batch: str) -> list[str]:
    parts = [f"## 3. The training step at batch {batch}", *child_section(step, out)]
    figures = read_json(out / STEP_JSON)
    if not (step.succeeded and isinstance(figures, dict)):
        return parts
    rows = [
        (
            f"{label} ({pipeline['features']})",
            f"{pipeline['images_per_sec']:,.0f}",
            f"{pipeline['tflops']:.3g}",
            "-"
            if pipeline["fraction_of_peak"] is None
            else f"{100 * pipeline['fraction_of_peak']:.1f} %",
            f"{pipeline['startup_s']:.1f}",
        )
        for label, pipeline in figures["pipelines"].items()
    ]
    header = ("pipeline", "images/s", "TFLOP/s", "of peak", "start-up s")
    peak = figures["peak_tflops"]
    return [
        *parts,
        markdown_table(header, rows),
        f"Ratio: {figures['ratio']:.2f}x; {figures['model']} (width {figures['width']}), "
        f"{figures['steps']} timed steps after {figures['warmup']}; peak "
        + (f"{peak:g} TFLOP/s (dense bf16)." if peak else "unknown for this device."),
    ]


def inference_section(evaluation: Child, prediction: Child, out: Path) -> list[str]:
    scores = json_in_log(evaluation.log) if evaluation.succeeded else None
    test = scores.get("test", {}) if isinstance(scores, dict) else {}
    rows = [
        (
            f"`{child.name}`",
            child.outcome(),
            str(child.status) if child.status is not None else "-",
            f"{child.seconds:.1f} s" if child.status is not None else "-",
            f"{test['top1']:.2f} %" if child is evaluation and "top1" in test else "-",
            f"{test['top5']:.2f} %" if child is evaluation and "top5" in test else "-",
        )
        for child in (evaluation, prediction)
    ]
    header = ("program", "outcome", "exit code", "wall time", "test top-1", "test top-5")
    parts = ["## 4. `eval.py` and `predict.py`", markdown_table(header, rows)]
    for child in (evaluation, prediction):
        parts += [f"`{child.name}`:", *child_section(child, out)]
    return parts


def report_text(
    args, budget: Budget, machine, train: Child, step: Child, evaluation, prediction
) -> str:
    out = args.out
    notes = []
    if args.tiny:
        notes.append(
            "> **--tiny**: the stages at a toy size, to check that they run; the figures "
            "say nothing about speed or accuracy."
        )
    if dict(machine)["device"] == "cpu":
        notes.append("> **Measured on the CPU**, not a GPU.")
    parts = [
        "# GPU report",
        *notes,
        f"Written by `{rerun_command('bench.py')}` in {time.monotonic() - budget.started:.0f} s "
        f"of its budget of {budget.seconds:g} s.",
        "## 1. The machine",
        markdown_table(("what", "value"), machine),
        *training_section(train, out),
        *step_section(step, out, "32" if args.tiny else "512"),
        *inference_section(evaluation, prediction, out),
    ]
    return "\n\n".join(parts) + "\n"


def bench_gpu_report(args: argparse.Namespace) -> None:
    """Measures this machine in four stages and writes OUT/report.md and the programs' logs;
    see docs/speed.md."""
    out = args.out
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.tiny:
        # Its full-size stages would train --preset fast for a day on a CPU.
        raise UserError(
            f"gpu-report: --device {args.device} is {device.type}, not a CUDA GPU; --tiny runs "
            "its stages at a toy size there, as a check that they work"
        )
    check_report_folder(out, args.overwrite)
    budget = Budget(args.budget)
    machine = describe_machine(args.data, device)
    test_images = [path for path, _ in read_manifest(manifest_path(args.data, "test"))]
    clear_earlier_results(out)
    out.mkdir(parents=True, exist_ok=True)
    common = ("--data", str(args.data), "--device", args.device)
    run_folder, checkpoint = out / "fast", out / "fast" / "best.pt"
    python = sys.executable
    train = Child(
        "train.py --preset fast",
        [python, str(TRAIN_SCRIPT), "--preset", "fast", "--report-test", *common,
         *(TINY_TRAIN_FLAGS if args.tiny else ()),
         "--out", str(run_folder), *(["--overwrite"] if args.overwrite else [])],
        out / "train.log",
    )  # fmt: skip
    step = Child(
        "bench.py train",
        [python, str(REPO / "bench.py"), "train", "--batch-size", "32" if args.tiny else "512",
         *common, *(TINY_STEP_FLAGS if args.tiny else ()), "--json", str(out / STEP_JSON)],
        out / "train-step.log",
    )  # fmt: skip
    evaluation = Child(
        "eval.py",
        [python, str(REPO / "eval.py"), str(checkpoint), "--split", "test", "--json",
         "--device", args.device],
        out / "eval.log",
    )  # fmt: skip
    prediction = Child(
        "predict.py",
        [python, str(REPO / "predict.py"), str(checkpoint),
         *test_images[:PREDICTED_IMAGES], "--device", args.device],
        out / "predict.log",
    )  # fmt: skip
    budget.run(train)
    budget.run(step)
    for child in (evaluation, prediction):
        if budget.halted is None and not (train.succeeded and checkpoint.is_file()):
            child.cut = "no checkpoint"
        else:
            budget.run(child)
    report = out / "report.md"
    write_text(report, report_text(args, budget, machine, train, step, evaluation, prediction))
    finish(budget, [train, step, evaluation, prediction], report)


def finish(budget: Budget, children: list[Child], report: Path) -> None:
    """Ends with one line: where the report is, and why it is incomplete where it is."""
    halted = budget.halted
    if halted is not None and halted.cut == "budget":
        raise Ended(
            124,
            f"the budget of {budget.seconds:g} s ran out "
            + (f"during {halted.name}" if halted.status is not None else f"before {halted.name}")
            + f"; the report so far: {report}",
        )
    if halted is not None:
        raise Ended(
            halted.status, f"{halted.cut} during {halted.name}; the report so far: {report}"
        )
    failed = [child for child in children if child.failed]
    if failed:
        names = ", ".join(f"{child.name} ({exit_text(child.status)})" for child in failed)
        raise Ended(1, f"failed: {names}; the report, with the end of their logs: {report}")
    print(f"report: {report}")


def add_model_flags(command: argparse.ArgumentParser) -> None:
    """The data and model flags of the benchmarks that train a model (seeded_model)."""
    command.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared dataset")
    command.add_argument("--model", default="fishnet99", choices=model_names(), help="the network")
    command.add_argument("--width", type=model_width, default=1.0, help="channel multiplier")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.py", description="Benchmarks of this repository.", formatter_class=HelpFormatter
    )
    subcommands = parser.add_subparsers(dest="subcommand", required=True)

    def subcommand(name: str, help: str, run) -> argparse.ArgumentParser:
        command = subcommands.add_parser(
            name, help=help, description=help, formatter_class=HelpFormatter
        )
        command.set_defaults(run=run)
        return command

    data = subcommand(
        "data",
        "on-device loader against a torchvision DataLoader, in images per second",
        bench_data,
    )
    data.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared dataset folder")
    data.add_argument("--batch-size", type=batch_size, default=256, help="batch size")
    data.add_argument("--workers", type=worker_count, default=2, help="DataLoader workers")
    data.add_argument(
        "--seconds", type=at_most(positive_float, MAX_SECONDS), default=10.0, help="time per loader"
    )
    data.add_argument("--device", default="auto", help="device of both loaders")

    training = subcommand(
        "train",
        "this pipeline against a seed-style one, in training images per second",
        bench_train,
    )
    add_model_flags(training)
    training.add_argument("--batch-size", type=batch_size, default=256, help="per process")
    training.add_argument("--steps", type=step_count, default=50, help="timed steps")
    training.add_argument("--warmup", type=step_count, default=10, help="untimed steps first")
    training.add_argument("--workers", type=worker_count, default=2, help="seed-style loader")
    training.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    training.add_argument("--amp", choices=AMP_CHOICES, default="auto", help="precision")
    training.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the step (none given: on CUDA)",
    )
    training.add_argument(
        "--compile-mode",
        default="reduce-overhead",
        choices=("reduce-overhead", "default", "max-autotune"),
        help="torch.compile mode on one GPU (reduce-overhead: CUDA graphs)",
    )
    training.add_argument(
        "--peak-tflops",
        type=positive_float,
        default=None,
        help="device peak (none given: known for H100, H200, A100)",
    )
    training.add_argument(
        "--json", type=Path, default=None, help="also write the figures to this JSON file"
    )

    tta = subcommand(
        "tta", "time to accuracy of a train.py recipe; other flags go to train.py", bench_tta
    )
    tta.add_argument("--preset", default="fast", choices=PRESETS, help="train.py's recipe")
    tta.add_argument(
        "--targets",
        type=at_most(positive_float, 100),
        nargs="+",
        default=[85.06, 94.0],
        help="top-1 targets (%%)",
    )
    tta.add_argument("--split", choices=("valid", "test"), default="test", help="scored split")
    tta.add_argument("--out", type=Path, default=Path("runs/tta"), help="the run's folder")

    report = subcommand(
        "report",
        "the results table: presets over seeds; other flags go to train.py",
        bench_report,
    )
    report.add_argument(
        "--presets", nargs="+", choices=PRESETS, default=["fast", "accuracy"], help="recipes to run"
    )
    report.add_argument(
        "--seeds", type=seed_number, nargs="+", default=[0, 1, 2], help="one run per seed"
    )
    report.add_argument(
        "--out",
        type=Path,
        default=Path("runs/report"),
        help="runs go to OUT/PRESET-seedN, the table to OUT/results.md",
    )
    report.add_argument(
        "--figures",
        type=Path,
        default=None,
        help="folder for the best run's acc.png and loss.png (none given: OUT; "
        "the README's figures: fig)",
    )

    augment = subcommand(
        "augment",
        "the cost of each augmentation pipeline and test-time augmentation, side by side",
        bench_augment,
    )
    add_model_flags(augment)
    augment.add_argument("--batch-size", type=batch_size, default=256, help="images per batch")
    augment.add_argument(
        "--pipelines",
        nargs="+",
        default=list(DEFAULT_AUGMENT_PIPELINES),
        metavar="'NAME ...'",
        help="the --augment lists to compare, each in quotes; the first is the reference "
        f"(default: {', '.join(repr(p) for p in DEFAULT_AUGMENT_PIPELINES)})",
    )
    augment.add_argument("--steps", type=step_count, default=10, help="timed steps per round")
    augment.add_argument("--rounds", type=step_count, default=3, help="rounds over the pipelines")
    augment.add_argument("--warmup", type=step_count, default=2, help="untimed steps first")
    augment.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    augment.add_argument("--amp", choices=AMP_CHOICES, default="auto", help="precision")

    gpu = subcommand(
        "gpu-report",
        "measures this machine: train.py --preset fast, the training step at batch 512, "
        "eval.py and predict.py; writes OUT/report.md and the logs",
        bench_gpu_report,
    )
    gpu.add_argument(
        "--out", type=Path, default=Path("runs/gpu-report"), help="folder of the report and logs"
    )
    gpu.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared dataset folder")
    gpu.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N; every program's")
    gpu.add_argument(
        "--budget",
        type=at_most(positive_float, MAX_SECONDS),
        default=540.0,
        help="seconds for all stages: a program still running then is stopped (SIGTERM), "
        "the later ones are skipped, and the report is written with what there is",
    )
    gpu.add_argument(
        "--tiny", action="store_true", help="the same stages at a toy size (CI; no speed figures)"
    )
    gpu.add_argument("--overwrite", action="store_true", help="replace the report and run in --out")

    args, rest = parser.parse_known_args(argv)
    if rest and args.subcommand not in ("tta", "report"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    for flag in ("presets", "seeds"):
        values = getattr(args, flag, [])
        if len(set(values)) != len(values):
            parser.error(f"--{flag} names one twice: each run needs a folder of its own")
    args.train_flags = rest
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    run_cli(main)
