"""Train FishNet (or the ResNet baseline) on CIFAR-10.

    python train.py                         # the seed recipe, 100 epochs: runs/fishnet99-seed
    python train.py --preset fast           # 12 epochs at batch 512: runs/fishnet99-fast
    python train.py --preset fast --resume  # continue a stopped run

The defaults are the recipe of the implementations this repository started from:
batch 256, SGD with lr 0.1, momentum 0.9, weight decay 1e-4, lr divided by 10 every
30 epochs, 100 epochs, random crop and flip. The flags and presets are in
training/options.py, the pieces of the loop in training/engine.py.
"""

import argparse
import copy
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from dataloader import DeviceLoader, channel_stats, load_split, manifest_sha256, read_classes
from models import build_model, count_macs, switch_kwargs
from training.checkpoint import (
    CHECKPOINT_FILES,
    load_checkpoint,
    refuse_existing_run,
    save_checkpoint,
)
from training.cli import rerun_command, run_cli
from training.curves import CURVES_FOLDER, TrainingCurves, require_tensorboard
from training.distributed import (
    device_name,
    distribute,
    init_distributed,
    log,
    shutdown_distributed,
    wait_for_all_processes,
)
from training.ema import ExponentialMovingAverage
from training.engine import (
    EpochClock,
    EpochProgress,
    Interrupted,
    StopRequest,
    TrainState,
    TrainStep,
    check_deterministic,
    seed_everything,
    train_one_epoch,
)
from training.metrics import (
    HEADLINE,
    EvaluationStopped,
    describe_scores,
    evaluate,
    score_keys,
)
from training.optim import make_optimizer, make_scheduler, set_batch_norm_momentum
from training.options import (
    DEFAULT_EVAL_BATCH_SIZE,
    changed_from_preset,
    default_out,
    optimizer_kwargs,
    parse_args,
    recorded_args,
    resume_mismatches,
    scheduler_kwargs,
)
from training.plots import write_history
from training.precision import resolve_amp
from utils import FileLock, UserError, link_or_copy, lock_run_folder, one_line, write_text

OUTPUT_FILES = (*CHECKPOINT_FILES, "history.json", "history.csv", "acc.png", "loss.png")
# Compiling the step saves about 40 % of every step: on one H100, FishNet-99 trained
# 7,514 images/s eagerly and 12,330 compiled with CUDA graphs (batch 512, 2026-11-23), 52 us
# per image. The first compilation on a machine took about 2 minutes there; later ones
# read PyTorch's cache (Inductor's FX-graph and AOTAutograd caches, on by default) and take
# seconds. Auto compiles runs that save at least 15 s that way (300,000 images: `fast`
# trains 480,000, `accuracy` 2.4 million): the cached compilation is paid back, and a
# first, cold one is paid once per machine and torch version, in the start-up time that
# train.py prints and records.
COMPILE_PAYS_BACK_IMAGES = 300_000


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rank, world_size, device = init_distributed(args.device, args.dist_timeout)
    try:
        train(args, rank, world_size, device)
    finally:
        shutdown_distributed()


