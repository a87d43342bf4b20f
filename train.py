"""Train FishNet (or the ResNet baseline) on CIFAR-10.

    python train.py                                     # the seed recipe: FishNet-99, 100 epochs
    python train.py --schedule onecycle --epochs 30 --label-smoothing 0.1
    python train.py --out runs/fishnet99 --resume       # continue a stopped run

The defaults are the recipe of the implementations this repository started from:
batch 256, SGD with lr 0.1, momentum 0.9, weight decay 1e-4, lr divided by 10 every
30 epochs, 100 epochs, random crop and flip.
"""

import argparse
import hashlib
import random
import shlex
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dataloader import (
    AUGMENTATIONS,
    DeviceLoader,
    channel_stats,
    load_split,
    manifest_path,
    read_classes,
)
from models import SWITCHES, build_model, check_width, model_names, switch_kwargs
from utils import (
    UserError,
    all_reduce_sum,
    atomic_write,
    autocast,
    count_topk_correct,
    evaluate,
    first_line,
    init_distributed,
    is_main_process,
    load_checkpoint,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
    save_checkpoint,
    seed_everything,
    write_history,
)

# Few epochs at a large batch: one-cycle warm-up, Nesterov, label smoothing.
FAST = {
    "epochs": 12,
    "batch_size": 512,
    "lr": 0.4,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
}
# Named recipes: the flags each one sets (explicit flags still override them).
PRESETS = {
    # The implementations this repository started from: 85.06 % test top-1 in 100 epochs.
    "seed": {},
    "fast": FAST,
    # The same recipe run longer, for the best accuracy in about ten GPU minutes.
    "accuracy": {**FAST, "epochs": 60},
}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "onecycle")
# Flags that describe where and how fast a run executes, not what it computes:
# they may differ between a run and its --resume.
RESUMABLE_CHANGES = {
    "compile",
    "sync_bn",
    "resume",
    "overwrite",
    "device",
    "data",
    "out",
    "amp",
    "channels_last",
    "deterministic",
}
OUTPUT_FILES = ("last.pt", "best.pt", "history.json", "history.csv", "acc.png", "loss.png")
PROGRESS_EVERY = 25  # steps between progress-bar updates, each of which waits for the device
NO_STEP = 2**62  # "no step yet" for the device-side record of the first non-finite loss


def model_width(text: str) -> float:
    value = float(text)
    try:
        check_width(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train FishNet (or a ResNet baseline) on CIFAR-10 or CIFAR-100.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--preset",
        default="seed",
        choices=PRESETS,
        help="a named recipe (PRESETS in train.py); flags override it",
    )
    add("--data", default="data/cifar10", help="folder made by data/download_data.py")
    add("--model", default="fishnet99", choices=model_names())
    add("--width", type=model_width, default=1.0, help="channel multiplier (multiple of 1/16)")
    # FishNet's ablation switches (README, "Ablations"): each default is the paper's choice.
    switch = parser.add_argument_group("FishNet ablation switches").add_argument
    switch(
        "--downsample",
        default="maxpool",
        choices=SWITCHES["downsample"],
        help="2x down-sampling of tail and head stages (conv: strided BN-ReLU-conv2x2)",
    )
    switch(
        "--upsample",
        default="nearest",
        choices=SWITCHES["upsample"],
        help="2x up-sampling of body stages (deconv: BN-ReLU-ConvTranspose2d, kernel 2)",
    )
    switch(
        "--body-shortcut",
        default="reduce",
        choices=SWITCHES["body_shortcut"],
        help="first unit of a body stage: channel reduction r(x) or a 1x1 conv",
    )
    on_off = argparse.BooleanOptionalAction
    switch("--body-dilation", action=on_off, default=True, help="dilation 2^j in body stage j")
    switch("--transfer", action=on_off, default=True, help="transfer blocks (off: identity)")
    switch(
        "--bridge",
        default="se",
        choices=SWITCHES["bridge"],
        help="SE-gated bridge, its residual units alone, or none",
    )
    add("--epochs", type=positive_int, default=100)
    add("--batch-size", type=positive_int, default=256)
    add("--optimizer", default="sgd", choices=OPTIMIZERS)
    add("--lr", type=positive_float, default=0.1, help="peak learning rate")
    add("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    add("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    add("--weight-decay", type=non_negative_float, default=1e-4)
    add("--schedule", default="step", choices=SCHEDULES)
    add("--step-size", type=positive_int, default=30, help="epochs between lr drops (step)")
    add("--gamma", type=positive_float, default=0.1, help="lr factor at each drop (step)")
    add(
        "--warmup-epochs",
        type=non_negative_float,
        default=None,
        help="linear warm-up (cosine: default 0; onecycle: default 30%% of the run)",
    )
    add("--label-smoothing", type=non_negative_float, default=0.0)
    add("--augment", default="crop-flip", choices=AUGMENTATIONS)
    add("--seed", type=non_negative_int, default=0)
    add("--train-subset", type=positive_int, default=None, help="train on this many images")
    add("--out", default=None, help="output folder (default: runs/MODEL)")
    existing_run = parser.add_mutually_exclusive_group()
    existing_run.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last.pt"
    )
    existing_run.add_argument(
        "--overwrite", action="store_true", help="replace a run already in --out"
    )
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on CUDA)")
    add(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NHWC memory format, faster on GPUs and CPUs alike",
    )
    add("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on CUDA)")
    add("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs under torchrun")
    add("--deterministic", action="store_true", help="deterministic kernels (slower)")
    # A preset replaces the defaults; flags given on the command line still win.
    preset = parser.parse_known_args(argv)[0].preset
    parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    if args.nesterov and (args.optimizer != "sgd" or args.momentum == 0):
        parser.error("--nesterov needs --optimizer sgd and a non-zero --momentum")
    if args.label_smoothing >= 1:
        parser.error("--label-smoothing must be below 1")
    if args.warmup_epochs is not None and args.warmup_epochs >= args.epochs:
        parser.error("--warmup-epochs must be shorter than --epochs")
    try:
        switch_kwargs(args.model, vars(args))
    except ValueError as error:
        parser.error(str(error))
    if args.out is None:
        args.out = f"runs/{args.model}"
    return args


