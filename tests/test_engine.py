"""The training library in-process: a step, an epoch, a run's state, interruption,
compilation, schedules and the resume check."""

import itertools
import math
import signal

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from dataloader import DeviceLoader
from models import build_model
from training.ema import ExponentialMovingAverage
from training.engine import (
    EpochProgress,
    Interrupted,
    StopRequest,
    TrainState,
    TrainStep,
    train_one_epoch,
)
from training.metrics import evaluate
from training.optim import make_optimizer, make_scheduler, set_batch_norm_momentum
from training.options import optimizer_kwargs, parse_args, resume_mismatches, scheduler_kwargs
from utils import UserError

CPU = torch.device("cpu")


def tiny_run(*flags: str, images: int = 80, batch: int = 32, compiled=False, backend="inductor"):
    """A width-0.25 FishNet-99 with train.py's pieces over random images (full batches only)."""
    args = parse_args(["--width", "0.25", "--batch-size", str(batch), "--epochs", "2", *flags])
    torch.manual_seed(0)
    model = build_model("fishnet99", width=0.25, init=args.init)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(images) % 10
    loader = DeviceLoader(pixels, labels, batch, mean=(0.5,) * 3, std=(0.25,) * 3, train=True,
                          drop_last=True, seed=0)  # fmt: skip
    optimizer = make_optimizer(model, **optimizer_kwargs(args))
    scheduler = make_scheduler(optimizer, **scheduler_kwargs(args), steps_per_epoch=len(loader))
    ema = ExponentialMovingAverage(model, args.ema) if args.ema is not None else None
    step = TrainStep(model, optimizer, nn.CrossEntropyLoss(), CPU, "off", ema=ema,
                     compiled=compiled, compile_backend=backend)  # fmt: skip
    return args, model, loader, step, scheduler, TrainState(model, optimizer, scheduler,
                                                            step.scaler, ema)  # fmt: skip


def run_epoch(loader, step, scheduler, epoch: int, stop: StopRequest | None = None):
    loader.set_epoch(epoch)
    progress = EpochProgress.start(scheduler.get_last_lr()[0], CPU)
    return train_one_epoch(step, loader, scheduler, progress, stop or StopRequest(), epoch=epoch)


@pytest.mark.slow
def test_an_epoch_trains_full_batches_and_sums_its_metrics():
    _, model, loader, step, scheduler, _ = tiny_run()
    before = [p.detach().clone() for p in model.parameters()]
    progress = run_epoch(loader, step, scheduler, 0)
    assert progress.samples == 64  # 80 images, batch 32: the partial last batch is dropped
    summary = progress.summary()
    assert summary["train_samples"] == 64 and 0 <= summary["train_top1"] <= 100
    assert math.isfinite(summary["train_loss"])
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_an_interrupted_epoch_resumes_its_sums_named_or_not():
    """A checkpoint written before the sums were named holds loss, top-1 and top-5 hits."""
    older = {"lr": 0.1, "totals": torch.tensor([46.0, 3.0, 9.0]), "samples": 20, "seconds": 1.5}
    progress = EpochProgress.from_state_dict(older, CPU)
    assert progress.values() == {"loss": 2.3, "top1": 15.0, "top5": 45.0}
    again = EpochProgress.from_state_dict(progress.state_dict(), CPU)
    assert torch.equal(again.sums, progress.sums) and again.samples == 20
    assert progress.state_dict()["metrics"] == ["loss", "top1", "top5"]
    with pytest.raises(ValueError, match="no sums of top5"):
        EpochProgress.from_state_dict({**older, "metrics": ["loss", "top1", "top3"]}, CPU)


def test_identity_init_starts_at_the_uniform_loss():
    _, _model, loader, step, _, _ = tiny_run("--preset", "fast", "--batch-size", "32")
    loader.set_epoch(0)
    images, labels = next(iter(loader))
    loss, _ = step.forward_loss(images, labels)
    assert loss.item() == pytest.approx(math.log(10), abs=0.05)