def train(args: argparse.Namespace, rank: int, world_size: int, device: torch.device) -> None:
    out, main_process = Path(args.out), rank == 0
    if args.sync_bn and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA GPUs: SyncBatchNorm has no CPU implementation")
    if args.tensorboard:
        require_tensorboard()
    # The data is checked before the output folder is touched: a missing dataset leaves
    # nothing behind that the next attempt would stumble on.
    fingerprint = dataset_fingerprint(args)
    lock, checkpoint = claim_output(args, out, main_process)
    if checkpoint:
        check_same_dataset(checkpoint, out / "last.pt", args.data, fingerprint)
    if checkpoint and checkpoint["epoch"] >= args.epochs:
        log(f"{out} holds a finished run ({checkpoint['epoch']} epochs); nothing to do")
        return
    seed_everything(args.seed, args.deterministic)
    data = Data.load(args, fingerprint, device, rank, world_size)
    run = Run.build(args, data, device, world_size)
    if checkpoint:
        run.restore(checkpoint, out / "last.pt", data, rank, world_size)
    state = run.state
    # Ctrl-C and SIGTERM save from here on: the line below tells a user (and a parent
    # program) that the run has started.
    stop = StopRequest()
    stop.install()
    log(data.describe(args, device, world_size) + "\n" + run.compile_note)
    if device.type == "cpu":
        images_left = data.train.num_samples * world_size * (args.epochs - state.epoch)
        warn_if_long_on_cpu(args, run.model, images_left)
    clock = EpochClock(epochs_left=args.epochs - state.epoch)
    curves = None
    if args.tensorboard and main_process:
        curves = TrainingCurves.open(
            out,
            run.step.optimizer,
            len(data.train),
            data.monitored,
            steps_done=run.steps_done(len(data.train)),
        )
    try:
        for epoch in range(state.epoch, args.epochs):
            data.train.set_epoch(epoch)
            progress = run.epoch_progress(data.train, rank, device)
            if curves is not None:
                curves.start_epoch(epoch, progress)
            first = epoch == args.epochs - clock.epochs_left
            try:
                train_one_epoch(
                    run.step,
                    data.train,
                    run.scheduler,
                    progress,
                    stop,
                    epoch=epoch,
                    clock=clock if first else None,
                    on_progress=curves.log_progress if curves is not None else None,
                )
            except Interrupted as stopped:
                run.save_interrupted(epoch, stopped, data, out, main_process, world_size)
                raise SystemExit(128 + stopped.signum) from None
            except UserError:
                if main_process:
                    run.save_unsaved(out)
                raise
            started = time.perf_counter()
            row = {"epoch": epoch + 1, "lr_start": progress.lr, **progress.summary()}
            try:
                row.update(run.score(data, epoch, stop))
            except EvaluationStopped:
                # The epoch's training is saved as an epoch interrupted at its end: --resume
                # runs only its evaluation. Waiting for the evaluation could outlast the grace
                # period of a container or scheduler, which then kills the run.
                stopped = Interrupted(stop.signal or signal.SIGTERM, progress)
                run.save_interrupted(epoch, stopped, data, out, main_process, world_size)
                raise SystemExit(128 + stopped.signum) from None
            eval_time = time.perf_counter() - started
            row.update(
                images_per_sec=progress.samples / progress.seconds,
                epoch_time=progress.seconds,
                startup_time=progress.startup_seconds,
                eval_time=eval_time,
                elapsed=run.elapsed() + progress.seconds + eval_time,
            )
            if first and run.step.compile_watch is not None:
                row.update(run.step.compile_watch.outcome().numbers())
            if curves is not None:
                curves.log_epoch(row)
            is_best = run.finish_epoch(row, data, out, main_process)
            log(describe_epoch(row, args.epochs, is_best))
    finally:
        if curves is not None:
            curves.close()
    log(f"done: {run.describe_result()}; checkpoints, history and plots in {out}")
    wait_for_all_processes()
    lock.release()


