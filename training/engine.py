"""The pieces of a training run: its state, one optimizer step, one epoch, interruption.

train.py strings them together; bench.py times the step; tests drive them in-process.
"""

import copy
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from training.compilation import CompileWatch, compile_function, is_compile_error
from training.distributed import all_reduce_sum, is_main_process, log
from training.ema import ExponentialMovingAverage
from training.metrics import METRICS, batch_sums, metric_values
from training.precision import autocast, grad_scaler
from utils import UserError, out_of_gpu_memory, synchronize

PROGRESS_EVERY = 25  # steps between progress-bar updates, each of which waits for the device
ESTIMATE_AFTER = 5  # steps after start-up before the run's duration is estimated
STARTUP_STEPS = 3  # compilation, CUDA-graph capture and cuDNN autotuning happen in these
NO_STEP = 2**62  # "no step yet" for the device-side record of the first non-finite loss
PROGRESS_BAR = {"loss": ".3f", "top1": ".1f"}  # the metrics the progress bar shows, briefly
# The metrics, in order, of the sums of an interrupted epoch saved before they were named.
UNNAMED_SUMS = ("loss", "top1", "top5")


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped an epoch between two steps; the run's state is consistent."""

    def __init__(self, signum: int, progress: "EpochProgress") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.progress = progress