@pytest.mark.slow
def test_state_round_trip_restores_every_part():
    _, model, loader, step, scheduler, state = tiny_run("--ema", "0.9")
    run_epoch(loader, step, scheduler, 0)
    history = [{"epoch": 1, "elapsed": 3.5}]
    state.history, state.epoch, state.best_valid_top1 = history, 1, 12.5
    saved = state.state_dict()
    _, model2, _, _, _, state2 = tiny_run("--ema", "0.9")
    state2.load_state_dict(saved)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, model2.state_dict()[key]), key
    for key, tensor in state.ema.module.state_dict().items():
        assert torch.equal(tensor, state2.ema.module.state_dict()[key]), key
    assert (state2.epoch, state2.best_valid_top1, state2.history) == (1, 12.5, history)
    assert state2.scheduler.state_dict() == state.scheduler.state_dict()


def test_history_rows_of_before_name_the_learning_rate_for_when_it_is_read():
    _, _, loader, step, scheduler, state = tiny_run()
    run_epoch(loader, step, scheduler, 0)
    state.history, state.epoch = [{"epoch": 1, "lr": 0.1, "elapsed": 3.5}], 1
    resumed = tiny_run()[-1]
    resumed.load_state_dict(state.state_dict())
    assert resumed.history == [{"epoch": 1, "lr_start": 0.1, "elapsed": 3.5}]


def _stopped_in_epoch_two(state: dict, step: int = 1, epoch: int = 1, samples: int = 32) -> dict:
    return {
        "loaders": [{"epoch": epoch, "step": step, "augment_rng": None}],
        "progress": {"lr": 0.1, "totals": torch.zeros(3), "samples": samples, "seconds": 1.0},
    }


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s.update(history=[{"epoch": 1}]), "one row of numbers per epoch"),
        (lambda s: s.update(history=[{"epoch": 2, "elapsed": 1.0}]), "one row of numbers"),
        (lambda s: s["scheduler"].update(last_epoch="3"), "scheduler.last_epoch is str"),
        (lambda s: s.update(partial={**_stopped_in_epoch_two(s), "progress": "0.1"}), "string"),
        (lambda s: s.update(partial=_stopped_in_epoch_two(s, epoch=5)), "in epoch 5, not 1"),
        (lambda s: s.update(partial=_stopped_in_epoch_two(s, samples=0)), "0 images counted"),
    ],
    ids=["row without time", "rows out of order", "scheduler", "sums", "loader", "no images"],
)
def test_a_resume_state_of_the_wrong_kind_is_refused_before_any_step(damage, message):
    """Parts that load_state_dict would take as they are, and that would fail steps or an
    epoch later, losing the work in between."""
    _, _, loader, step, scheduler, state = tiny_run()
    run_epoch(loader, step, scheduler, 0)
    state.history, state.epoch = [{"epoch": 1, "elapsed": 3.5}], 1
    saved = state.state_dict()
    damage(saved)
    with pytest.raises((TypeError, ValueError), match=message):
        tiny_run()[-1].load_state_dict(saved)


@pytest.mark.slow
def test_optimizer_state_of_another_shape_is_refused():
    _, _, loader, step, scheduler, state = tiny_run()
    run_epoch(loader, step, scheduler, 0)
    saved = state.state_dict()
    first = next(iter(saved["optimizer"]["state"].values()))
    first["momentum_buffer"] = torch.zeros(7)
    with pytest.raises(ValueError, match="momentum_buffer of shape"):
        tiny_run()[-1].load_state_dict(saved)


@pytest.mark.slow
def test_a_stop_request_interrupts_between_steps():
    _, _, loader, step, scheduler, _ = tiny_run(batch=16)
    stop = StopRequest()
    stop.signal = signal.SIGTERM
    with pytest.raises(Interrupted) as stopped:
        run_epoch(loader, step, scheduler, 0, stop)
    assert stopped.value.signum == signal.SIGTERM
    assert stopped.value.progress.samples == 16 and loader.step == 1


def test_out_of_memory_names_the_batch_size():
    _, _, loader, _, scheduler, _ = tiny_run()

    def out_of_memory(images, labels):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    step = TrainStep(nn.Linear(1, 1), None, None, CPU, "off")
    step.__class__ = type(
        "OOMStep", (TrainStep,), {"__call__": lambda self, x, y: out_of_memory(x, y)}
    )
    with pytest.raises(UserError, match=r"--batch-size 32; try --batch-size 16"):
        run_epoch(loader, step, scheduler, 0)