def claim_output(
    args: argparse.Namespace, out: Path, main_process: bool
) -> tuple[FileLock, dict | None]:
    """Claims the output folder (a second run into it is refused while this one lives),
    checks that it is writable, and returns the lock and the checkpoint to resume from."""
    last = out / "last.pt"
    if args.resume and not last.is_file():
        raise UserError(f"--resume: {last} does not exist; start the run without --resume")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a folder")
    lock = lock_run_folder(out) if main_process else FileLock(out / ".lock")
    if main_process:
        try:
            write_text(out / ".writable", "")
            (out / ".writable").unlink()
        except OSError as error:
            raise UserError(f"--out {out}: cannot write there ({one_line(error)})") from None
    curves = out / CURVES_FOLDER
    # A link would take the curves (or their removal) outside the run folder.
    if curves.is_symlink() or (curves.exists() and not curves.is_dir()):
        raise UserError(
            f"--out {out}: {curves} is a file or a link, not the folder of the run's curves; "
            "move it away"
        )
    if args.resume:
        checkpoint = load_checkpoint(last)
        changed = resume_mismatches(checkpoint["args"], args)
        if changed:
            raise UserError(
                f"--resume: {last} was trained with " + ", ".join(changed) + "; "
                "resume with the flags of the original run"
            )
        return lock, checkpoint
    # The lock above keeps out a run still going; a checkpoint is never replaced unasked,
    # even a best.pt without its last.pt.
    if not args.overwrite:
        refuse_existing_run(out)
    if main_process:
        for path in [*(out / name for name in OUTPUT_FILES), *out.glob("confusion_*.png")]:
            path.unlink(missing_ok=True)
        # An old run's curves would run on into the new run's.
        if curves.is_dir():
            shutil.rmtree(curves)
        record = {
            "command": rerun_command("train.py", drop=("--overwrite",)),
            "args": recorded_args(args),
        }
        write_text(out / "args.json", json.dumps(record, indent=1) + "\n")
    return lock, None


def dataset_fingerprint(args: argparse.Namespace) -> dict:
    """What identifies the run's data: checkpoints record it, so --resume and eval.py can
    tell whether they are given the data the run was trained on."""
    train_splits = ["train", "valid"] if args.train_on_all else ["train"]
    return {
        "path": str(Path(args.data).resolve()),
        "classes": read_classes(args.data),
        # The training split's identity; for train + valid the two manifests' hashes.
        "train_sha256": "+".join(manifest_sha256(args.data, s) for s in train_splits),
        "sha256": {
            split: manifest_sha256(args.data, split) for split in ("train", "valid", "test")
        },
    }


def check_same_dataset(checkpoint: dict, path: Path, data: str, fingerprint: dict) -> None:
    """Refuses to resume a run on other classes or another training split; it is checked
    for finished runs too, so a wrong --data never passes silently."""
    saved = checkpoint.get("dataset")
    if not isinstance(saved, dict):
        raise UserError(f"{path}: damaged checkpoint: no record of its dataset")
    if any(saved.get(key) != fingerprint[key] for key in ("classes", "train_sha256")):
        raise UserError(
            f"--resume: {path} was trained on another dataset than {data} "
            "(other classes or another training split)"
        )