class StopRequest:
    """Ctrl-C or SIGTERM: the epoch stops at the next step (raising :class:`Interrupted`).

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


# The start of the message of an operation that has no deterministic kernel on a device.
NOT_DETERMINISTIC = "does not have a deterministic implementation"


class TrainStep:
    """One optimizer step: forward, loss, backward, update, moving average.

    The forward pass and loss (with the batch's metric sums, so the logits never leave the
    graph) may be compiled; ``compile_mode="reduce-overhead"`` replays them as CUDA graphs,
    whose outputs are read before the next step overwrites them. The optimizer is a fused one,
    outside the graph, so the learning rate may change every step. What compilation did is
    in ``compile_watch``; if it fails, the step says so once and runs eagerly.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        device: torch.device,
        amp: str,
        *,
        ema: ExponentialMovingAverage | None = None,
        compile_mode: str | None = None,
        compiled: bool = False,
        compile_backend="inductor",
    ) -> None:
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.device, self.amp, self.ema = device, amp, ema
        self.scaler = grad_scaler(device, amp)
        self.compile_mode = compile_mode
        self.compile_watch = CompileWatch() if compiled else None
        self.compile_reported = False
        self.forward = self.forward_loss
        if compiled:
            try:
                self.forward = compile_function(self.forward_loss, compile_mode, compile_backend)
            except Exception as error:  # torch.compile unavailable (e.g. this Python)
                self.compile_watch.failed(error)

    @property
    def compiled(self) -> bool:
        """Whether the step runs compiled (asked for, and not fallen back to eager)."""
        return self.compile_watch is not None and self.compile_watch.failure is None

    def forward_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        with autocast(self.device, self.amp):
            logits = self.model(images)
            loss = self.criterion(logits, labels)
        # The loss as the training criterion defines it (label smoothing included).
        loss_sum = loss.detach().float() * labels.shape[0]
        return loss, batch_sums(logits.detach(), labels, loss_sum)

    def _forward_backward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        loss, sums = self.forward(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return loss, sums

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(float32 loss, the batch's metric sums), both detached and on the device."""
        try:
            loss, sums = self._forward_backward(images, labels)
        except Exception as error:
            if not (self.compiled and is_compile_error(error)):
                raise
            # Nothing has been updated yet: the same step runs again, eagerly.
            self.compile_watch.failed(error)
            self.forward = self.forward_loss
            if self.compile_reported:
                log("\n".join(self.compile_watch.outcome().describe(cudagraphs=False)))
            loss, sums = self._forward_backward(images, labels)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update()
        return loss.detach().float(), sums

    def startup_work(self) -> str:
        """What the first steps spend their time on, as the start-up line says it."""
        if self.compiled:
            cudagraphs = self.compile_mode == "reduce-overhead" and self.device.type == "cuda"
            if cudagraphs:
                return "compilation, CUDA-graph capture and autotuning happen there"
            return "compilation happens there"
        if self.device.type == "cuda":
            return "not compiled: cuDNN's choice of kernels and memory allocation happen there"
        return "not compiled: only memory allocation and caches warm up there"

    def report_compilation(self) -> None:
        """Prints what compilation did so far (after the start-up steps)."""
        if self.compile_watch is not None:
            cudagraphs = self.compile_mode == "reduce-overhead" and self.device.type == "cuda"
            log("\n".join(self.compile_watch.outcome().describe(cudagraphs)))
            self.compile_reported = True


def check_deterministic(
    model: nn.Module, criterion: nn.Module, device: torch.device, amp: str, channels_last: bool
) -> None:
    """For --deterministic: one forward and backward pass of a copy of the model on two
    random images, so that an operation without a deterministic kernel on this device is a
    one-line UserError before training instead of a traceback at its first step."""
    probe = copy.deepcopy(model).train()
    # A generator of its own: the probe leaves the run's random numbers as they were.
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(2, 3, 32, 32, device=device, generator=generator)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    try:
        with autocast(device, amp):
            loss = criterion(probe(images), torch.zeros(2, dtype=torch.int64, device=device))
        loss.backward()
    except RuntimeError as error:
        raise_if_not_deterministic(error, device)
        raise


def raise_if_not_deterministic(error: RuntimeError, device: torch.device) -> None:
    """The one-line UserError for an operation that --deterministic cannot run."""
    if NOT_DETERMINISTIC in str(error):
        operation = str(error).split()[0]
        raise UserError(
            f"--deterministic: {operation} has no deterministic implementation on "
            f"{device.type}; train without --deterministic"
        ) from None


@dataclass
class EpochProgress:
    """An epoch's sums so far, one per metric of training.metrics.METRICS, kept on the
    device and read only at progress updates; an interrupted epoch carries them into the
    resumed run, which then logs what an unbroken one would."""

    lr: float
    sums: Tensor  # float64, in the order of METRICS
    samples: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0

    @classmethod
    def start(cls, lr: float, device: torch.device) -> "EpochProgress":
        return cls(lr, torch.zeros(len(METRICS), device=device, dtype=torch.float64))

    def add(self, sums: Tensor, count: int) -> None:
        self.sums += sums
        self.samples += count

    def values(self) -> dict[str, float]:
        """This process's metrics so far, by key; waits for the device."""
        return metric_values(self.sums.tolist(), self.samples)

    def summed_over_processes(self) -> "EpochProgress":
        """The sums and images of every process (under torchrun), as one progress."""
        sums = all_reduce_sum(self.sums.clone())
        samples = int(all_reduce_sum(torch.tensor([self.samples], device=sums.device)))
        return EpochProgress(self.lr, sums, samples, self.seconds, self.startup_seconds)

    def summary(self) -> dict:
        """Every metric over the processes, as train_KEY, and the number of images; waits
        for the device."""
        total = self.summed_over_processes()
        values = {f"train_{key}": value for key, value in total.values().items()}
        return {**values, "train_samples": total.samples}

    def state_dict(self) -> dict:
        """This process's sums, on the CPU, with the metrics they are the sums of."""
        return {
            "lr": self.lr,
            "totals": self.sums.cpu(),
            "metrics": [metric.key for metric in METRICS],
            "samples": self.samples,
            "seconds": self.seconds,
            "startup_seconds": self.startup_seconds,
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device) -> "EpochProgress":
        """The progress of :meth:`state_dict`, or of a checkpoint written before the sums
        were named (loss, top-1, top-5); ValueError if a metric's sum is missing."""
        totals = state["totals"].to(device, torch.float64)
        names = state.get("metrics", UNNAMED_SUMS)
        if totals.shape != (len(names),):
            raise ValueError(f"{tuple(totals.shape)} sums for {len(names)} metrics")
        saved = dict(zip(names, totals.unbind(), strict=True))
        missing = [metric.key for metric in METRICS if metric.key not in saved]
        if missing:
            raise ValueError(f"the interrupted epoch has no sums of {', '.join(missing)}")
        return cls(
            float(state["lr"]),
            torch.stack([saved[metric.key] for metric in METRICS]),
            int(state["samples"]),
            float(state["seconds"]),
            float(state.get("startup_seconds", 0.0)),
        )


@dataclass
class EpochClock:
    """What the first epoch of a run prints: start-up time and the run's cost."""

    epochs_left: int
    steps_done: int = 0
    started: float = field(default_factory=time.perf_counter)
    steady_from: float | None = None


def _agree(first_nonfinite: Tensor, stopping: bool) -> tuple[int, bool]:
    """(first step with a non-finite loss on any process, whether any process must stop)."""
    flags = torch.stack(
        [first_nonfinite, torch.tensor(-int(stopping), device=first_nonfinite.device)]
    )
    if dist.is_initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    bad_step, stop = flags.tolist()
    return bad_step, stop < 0


def train_one_epoch(
    step: TrainStep,
    loader,
    scheduler,
    progress: EpochProgress,
    stop: StopRequest,
    *,
    epoch: int,
    clock: EpochClock | None = None,
    on_progress: Callable[[int, EpochProgress], None] | None = None,
) -> EpochProgress:
    """Trains until the loader's epoch ends; raises :class:`Interrupted` on a stop request
    and a UserError on a non-finite loss or when the GPU runs out of memory.

    ``clock``, given for the first epoch a process runs, times the start-up steps and
    prints an estimate of the run's duration before the epoch ends. ``on_progress(index,
    progress)`` is called at every progress update, after step ``index`` (counted from 0 in
    the epoch), the update at a stop request included: the device has finished the steps
    then, so reading the sums costs no extra wait.
    """
    device = progress.sums.device
    first_nonfinite = torch.full((), NO_STEP, device=device)
    started = time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}",
        initial=loader.step,
        total=len(loader),
        leave=False,
        dynamic_ncols=True,
        disable=not is_main_process(),
    )
    step.model.train()
    try:
        for index, (images, labels) in enumerate(bar, start=loader.step):
            loss, sums = step(images, labels)
            scheduler.step()
            progress.add(sums, len(labels))
            first_nonfinite = torch.minimum(
                first_nonfinite, torch.where(torch.isfinite(loss), NO_STEP, index)
            )
            if clock is not None:
                _time_the_run(clock, progress, step, len(loader), len(loader) - 1 - index)
            # Ranks decide together, at the same steps, so none waits for the others forever.
            at_check = index % PROGRESS_EVERY == 0 or index == len(loader) - 1
            if at_check or (stop.signal and not dist.is_initialized()):
                bad_step, stopping = _agree(first_nonfinite, stop.signal is not None)
                if bad_step != NO_STEP:
                    raise UserError(
                        f"the loss is not finite (NaN or inf) at epoch {epoch + 1}, "
                        f"step {bad_step + 1}: training stopped; last.pt and best.pt keep the "
                        "last good state (try a lower --lr)"
                    )
                values = progress.values()
                if on_progress is not None:
                    on_progress(index, progress)
                bar.set_postfix(
                    {key: f"{values[key]:{shown}}" for key, shown in PROGRESS_BAR.items()}
                )
                if stopping:
                    progress.seconds += time.perf_counter() - started
                    raise Interrupted(stop.signal or signal.SIGTERM, progress)
    except torch.cuda.OutOfMemoryError:
        raise out_of_gpu_memory(loader.batch_size) from None
    except RuntimeError as error:
        raise_if_not_deterministic(error, device)
        raise
    finally:
        bar.close()
    progress.seconds += time.perf_counter() - started
    return progress