def make_optimizer(
    args: argparse.Namespace, model: nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    # Fused kernels update every parameter in a few launches instead of one per tensor.
    common = {"lr": args.lr, "weight_decay": args.weight_decay, "fused": device.type == "cuda"}
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), momentum=args.momentum, nesterov=args.nesterov, **common
        )
    if args.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), **common)
    return torch.optim.AdamW(model.parameters(), **common)


def make_scheduler(
    args: argparse.Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Every schedule steps once per batch, so one training loop serves them all."""
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler
    if args.schedule == "step":
        return sched.StepLR(optimizer, step_size=args.step_size * steps_per_epoch, gamma=args.gamma)
    if args.schedule == "onecycle":
        warmup = 0.3 * args.epochs if args.warmup_epochs is None else args.warmup_epochs
        return sched.OneCycleLR(
            optimizer, max_lr=args.lr, total_steps=total, pct_start=warmup / args.epochs
        )
    warmup = round((args.warmup_epochs or 0) * steps_per_epoch)
    cosine = sched.CosineAnnealingLR(optimizer, T_max=total - warmup)
    if not warmup:
        return cosine
    linear = sched.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup)
    return sched.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def prepare_output(args: argparse.Namespace, out: Path, main_process: bool) -> dict | None:
    """Returns the checkpoint to resume from; refuses to overwrite a run by accident."""
    last = out / "last.pt"
    if args.resume:
        if not last.is_file():
            raise UserError(f"--resume: {last} does not exist; start the run without --resume")
        checkpoint = load_checkpoint(last)
        saved = checkpoint["args"]
        # A step schedule does not depend on the run's length, so such a run may be extended.
        may_change = RESUMABLE_CHANGES | ({"epochs"} if args.schedule == "step" else set())
        changed = [
            f"--{key.replace('_', '-')} {saved.get(key)} (now {value})"
            for key, value in vars(args).items()
            if key not in may_change and saved.get(key) != value
        ]
        if changed:
            raise UserError(
                f"--resume: {last} was trained with " + ", ".join(changed) + "; "
                "resume with the flags of the original run"
            )
        return checkpoint
    if last.exists() and not args.overwrite:
        raise UserError(
            f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if main_process:
        for path in [*(out / name for name in OUTPUT_FILES), *out.glob("confusion_*.png")]:
            path.unlink(missing_ok=True)
    return None


class StopRequest:
    """Ctrl-C or SIGTERM: the training loop stops at the next step and saves where it is.

    A second signal stops at once (KeyboardInterrupt), losing only the current epoch.
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        tqdm.write(f"{signal.Signals(signum).name}: saving a checkpoint after this step")


def training_step(model, images, labels, criterion, optimizer, amp: bool):
    """One optimizer step; returns the (detached, float) loss and the logits."""
    with autocast(images.device, amp):
        logits = model(images)
        loss = criterion(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach().float(), logits.detach()


def train_one_epoch(
    model, loader, criterion, optimizer, scheduler, progress, stop, *, epoch, amp, warn
):
    """Trains until the loader's epoch ends or a stop is requested; returns the progress.

    ``progress`` (lr at the epoch's start; loss sum, top-1 and top-5 hits; samples; seconds)
    carries over from an interrupted run, so a resumed epoch logs what an unbroken one would.
    Sums stay on the device and are read only at progress updates.
    """
    totals = progress["totals"]
    device = totals.device
    first_nonfinite = torch.full((), NO_STEP, device=device)
    samples, started = progress["samples"], time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}",
        initial=loader.step,
        total=len(loader),
        leave=False,
        dynamic_ncols=True,
        disable=not is_main_process(),
    )
    model.train()
    for step, (images, labels) in enumerate(bar, start=loader.step):
        loss, logits = training_step(model, images, labels, criterion, optimizer, amp)
        scheduler.step()

        samples += len(labels)
        first_nonfinite = torch.minimum(
            first_nonfinite, torch.where(torch.isfinite(loss), NO_STEP, step)
        )
        hits = count_topk_correct(logits, labels)
        totals += torch.cat([loss.reshape(1) * len(labels), hits.float()])
        # Ranks decide together, at the same steps, so none waits for the others forever.
        at_check = step % PROGRESS_EVERY == 0 or step == len(loader) - 1
        stopping = False
        if at_check or (stop.signal and not dist.is_initialized()):
            bad_step, stopping = agree(first_nonfinite, stop.signal is not None)
            if bad_step != NO_STEP:
                raise UserError(
                    f"the loss is not finite (NaN or inf) at epoch {epoch + 1}, "
                    f"step {bad_step + 1}: training stopped; last.pt and best.pt keep the "
                    "last good state (try a lower --lr)"
                )
            loss_sum, top1, _ = totals.tolist()
            bar.set_postfix(loss=f"{loss_sum / samples:.3f}", top1=f"{100 * top1 / samples:.1f}")
        if warn and step == 3 and is_main_process():
            per_step = (time.perf_counter() - started) / 4
            tqdm.write(
                f"warning: training on the CPU, about {per_step * len(loader) / 60:.1f} min per "
                "epoch at this rate; a CUDA GPU is much faster"
            )
        if stopping:
            break
    bar.close()
    seconds = progress["seconds"] + time.perf_counter() - started
    return {**progress, "totals": totals, "samples": samples, "seconds": seconds}