@dataclass
class Data:
    """The run's splits on the device: the training loader and the splits scored after
    every epoch (valid, or test when training on train + valid; test too with
    --report-test)."""

    train: DeviceLoader
    monitored: dict[str, DeviceLoader]
    classes: list[str]
    normalization: dict
    fingerprint: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def load(
        cls, args, fingerprint: dict, device: torch.device, rank: int, world_size: int
    ) -> "Data":
        images, labels = load_split(args.data, "train")
        if args.train_on_all:
            valid_images, valid_labels = load_split(args.data, "valid")
            images, labels = torch.cat([images, valid_images]), torch.cat([labels, valid_labels])
        mean, std = channel_stats(images)
        if args.train_subset and args.train_subset < len(labels):
            keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))
            images, labels = images[keep[: args.train_subset]], labels[keep[: args.train_subset]]
        common = {
            "mean": mean,
            "std": std,
            "device": device,
            "channels_last": args.channels_last,
            "rank": rank,
            "world_size": world_size,
        }
        if len(labels) < args.batch_size * world_size:
            raise UserError(
                f"--batch-size {args.batch_size} x {world_size} process(es) is more than the "
                f"{len(labels)} training images; use a smaller --batch-size"
            )
        # Full batches only: every step has the same shapes, so the step compiles once.
        train = DeviceLoader(
            images,
            labels,
            args.batch_size,
            train=True,
            augment=args.augment,
            augment_params=vars(args),
            num_classes=len(fingerprint["classes"]),
            seed=args.seed,
            drop_last=True,
            **common,
        )
        monitored_splits = ["test"] if args.train_on_all else ["valid"]
        if args.report_test and "test" not in monitored_splits:
            monitored_splits.append("test")
        # Evaluation keeps no activations for a backward pass: larger batches fit, and on a
        # GPU they launch fewer kernels. On a CPU they would only delay a stop (Ctrl-C,
        # SIGTERM waits for the batch being scored).
        eval_batch_size = args.eval_batch_size or (
            max(args.batch_size, DEFAULT_EVAL_BATCH_SIZE)
            if device.type == "cuda"
            else args.batch_size
        )
        monitored = {
            split: DeviceLoader(
                *load_split(args.data, split), eval_batch_size, train=False, **common
            )
            for split in monitored_splits
        }
        normalization = {"mean": list(mean), "std": list(std)}
        return cls(train, monitored, fingerprint["classes"], normalization, fingerprint)

    def describe(self, args, device: torch.device, world_size: int) -> str:
        processes = f" x {world_size} processes" if world_size > 1 else ""
        monitored = ", ".join(
            f"{len(loader.labels)} {split}" for split, loader in self.monitored.items()
        )
        return (
            f"{args.model} (width {args.width}) on {device}{processes}: "
            f"{self.train.num_samples * world_size} training images an epoch in "
            f"{len(self.train)} steps per epoch of {args.batch_size * world_size}, scored on "
            f"{monitored}"
        )


def choose_compile(
    args, device: torch.device, images_per_epoch: int, world_size: int
) -> tuple[bool, str | None, str]:
    """Whether to compile the training step, its torch.compile mode, and the line that
    says why. What compilation then did is printed after the start-up steps."""
    # CUDA graphs replay a single GPU's work; under torchrun DDP's gradient exchange sits
    # between the graphs, so multi-GPU runs compile without them.
    mode = "reduce-overhead" if device.type == "cuda" and world_size == 1 else None
    how = "with CUDA graphs" if mode else "without CUDA graphs"
    if args.compile is not None:
        if not args.compile:
            return False, None, "compile: off (--no-compile given)"
        return True, mode, f"compile: on {how} (--compile given)"
    if device.type != "cuda":
        return False, None, "compile: off (auto: on CUDA only; --compile to compile on the CPU)"
    total = args.epochs * images_per_epoch
    if total < COMPILE_PAYS_BACK_IMAGES:
        return (
            False,
            None,
            (
                f"compile: off (auto: {total:,} training images are fewer than the "
                f"{COMPILE_PAYS_BACK_IMAGES:,} that pay back a compilation; --compile to compile)"
            ),
        )
    return (
        True,
        mode,
        (
            f"compile: on {how} (auto: {total:,} training images pay back the compilation; "
            f"the first one on a machine takes minutes, later ones read the cache in "
            f"{inductor_cache_dir()} and take seconds)"
        ),
    )