def _time_the_run(
    clock: EpochClock,
    progress: EpochProgress,
    step: TrainStep,
    steps_per_epoch: int,
    steps_left_in_epoch: int,
) -> None:
    device = step.device
    clock.steps_done += 1
    if clock.steps_done == STARTUP_STEPS:
        synchronize(device)
        clock.steady_from = time.perf_counter()
        progress.startup_seconds = clock.steady_from - clock.started
        log(
            f"start-up: the first {STARTUP_STEPS} steps took {progress.startup_seconds:.1f} s "
            f"({step.startup_work()})"
        )
        step.report_compilation()
    elif clock.steps_done == STARTUP_STEPS + ESTIMATE_AFTER:
        synchronize(device)
        per_step = (time.perf_counter() - clock.steady_from) / ESTIMATE_AFTER
        # The steps left of this epoch (the rest of it, after a resume in its middle) and
        # of the epochs after it.
        steps_left = steps_left_in_epoch + steps_per_epoch * (clock.epochs_left - 1)
        hint = "; a CUDA GPU is much faster" if device.type == "cpu" else ""
        log(
            f"estimate: {per_step:.2f} s per step, about {per_step * steps_left / 60:.1f} min "
            f"of training for the {steps_left:,} steps left ({clock.epochs_left} "
            f"epoch{'s' * (clock.epochs_left != 1)}); each epoch's validation comes on top, "
            f"and every epoch line says the time left with it{hint}"
        )


def _upgrade_history_row(row: dict) -> dict:
    """A history row in today's terms: rows written before the learning rate's column was
    named for when it is read (the epoch's first step) called it "lr"."""
    return {("lr_start" if key == "lr" else key): value for key, value in row.items()}