@pytest.mark.slow
def test_a_run_with_a_partial_last_batch_compiles_once():
    counter = CompileCounterWithBackend("aot_eager")
    _, model, loader, step, scheduler, _ = tiny_run(compiled=True, backend=counter)
    for epoch in range(2):
        run_epoch(loader, step, scheduler, epoch)
        loader_eval = DeviceLoader(loader.images.cpu(), loader.labels.cpu(), 32, mean=(0.5,) * 3,
                                   std=(0.25,) * 3, train=False)  # fmt: skip
        evaluate(model, loader_eval, 10, CPU, "off")  # evaluation stays eager
    assert counter.frame_count == 1


@pytest.mark.slow
def test_compiled_step_trains_as_the_eager_one():
    _, eager_model, loader, step, scheduler, _ = tiny_run()
    run_epoch(loader, step, scheduler, 0)
    _, compiled_model, loader, step, scheduler, _ = tiny_run(compiled=True, backend="aot_eager")
    run_epoch(loader, step, scheduler, 0)
    for key, tensor in eager_model.state_dict().items():
        torch.testing.assert_close(compiled_model.state_dict()[key], tensor, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("schedule", ["step", "cosine", "onecycle"])
def test_every_schedule_warms_up(schedule):
    _args, _, loader, _step, scheduler, _ = tiny_run(
        "--schedule", schedule, "--warmup-epochs", "1", "--lr", "0.4", batch=8
    )
    rates = []
    for _ in range(len(loader)):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.step()
    assert rates[0] < 0.1 and rates == sorted(rates) and rates[-1] == pytest.approx(0.4, rel=0.2)


def test_unknown_optimizer_or_schedule_is_an_error():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        make_optimizer(model, name="lbfgs")
    with pytest.raises(ValueError, match="unknown schedule 'exponential'"):
        make_scheduler(make_optimizer(model), name="exponential", epochs=1, steps_per_epoch=10,
                       lr=0.1)  # fmt: skip


def test_no_weight_decay_on_norm_and_bias():
    args, model, *_ = tiny_run("--no-decay-norm-bias")
    groups = make_optimizer(model, **optimizer_kwargs(args)).param_groups
    assert [g["weight_decay"] for g in groups] == [args.weight_decay, 0.0]
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["params"]


# Every step's rate of each schedule (5 steps an epoch, SGD at lr 0.4), as the schedules
# gave them when they read train.py's flags directly: exact, in hexadecimal.
SCHEDULE_RATES = {
    ("step", 4, 1, 0.5, None): ["0x1.999999999999ap-2"] * 5 + ["0x1.999999999999ap-3"] * 5
    + ["0x1.999999999999ap-4"] * 5 + ["0x1.999999999999ap-5"] * 5,
    ("step", 4, 2, 0.1, 1.0): ["0x1.47ae147ae147cp-4", "0x1.26e978d4fdf3dp-3",
        "0x1.a9fbe76c8b43cp-3", "0x1.16872b020c49dp-2", "0x1.5810624dd2f1dp-2"]
    + ["0x1.999999999999ap-2"] * 10 + ["0x1.47ae147ae147cp-5"] * 5,
    ("cosine", 3, 30, 0.1, 0.5): ["0x1.999999999999ap-3", "0x1.3333333333334p-2",
        "0x1.999999999999ap-2", "0x1.93a61d4687ecdp-2", "0x1.8224326694d2ap-2",
        "0x1.661852001459fp-2", "0x1.4123c0c42d3a5p-2", "0x1.156c4f07145eep-2",
        "0x1.caf8c9791064ap-3", "0x1.683a69ba22cedp-3", "0x1.085a95250a75cp-3",
        "0x1.61d76355b17dbp-4", "0x1.9c0a3ccc29fd8p-5", "0x1.775673304c70ep-6",
        "0x1.7cdf14c46b335p-8"],
    ("onecycle", 3, 30, 0.1, None): ["0x1.0624dd2f1aa00p-6", "0x1.69a2bb25c44e4p-4",
        "0x1.00bdcc1d3297ep-2", "0x1.8621332dd735fp-2", "0x1.975004163d23ap-2",
        "0x1.8551898fc1ee6p-2", "0x1.62ede2ce54e97p-2", "0x1.33334e0b25cdfp-2",
        "0x1.f4beefeb35d1bp-3", "0x1.7afe0852c966fp-3", "0x1.03f563c157cfdp-3",
        "0x1.347145fcb3ed5p-4", "0x1.1cb3cde77b286p-5", "0x1.23359644c6913p-7",
        "0x1.ad7f29abcaf48p-20"],
}  # fmt: skip


@pytest.mark.parametrize("case", SCHEDULE_RATES, ids=lambda case: f"{case[0]}-{case[-1]}")
def test_every_schedule_gives_the_rates_it_always_gave(case):
    name, epochs, step_size, gamma, warmup = case
    flags = ["--optimizer", "sgd", "--lr", "0.4", "--nesterov", "--weight-decay", "5e-4",
             "--no-decay-norm-bias", "--schedule", name, "--epochs", str(epochs),
             "--step-size", str(step_size), "--gamma", str(gamma)]  # fmt: skip
    args = parse_args(flags + (["--warmup-epochs", str(warmup)] if warmup is not None else []))
    optimizer = make_optimizer(nn.Linear(2, 2), **optimizer_kwargs(args))
    scheduler = make_scheduler(optimizer, **scheduler_kwargs(args), steps_per_epoch=5)
    rates = []
    for _ in range(epochs * 5):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates == [float.fromhex(rate) for rate in SCHEDULE_RATES[case]]


def test_resume_names_changed_fields_and_accepts_older_checkpoints():
    args = parse_args(["--lr", "0.05", "--device", "cpu", "--compile"])
    saved = dict(vars(parse_args([])))
    assert resume_mismatches(saved, args) == ["--lr 0.1 (now 0.05)"]
    # A checkpoint written before --ema, --cutout or --init existed holds none of them, and
    # --augment as one name.
    dropped = ("ema", "cutout_size", "init")
    older = {k: v for k, v in vars(parse_args([])).items() if k not in dropped}
    older["augment"] = "crop-flip"
    assert resume_mismatches(older, parse_args([])) == []
    assert resume_mismatches(older, parse_args(["--ema", "0.9"])) == ["--ema None (now 0.9)"]


def test_the_linear_schedule_warms_up_then_falls_to_zero_at_the_end():
    args = parse_args(["--schedule", "linear", "--lr", "0.4", "--epochs", "4",
                       "--warmup-epochs", "1"])  # fmt: skip
    optimizer = make_optimizer(nn.Linear(2, 2), **optimizer_kwargs(args))
    scheduler = make_scheduler(optimizer, **scheduler_kwargs(args), steps_per_epoch=5)
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:6] == sorted(rates[:6]) and rates[5] == pytest.approx(0.4)
    falls = rates[5:]
    assert all(b - a == pytest.approx(-0.4 / 15) for a, b in itertools.pairwise(falls))
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # after the last step