def distribute(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel under torchrun: gradients are averaged over the processes."""
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.index is not None else None
    )


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def agree(first_nonfinite: torch.Tensor, stopping: bool) -> tuple[int, bool]:
    """(first step with a non-finite loss on any process, whether any process must stop)."""
    flags = torch.stack(
        [first_nonfinite, torch.tensor(-int(stopping), device=first_nonfinite.device)]
    )
    if dist.is_initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    bad_step, stop = flags.tolist()
    return bad_step, stop < 0


def gather_progress(progress: dict) -> dict:
    """The epoch's sums over all processes, so every process logs the same numbers."""
    samples = torch.tensor([progress["samples"]], device=progress["totals"].device)
    totals = all_reduce_sum(progress["totals"])
    return {**progress, "totals": totals, "samples": int(all_reduce_sum(samples))}


def log(message: str) -> None:
    if is_main_process():
        tqdm.write(message)


def resume_command() -> str:
    argv = [arg for arg in sys.argv[1:] if arg not in ("--resume", "--overwrite")]
    return shlex.join(["python", "train.py", *argv, "--resume"])


def data_fingerprint(data_dir: str) -> str:
    """Identifies the training split, so that --resume cannot switch datasets."""
    return hashlib.sha256(manifest_path(data_dir, "train").read_bytes()).hexdigest()


def compile_model(model: nn.Module) -> nn.Module:
    """torch.compile, or the model itself with a warning where compilation is unavailable.

    Compilation is lazy: errors in the first step fall back to eager execution per graph
    (suppress_errors) instead of ending the run.
    """
    torch._dynamo.config.suppress_errors = True
    try:
        return torch.compile(model)
    except Exception as error:
        warnings.warn(
            f"torch.compile is unavailable ({first_line(error)}); running eagerly", stacklevel=2
        )
        return model


def train(args: argparse.Namespace, on_epoch: Callable | None = None) -> None:
    """Runs training as ``args`` says. ``on_epoch(row, evaluate_split)``, called after each
    epoch's checkpoint, may return True to end the run early (bench.py tta uses it)."""
    rank, world_size, device = init_distributed(args.device)
    main_process = rank == 0
    if args.sync_bn and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA GPUs: SyncBatchNorm has no CPU implementation")
    if args.amp is None:
        args.amp = device.type == "cuda"
    if args.compile is None:
        args.compile = device.type == "cuda"
    out = Path(args.out)
    checkpoint = prepare_output(args, out, main_process)
    seed_everything(args.seed, args.deterministic)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    classes = read_classes(args.data)
    dataset = {"classes": classes, "train_sha256": data_fingerprint(args.data)}
    if checkpoint and checkpoint["dataset"] != dataset:
        raise UserError(
            f"--resume: {out / 'last.pt'} was trained on another dataset than {args.data} "
            "(other classes or another training split)"
        )
    if checkpoint and checkpoint["epoch"] >= args.epochs:
        if main_process:
            print(f"{out} holds a finished run ({checkpoint['epoch']} epochs); nothing to do")
        return
    train_images, train_labels = load_split(args.data, "train")
    valid_images, valid_labels = load_split(args.data, "valid")
    mean, std = channel_stats(train_images)
    if args.train_subset and args.train_subset < len(train_labels):
        keep = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(args.seed))
        keep = keep[: args.train_subset]
        train_images, train_labels = train_images[keep], train_labels[keep]
    loader_args = {
        "mean": mean,
        "std": std,
        "device": device,
        "channels_last": args.channels_last,
        "rank": rank,
        "world_size": world_size,
    }
    train_loader = DeviceLoader(
        train_images,
        train_labels,
        args.batch_size,
        train=True,
        augment=args.augment,
        seed=args.seed,
        **loader_args,
    )
    valid_loader = DeviceLoader(
        valid_images, valid_labels, args.batch_size, train=False, **loader_args
    )

    model_spec = {
        "name": args.model,
        "kwargs": {
            "num_classes": len(classes),
            "stem": "cifar",
            "width": args.width,
            **switch_kwargs(args.model, vars(args)),
        },
    }
    model = build_model(model_spec["name"], **model_spec["kwargs"]).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = make_optimizer(args, model, device)
    # Training steps run compiled (and data-parallel under torchrun); evaluation runs the
    # same weights eagerly, as eval.py does.
    train_model = distribute(model, device)
    if args.compile:
        train_model = compile_model(train_model)
    scheduler = make_scheduler(args, optimizer, len(train_loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    history, best_top1, start_epoch, partial = [], -1.0, 0, None
    if checkpoint:
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        history, best_top1 = checkpoint["history"], checkpoint["best_valid_top1"]
        start_epoch, partial = checkpoint["epoch"], checkpoint["partial"]
        torch.set_rng_state(checkpoint["rng"]["torch"])
        random.setstate(checkpoint["rng"]["python"])
        if device.type == "cuda" and checkpoint["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        if partial and len(partial["loaders"]) != world_size:
            raise UserError(
                f"--resume: {out / 'last.pt'} stopped in the middle of an epoch with "
                f"{len(partial['loaders'])} processes; resume it with as many"
            )
        step = partial["loaders"][rank]["step"] if partial else 0
        if main_process:
            print(f"resuming {out} at epoch {start_epoch + 1}, step {step + 1}")
    if main_process:
        processes = f" x {world_size} processes" if world_size > 1 else ""
        print(
            f"{args.model} (width {args.width}) on {device}{processes}, {len(train_labels)} "
            f"training images, {len(valid_labels)} validation images, "
            f"{len(train_loader)} steps per epoch"
        )

    def state(epoch: int, partial: dict | None) -> dict:
        return {
            "model": model_spec,
            "state_dict": model.state_dict(),
            "classes": classes,
            "dataset": dataset,
            "normalization": {"mean": list(mean), "std": list(std)},
            "args": vars(args),
            "history": history,
            "epoch": epoch,
            "partial": partial,
            "best_valid_top1": best_top1,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                "python": random.getstate(),
            },
        }

    def evaluate_split(split: str) -> dict:
        images, labels = load_split(args.data, split)
        loader = DeviceLoader(images, labels, args.batch_size, train=False, **loader_args)
        return evaluate(model, loader, len(classes), device, args.amp)

    stop = StopRequest()
    stop.install()
    elapsed_before = history[-1]["elapsed"] if history else 0.0
    run_started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        train_loader.set_epoch(epoch)
        if partial:
            train_loader.load_state_dict(partial["loaders"][rank])
            # The sums so far were gathered on the first process; the others start from zero.
            saved = partial["progress"]
            totals = saved["totals"].to(device) if main_process else torch.zeros(3, device=device)
            samples = saved["samples"] if main_process else 0
            progress = {**saved, "totals": totals, "samples": samples}
            partial = None
        else:
            lr = optimizer.param_groups[0]["lr"]
            zeros = torch.zeros(3, device=device)
            progress = {"lr": lr, "totals": zeros, "samples": 0, "seconds": 0.0}
        try:
            progress = train_one_epoch(
                train_model,
                train_loader,
                criterion,
                optimizer,
                scheduler,
                progress,
                stop,
                epoch=epoch,
                amp=args.amp,
                warn=device.type == "cpu" and epoch == start_epoch,
            )
        except torch.cuda.OutOfMemoryError:
            raise UserError(
                f"out of GPU memory at --batch-size {args.batch_size}; "
                f"try --batch-size {max(1, args.batch_size // 2)}"
            ) from None
        progress = gather_progress(progress)
        if train_loader.step < len(train_loader):
            loaders = [train_loader.state_dict()]
            if dist.is_initialized():
                loaders = [None] * world_size
                dist.all_gather_object(loaders, train_loader.state_dict())
            if main_process:
                progress["totals"] = progress["totals"].cpu()
                saved = {"loaders": loaders, "progress": progress}
                save_checkpoint(state(epoch, saved), out / "last.pt")
                print(
                    f"{signal.Signals(stop.signal or signal.SIGTERM).name}: stopped at epoch "
                    f"{epoch + 1}, step {train_loader.step}; saved {out / 'last.pt'}. "
                    f"Resume with:\n  {resume_command()}",
                    file=sys.stderr,
                )
            shutdown_distributed()
            sys.exit(128 + (stop.signal or signal.SIGTERM))

        valid = evaluate(model, valid_loader, len(classes), device, args.amp)
        loss_sum, top1, top5 = progress["totals"].tolist()
        samples, seconds = progress["samples"], progress["seconds"]
        row = {
            "epoch": epoch + 1,
            "lr": progress["lr"],
            "train_loss": loss_sum / samples,
            "train_top1": 100 * top1 / samples,
            "train_top5": 100 * top5 / samples,
            "valid_loss": valid["loss"],
            "valid_top1": valid["top1"],
            "valid_top5": valid["top5"],
            "train_samples": samples,
            "images_per_sec": samples / seconds,
            "epoch_time": seconds,
            "elapsed": elapsed_before + time.perf_counter() - run_started,
        }
        history.append(row)
        is_best = valid["top1"] > best_top1
        best_top1 = max(best_top1, valid["top1"])
        if main_process:
            save_checkpoint(state(epoch + 1, None), out / "last.pt")
            if is_best:
                atomic_write(out / "best.pt", lambda tmp: shutil.copyfile(out / "last.pt", tmp))
            write_history(history, out)
        log(
            f"epoch {epoch + 1}/{args.epochs}  lr {row['lr']:.4g}  "
            f"train loss {row['train_loss']:.3f} top-1 {row['train_top1']:.2f} "
            f"top-5 {row['train_top5']:.2f}  valid loss {valid['loss']:.3f} "
            f"top-1 {valid['top1']:.2f} top-5 {valid['top5']:.2f}  "
            f"{row['images_per_sec']:.0f} img/s  {seconds:.1f} s" + ("  (best)" if is_best else "")
        )
        if on_epoch and on_epoch(row, evaluate_split):
            break
    log(f"done: best valid top-1 {best_top1:.2f} %; checkpoints and plots in {out}")
    shutdown_distributed()


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