def inductor_cache_dir() -> str:
    """Where Inductor keeps compiled code between runs."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()


@dataclass
class Run:
    """The model, the step that trains it and the state a checkpoint keeps."""

    args: argparse.Namespace
    spec: dict
    model: nn.Module
    step: TrainStep
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: TrainState
    amp: str
    compile_note: str
    # The last epoch's and the best epoch's checkpoints while they wait for the next save
    # (--save-every); often one and the same.
    unsaved: dict | None = None
    pending_best: dict | None = None
    last_saved: float = field(default_factory=time.monotonic)

    @property
    def eval_model(self) -> nn.Module:
        """The moving average where the run keeps one: it is what validation scores."""
        return self.state.ema.module if self.state.ema is not None else self.model

    @classmethod
    def build(cls, args, data: Data, device: torch.device, world_size: int) -> "Run":
        kwargs = {
            "num_classes": data.num_classes,
            "stem": "cifar",
            "width": args.width,
            "init": args.init,
            **switch_kwargs(args.model, vars(args)),
        }
        model = build_model(args.model, **kwargs).to(device)
        set_batch_norm_momentum(model, args.bn_momentum)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if args.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # Fused kernels update every parameter in a few launches instead of one per tensor.
        optimizer = make_optimizer(model, **optimizer_kwargs(args), fused=device.type == "cuda")
        scheduler = make_scheduler(
            optimizer, **scheduler_kwargs(args), steps_per_epoch=len(data.train)
        )
        ema = ExponentialMovingAverage(model, args.ema) if args.ema is not None else None
        amp = resolve_amp(args.amp, device)
        compiled, mode, note = choose_compile(
            args, device, data.train.num_samples * world_size, world_size
        )
        criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        if args.deterministic:
            check_deterministic(model, criterion, device, amp, args.channels_last)
        step = TrainStep(
            distribute(model, device),
            optimizer,
            criterion,
            device,
            amp,
            ema=ema,
            compile_mode=mode,
            compiled=compiled,
        )
        state = TrainState(model, optimizer, scheduler, step.scaler, ema)
        note += f"; precision: {amp}"
        return cls(
            args, {"name": args.model, "kwargs": kwargs}, model, step, scheduler, state, amp, note
        )

    def score(self, data: Data, epoch: int, stop: StopRequest) -> dict:
        """Every monitored split's scores after ``epoch`` (counted from 0) by their history
        keys (valid_top1, valid_flip_top1, ...); EvaluationStopped on a stop request."""
        row = {}
        for split, loader in data.monitored.items():
            scores = evaluate(
                self.eval_model,
                loader,
                data.num_classes,
                self.step.device,
                self.amp,
                test_augment=self.args.test_augment,
                desc=f"{split} after epoch {epoch + 1}",
                should_stop=lambda: stop.signal is not None,
            )
            keys = score_keys(self.args.test_augment)
            row.update({f"{split}_{key}": scores[key] for key in keys})
        return row

    def restore(self, checkpoint: dict, path: Path, data: Data, rank: int, world_size: int) -> None:
        try:
            self.state.load_state_dict(checkpoint)
            partial = self.state.partial
            if partial:
                loaders = partial["loaders"]
                if len(loaders) != world_size:
                    raise UserError(
                        f"--resume: {path} stopped in the middle of an epoch with "
                        f"{len(loaders)} processes; resume it with as many"
                    )
                if not 0 <= loaders[rank]["step"] <= len(data.train):
                    raise ValueError(f"position {loaders[rank]['step']} past the epoch's end")
                saved_rng = loaders[rank]["augment_rng"]
                if saved_rng is not None and data.train.state_from_another_device(saved_rng):
                    log(
                        f"--resume: {path} stopped in the middle of an epoch on another kind "
                        f"of device than {data.train.device.type}; the rest of epoch "
                        f"{self.state.epoch + 1} draws its augmentation anew, so it differs "
                        "from an unbroken run's"
                    )
                elif saved_rng is not None:
                    generator = torch.Generator(device=data.train.device)
                    generator.set_state(saved_rng)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
            raise UserError(
                f"{path}: damaged checkpoint: cannot restore the training state "
                f"({type(error).__name__}: {one_line(error)})"
            ) from None
        step = self.state.partial["loaders"][rank]["step"] if self.state.partial else 0
        where = "its evaluation" if step == len(data.train) else f"step {step + 1}"
        log(f"resuming {path.parent} at epoch {self.state.epoch + 1}, {where}")

    def steps_done(self, steps_per_epoch: int) -> int:
        """The optimizer steps taken so far: the finished epochs' and those of an
        interrupted one."""
        partial = self.state.partial
        return steps_per_epoch * self.state.epoch + (
            partial["loaders"][0]["step"] if partial else 0
        )

    def epoch_progress(
        self, loader: DeviceLoader, rank: int, device: torch.device
    ) -> EpochProgress:
        """A new epoch's sums, or an interrupted one's, with the loader at its place: the
        first process continues the sums gathered over all processes, the others start
        from zero."""
        partial, self.state.partial = self.state.partial, None
        if not partial:
            return EpochProgress.start(self.step.optimizer.param_groups[0]["lr"], device)
        loader.load_state_dict(partial["loaders"][rank])
        progress = EpochProgress.from_state_dict(partial["progress"], device)
        if rank != 0:
            progress = EpochProgress.start(progress.lr, device)
        return progress

    def save_interrupted(
        self,
        epoch,
        stopped: Interrupted,
        data: Data,
        out: Path,
        main_process: bool,
        world_size: int,
    ) -> None:
        """Saves the place in the epoch and prints the command that resumes from it."""
        loaders = [data.train.state_dict()]
        if dist.is_initialized():
            loaders = [None] * world_size
            dist.all_gather_object(loaders, data.train.state_dict())
        progress = stopped.progress.summed_over_processes()
        self.state.partial = {"loaders": loaders, "progress": progress.state_dict()}
        if main_process:
            self.save(self.checkpoint(data, epoch), out, is_best=False)
            where = (
                f"after the training of epoch {epoch + 1}, before its evaluation"
                if data.train.step == len(data.train)
                else f"at epoch {epoch + 1}, step {data.train.step}"
            )
            print(
                f"{stopped}: stopped {where}; saved {out / 'last.pt'}. Resume with:\n  "
                + rerun_command("train.py", drop=("--resume", "--overwrite"), add=("--resume",)),
                file=sys.stderr,
            )

    def finish_epoch(self, row: dict, data: Data, out: Path, main_process: bool) -> bool:
        """Records the epoch and writes the checkpoints, history and plots; returns whether
        this epoch is the best so far (by valid top-1; every epoch with --train-on-all,
        which selects nothing on the test split)."""
        state = self.state
        state.history.append(row)
        state.epoch = row["epoch"]
        score = row.get(f"valid_{HEADLINE}")
        is_best = score is None or score > state.best_valid_top1
        if score is not None:
            state.best_valid_top1 = max(state.best_valid_top1, score)
        if main_process:
            checkpoint = self.checkpoint(data, state.epoch)
            since_saved = time.monotonic() - self.last_saved
            if state.epoch == self.args.epochs or since_saved >= self.args.save_every:
                self.save(checkpoint, out, is_best)
            else:
                # Kept on the device (a copy there takes microseconds on a GPU) until the
                # next save, or until training fails after it (save_unsaved).
                self.unsaved = copy.deepcopy(checkpoint)
                if is_best:
                    self.pending_best = self.unsaved
            title = run_title(self.args, out, self.step.device)
            try:
                write_history(state.history, out, title)
            except OSError as error:
                self.save_unsaved(out)
                raise UserError(
                    f"--out {out}: cannot write the history and plots ({one_line(error)}); "
                    "last.pt holds the epoch, resume with --resume"
                ) from None
        return is_best

    def save(self, checkpoint: dict, out: Path, is_best: bool) -> None:
        """Writes last.pt and, with it, best.pt: a second name of the same file when this
        is the best epoch (no copy), else the best epoch kept since the last save, if any."""
        save_checkpoint(checkpoint, out / "last.pt")
        if is_best:
            link_or_copy(out / "last.pt", out / "best.pt")
        elif self.pending_best is not None:
            save_checkpoint(self.pending_best, out / "best.pt")
        self.pending_best = self.unsaved = None
        self.last_saved = time.monotonic()

    def save_unsaved(self, out: Path) -> None:
        """Writes the last epoch not yet saved, when training fails after it (a non-finite
        loss, out of memory): last.pt and best.pt then hold the last good epochs."""
        if self.unsaved is not None:
            self.save(self.unsaved, out, is_best=self.pending_best is self.unsaved)

    def checkpoint(self, data: Data, epoch: int) -> dict:
        return {
            "model": self.spec,
            "classes": data.classes,
            "dataset": data.fingerprint,
            "normalization": data.normalization,
            "args": recorded_args(self.args),
            **self.state.state_dict(),
            "epoch": epoch,
        }

    def elapsed(self) -> float:
        return self.state.history[-1]["elapsed"] if self.state.history else 0.0

    def describe_result(self) -> str:
        last = self.state.history[-1] if self.state.history else {}
        if "valid_top1" in last:
            return f"best valid top-1 {self.state.best_valid_top1:.2f} %"
        if "test_top1" in last:
            return f"last epoch's test top-1 {last['test_top1']:.2f} %"
        return "no epoch scored"


# Training multiply-accumulates per second (forward and backward, three times the forward's)
# of a full-width FishNet-99 in fp32 on the 2-core development CPU (2026-12-01): 32 G at
# batch 64 on the quiet machine, 20 G from a step of 512 images that took 100 s, 6-10 G at
# batch 32 while other jobs ran. A run whose estimate at 20 G is longer than
# CPU_WARNING_SECONDS is warned about before it starts.
CPU_TRAINING_MACS_PER_SECOND = 20e9
CPU_WARNING_SECONDS = 3600


def warn_if_long_on_cpu(args: argparse.Namespace, model: nn.Module, images: int) -> None:
    """A warning before a run sized for a GPU (the fast, accuracy and seed presets) starts on
    a CPU, with an estimate of its length; it goes on, since the user may mean it."""
    seconds = 3 * count_macs(model, 32) * images / CPU_TRAINING_MACS_PER_SECOND
    if seconds > CPU_WARNING_SECONDS:
        log(
            f"warning: --preset {args.preset} with these flags trains {images:,} images on a "
            f"CPU: {describe_duration(seconds)} at the {CPU_TRAINING_MACS_PER_SECOND / 1e9:.0f} "
            "G multiply-accumulates per second of a 2-core CPU (the estimate after the first "
            "steps says how long here); --preset cpu learns in minutes, a CUDA GPU runs this "
            "recipe in minutes"
        )


def run_title(args: argparse.Namespace, out: Path, device: torch.device) -> str:
    """The plots' title: the model (its width where not 1), the recipe, the hardware, and the
    run folder where it is not the recipe's default one."""
    width = f", width {args.width:g}" if args.width != 1 else ""
    recipe = " ".join(["--preset", args.preset, *changed_from_preset(args, ("model", "width"))])
    folder = "" if args.out == default_out(args.model, args.preset) else f", {out.name}"
    return f"{args.model}{width}, {recipe}, {device_name(device)}{folder}"


def describe_epoch(row: dict, epochs: int, is_best: bool) -> str:
    """The epoch's line: its learning rate at its first step, every metric of every scored
    split, its speed and times, and the time the epochs left would take at its pace."""
    splits = [s for s in ("train", "valid", "test") if f"{s}_{HEADLINE}" in row]
    scores = "  ".join(describe_scores(row, split) for split in splits)
    epochs_left = epochs - row["epoch"]
    per_epoch = row["epoch_time"] - row["startup_time"] + row["eval_time"]
    left = f"  {describe_duration(per_epoch * epochs_left)} left" if epochs_left else ""
    return (
        f"epoch {row['epoch']}/{epochs}  start lr {row['lr_start']:.4g}  {scores}  "
        f"{row['images_per_sec']:.0f} img/s  train {row['epoch_time']:.1f} s "
        f"(start-up {row['startup_time']:.1f} s) + eval {row['eval_time']:.1f} s"
        + ("  (best)" if is_best else "")
        + left
    )


def describe_duration(seconds: float) -> str:
    """About how long, in the unit a reader wants: "about 40 s", "about 12 min", "about
    3.5 h"."""
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


if __name__ == "__main__":
    run_cli(main)