def test_bn_momentum_sets_every_batch_norm_layer_and_none_leaves_them():
    model = build_model("fishnet99", width=0.25)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    set_batch_norm_momentum(model, None)
    assert norms and {m.momentum for m in norms} == {0.1}
    set_batch_norm_momentum(model, 0.4)
    assert {m.momentum for m in norms} == {0.4}
    assert parse_args(["--bn-momentum", "0.4"]).bn_momentum == 0.4
    assert parse_args([]).bn_momentum is None


def test_a_step_on_mixed_targets_trains_and_scores_within_bounds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10))  # fmt: skip
    pixels = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    loader = DeviceLoader(pixels, torch.arange(64) % 10, 16, mean=(0.5,) * 3, std=(0.25,) * 3,
                          train=True, augment=["crop-flip", "cutmix"], num_classes=10)  # fmt: skip
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    step = TrainStep(model, make_optimizer(model), criterion, CPU, "off")
    scheduler = make_scheduler(step.optimizer, name="step", epochs=1, steps_per_epoch=4, lr=0.1)
    progress = run_epoch(loader, step, scheduler, 0)
    summary = progress.summary()
    assert math.isfinite(summary["train_loss"]) and summary["train_samples"] == 64
    # Top-1 counts the mixed shares: fractions of an image, within 0..100 %.
    assert 0 <= summary["train_top1"] <= summary["train_top5"] <= 100


@pytest.mark.parametrize("value", ["0", "-0.0", "1.5", "nan"])
def test_bn_momentum_must_let_the_statistics_move(value, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--bn-momentum", value])
    assert "--bn-momentum" in capsys.readouterr().err
    assert parse_args(["--bn-momentum", "1"]).bn_momentum == 1.0  # the last batch only