class TrainState:
    """What a run changes as it trains, besides the weights: optimizer, scheduler, gradient
    scaler and moving average, the history, the best score, the random generators and the
    position in an interrupted epoch. ``state_dict()`` gives the checkpoint's keys."""

    def __init__(
        self, model, optimizer, scheduler, scaler, ema: ExponentialMovingAverage | None
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.scaler, self.ema = scaler, ema
        self.history: list[dict] = []
        self.best_valid_top1 = -1.0
        self.epoch = 0  # epochs finished
        self.partial: dict | None = None  # loaders and progress of an interrupted epoch

    def state_dict(self) -> dict:
        state = {
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "epoch": self.epoch,
            "best_valid_top1": self.best_valid_top1,
            "partial": self.partial,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                "python": random.getstate(),
            },
        }
        if self.ema is not None:
            state["ema_state_dict"] = self.ema.module.state_dict()
            state["ema_updates"] = self.ema.updates
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restores a checkpoint's state; KeyError, TypeError or ValueError if a part is
        missing or does not fit this run."""
        self.model.load_state_dict(state["state_dict"])
        _check_optimizer_state(self.optimizer, state["optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])
        # load_state_dict sets whatever it is given; a wrong value would fail steps later.
        _check_same_layout(self.scheduler.state_dict(), state["scheduler"], "scheduler")
        self.scheduler.load_state_dict(state["scheduler"])
        # --amp may change on resume (auto picks fp16 on older GPUs): a run saved without a
        # gradient scaler (bf16, fp32; or before fp16 training existed) starts a fresh one,
        # and a scaler saved by an fp16 run is not needed by a bf16 or fp32 one.
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(
                {"state_dict": state["ema_state_dict"], "updates": state["ema_updates"]}
            )
        if not isinstance(state["history"], list) or not isinstance(state["epoch"], int):
            raise TypeError("history must be a list and epoch a whole number")
        if len(state["history"]) != state["epoch"] or not all(
            isinstance(row, dict)
            and all(isinstance(k, str) and isinstance(v, int | float) for k, v in row.items())
            and row.get("epoch") == epoch
            and "elapsed" in row
            for epoch, row in enumerate(state["history"], start=1)
        ):
            raise TypeError("history must hold one row of numbers per epoch, in order")
        self.history = [_upgrade_history_row(row) for row in state["history"]]
        self.epoch = state["epoch"]
        self.best_valid_top1 = float(state["best_valid_top1"])
        partial = state["partial"]
        if partial is not None:
            progress = EpochProgress.from_state_dict(partial["progress"], torch.device("cpu"))
            for loader in partial["loaders"]:
                if not (isinstance(loader["epoch"], int) and isinstance(loader["step"], int)):
                    raise TypeError("a loader's epoch and step must be whole numbers")
                if loader["epoch"] != self.epoch:
                    raise ValueError(f"a loader in epoch {loader['epoch']}, not {self.epoch}")
                if loader["step"] > 0 and progress.samples <= 0:
                    raise ValueError(f"{progress.samples} images counted in {loader['step']} steps")
        self.partial = partial
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(_as_python_state(rng["python"]))
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def _check_same_layout(fresh: object, saved: object, where: str) -> None:
    """TypeError unless ``saved`` has the layout of ``fresh`` where the two share keys (a
    checkpoint of another torch version may have a few others): the same list lengths and
    kinds of value (numbers, text, flags, containers) all the way down; a field this run
    has not set yet (None) may hold anything."""
    if isinstance(fresh, dict):
        if not isinstance(saved, dict):
            raise TypeError(f"{where} is {type(saved).__name__}, not a dict")
        for key in fresh.keys() & saved.keys():
            _check_same_layout(fresh[key], saved[key], f"{where}.{key}")
    elif isinstance(fresh, list | tuple):
        if not isinstance(saved, list | tuple) or len(saved) != len(fresh):
            raise TypeError(f"{where} is not a sequence of {len(fresh)}")
        for index, (a, b) in enumerate(zip(fresh, saved, strict=True)):
            _check_same_layout(a, b, f"{where}[{index}]")
    elif isinstance(fresh, bool | str):
        if type(saved) is not type(fresh):
            raise TypeError(f"{where} is {type(saved).__name__}, not {type(fresh).__name__}")
    elif isinstance(fresh, int | float) and (
        isinstance(saved, bool) or not isinstance(saved, int | float)
    ):
        raise TypeError(f"{where} is {type(saved).__name__}, not a number")


def _as_python_state(value) -> tuple:
    # torch.save keeps random.getstate()'s nested tuples; check the shape before using it.
    version, internal, gauss = value
    return (int(version), tuple(int(v) for v in internal), gauss)


def _check_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """load_state_dict checks the number of parameters, not the shapes of their momenta."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_groups = state["param_groups"]
    saved_ids = [i for group in saved_groups for i in group["params"]]
    if len(saved_ids) != len(params):
        raise ValueError(f"optimizer state for {len(saved_ids)} parameters, not {len(params)}")
    for param, saved_id in zip(params, saved_ids, strict=True):
        for name, value in state["state"].get(saved_id, {}).items():
            if isinstance(value, Tensor) and value.ndim and value.shape != param.shape:
                raise ValueError(f"optimizer {name} of shape {tuple(value.shape)}")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic
