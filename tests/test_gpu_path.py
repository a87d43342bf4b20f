"""The GPU path's parts that the CPU can check: a moving average and an evaluation that
never wait for the device, compilation that reports what it did, the compile decision,
checkpoints that cost less per epoch, and resuming across precisions and device types."""

import json
import os
import shutil
import signal

import pytest
import torch
from conftest import SMALL
from torch import nn
from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils._python_dispatch import TorchDispatchMode

import train
from dataloader import DeviceLoader
from models import build_model
from training.compilation import CompileWatch
from training.ema import ExponentialMovingAverage
from training.engine import (
    EpochClock,
    EpochProgress,
    StopRequest,
    TrainStep,
    check_deterministic,
    train_one_epoch,
)
from training.metrics import evaluate
from training.options import parse_args
from utils import UserError

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Dynamo recompiles the step's code for every new TrainStep, and runs it eagerly after
    a few (its recompile limit): each test starts with the compiler's caches empty."""
    torch._dynamo.reset()


class OperatorCount(TorchDispatchMode):
    """The operators dispatched inside the ``with`` block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def small_fishnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("fishnet99", width=0.25)


def nudge(model: nn.Module, generator: torch.Generator) -> None:
    """A stand-in for an optimizer step and a forward pass: weights and statistics move."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.1)
            else:
                tensor.add_(1)


def test_the_moving_average_equals_averaged_models():
    model = small_fishnet()
    ours = ExponentialMovingAverage(model, 0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        nudge(model, generator)
        ours.update()
        reference.update_parameters(model)
    expected = reference.module.state_dict()
    for name, tensor in ours.module.state_dict().items():
        if tensor.is_floating_point():
            assert torch.equal(tensor, expected[name]), name
        else:  # AveragedModel averages the counters too; they are copied here
            assert torch.equal(tensor, model.state_dict()[name]), name
    assert ours.updates == int(reference.n_averaged) == 4


def test_a_moving_average_update_is_a_few_operators():
    """AveragedModel dispatched about 1,600 operators per update of FishNet-99, one a
    read of a CPU count (a wait for the GPU); the bound keeps that loop from returning."""
    model = small_fishnet()
    average = ExponentialMovingAverage(model, 0.99)
    for _ in range(2):  # the first update copies, the others average
        with OperatorCount() as count:
            average.update()
        assert len(count.calls) <= 4, count.calls
        assert "_local_scalar_dense" not in count.calls and "item" not in count.calls


def test_the_moving_average_resumes_from_averaged_models_checkpoints():
    model = small_fishnet()
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    reference.update_parameters(model)
    reference.update_parameters(model)
    average = ExponentialMovingAverage(small_fishnet(), 0.9)
    average.load_state_dict(
        {"state_dict": reference.module.state_dict(), "updates": reference.n_averaged}
    )
    assert average.updates == 2
    with pytest.raises(TypeError, match="whole number"):
        average.load_state_dict({"state_dict": model.state_dict(), "updates": -1})


def random_loader(images: int, batch: int) -> DeviceLoader:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(images) % 10
    return DeviceLoader(
        pixels, labels, batch, mean=(0.5,) * 3, std=(0.25,) * 3, train=False, device=CPU
    )


@pytest.mark.slow
def test_evaluation_reads_the_device_only_at_its_end():
    """Per batch, no read-back (``_local_scalar_dense``: .item(), bool(), CUDA bincount's
    min and max) and no bincount; the counts equal those of the predictions."""
    model = small_fishnet().eval()
    reads = []
    for batches in (1, 3):
        with OperatorCount() as count:
            result = evaluate(model, random_loader(16 * batches, 16), 10, CPU, "off")
        reads.append(count.calls.count("_local_scalar_dense"))
        assert "bincount" not in count.calls
    assert reads[0] == reads[1]
    loader = random_loader(48, 16)
    with torch.no_grad():
        predicted = torch.cat([model(images).argmax(1) for images, _ in loader])
    expected = torch.zeros(10, 10, dtype=torch.int64)
    for label, guess in zip(loader.labels.tolist(), predicted.tolist(), strict=True):
        expected[label, guess] += 1
    assert torch.equal(result["confusion"], expected)


class WithGraphBreak(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(12, 16), nn.Linear(16, 10)

    def forward(self, images):
        hidden = self.first(images.flatten(1)[:, :12])
        torch._dynamo.graph_break()
        return self.second(hidden)


def linear_step(model: nn.Module, backend, mode=None) -> TrainStep:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainStep(
        model, optimizer, nn.CrossEntropyLoss(), CPU, "off",
        compiled=True, compile_backend=backend, compile_mode=mode,
    )  # fmt: skip


def run_steps(step: TrainStep, count: int = 4) -> None:
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    for _ in range(count):
        step(images, labels)


def test_compilation_reports_graphs_and_graph_breaks(capsys):
    clean = linear_step(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), "aot_eager")
    run_steps(clean)
    assert clean.compile_watch.outcome().numbers() == {
        "compile_graphs": 1, "compile_graph_breaks": 0, "compile_recompilations": 0,
        "cudagraph_skips": 0, "compile_failed": 0,
    }  # fmt: skip
    broken = linear_step(WithGraphBreak(), "aot_eager")
    run_steps(broken)
    outcome = broken.compile_watch.outcome()
    # The break splits the model's forward and the step around it: three graphs.
    assert outcome.numbers()["compile_graph_breaks"] >= 1
    assert outcome.numbers()["compile_graphs"] == 3
    broken.report_compilation()
    printed = capsys.readouterr().out
    assert "compile: 3 graph(s) compiled" in printed and "graph_break()" in printed


def test_a_failed_compilation_is_one_line_and_the_step_runs_eagerly(capsys):
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    step = linear_step(model, failing_backend)
    before = model[1].weight.detach().clone()
    run_steps(step, 2)
    assert not step.compiled and not torch.equal(model[1].weight, before)
    step.report_compilation()
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("compile: failed (") and "no compiler here" in line
    assert "runs eagerly" in line
    assert step.compile_watch.outcome().numbers()["compile_failed"] == 1


def test_torch_compile_unavailable_is_reported_as_a_failure(monkeypatch):
    def unavailable(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    step = linear_step(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), "inductor")
    run_steps(step, 1)
    assert "not supported" in step.compile_watch.outcome().describe(cudagraphs=False)[0]


@pytest.mark.slow
def test_skipped_cuda_graphs_are_counted():
    """Inductor skips CUDA graphs for a graph of CPU operations (silently, there)."""
    step = linear_step(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), "inductor",
                       mode="reduce-overhead")  # fmt: skip
    run_steps(step, 3)
    assert step.compile_watch.outcome().numbers()["cudagraph_skips"] >= 1


def test_the_reason_inductor_gives_for_skipping_cuda_graphs_is_reported():
    watch = CompileWatch()
    log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (2 instances)")
    outcome = watch.outcome()
    assert outcome.cudagraph_skips == 1
    assert outcome.describe(cudagraphs=True)[-1] == (
        "compile: CUDA graphs skipped: skipping cudagraphs due to mutated inputs (2 instances)"
    )


def test_the_first_epoch_says_what_compilation_did(capsys):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    step = linear_step(model, "aot_eager")
    loader = random_loader(64, 8)
    loader.train = True
    progress = EpochProgress.start(0.1, CPU)
    scheduler = torch.optim.lr_scheduler.LambdaLR(step.optimizer, lambda _: 1.0)
    train_one_epoch(step, loader, scheduler, progress, StopRequest(), epoch=0,
                    clock=EpochClock(epochs_left=1))  # fmt: skip
    printed = capsys.readouterr().out
    assert "start-up: the first 3 steps" in printed and "(compilation happens there)" in printed
    assert "compile: 1 graph(s) compiled, 0 graph break(s), 0 recompilation(s)" in printed


def test_after_a_resume_in_mid_epoch_the_estimate_counts_the_steps_left(capsys):
    """16 steps an epoch, resumed at step 4 of the first of 2 epochs left: the estimate,
    after 3 start-up and 5 timed steps (at step 12), counts the 4 left of this epoch and
    the next epoch's 16."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), CPU, "off")  # fmt: skip
    loader = random_loader(64, 4)
    loader.load_state_dict({"epoch": 0, "step": 4, "augment_rng": None})
    scheduler = torch.optim.lr_scheduler.LambdaLR(step.optimizer, lambda _: 1.0)
    train_one_epoch(step, loader, scheduler, EpochProgress.start(0.1, CPU), StopRequest(),
                    epoch=0, clock=EpochClock(epochs_left=2))  # fmt: skip
    printed = capsys.readouterr().out
    assert "(not compiled: only memory allocation and caches warm up there)" in printed
    assert "of training for the 20 steps left (2 epochs)" in printed


@pytest.mark.parametrize(
    ("flags", "device", "world_size", "expected"),
    [
        (["--preset", "fast"], CUDA, 1, (True, "reduce-overhead")),
        (["--preset", "accuracy"], CUDA, 1, (True, "reduce-overhead")),
        (["--preset", "fast"], CUDA, 2, (True, None)),  # DDP: no CUDA graphs
        ([], CUDA, 1, (True, "reduce-overhead")),  # seed: 100 epochs
        (["--preset", "fast", "--epochs", "2"], CUDA, 1, (False, None)),  # 80,000 images
        (["--preset", "fast", "--no-compile"], CUDA, 1, (False, None)),
        (["--preset", "fast"], CPU, 1, (False, None)),
        (["--preset", "cpu", "--compile"], CPU, 1, (True, None)),
    ],
    ids=["fast", "accuracy", "ddp", "seed", "short", "refused", "cpu", "cpu asked"],
)
def test_the_compile_decision(flags, device, world_size, expected):
    args = parse_args(flags)
    compiled, mode, note = train.choose_compile(args, device, 40_000, world_size)
    assert (compiled, mode) == expected
    assert note.startswith(f"compile: {'on' if compiled else 'off'}")


@pytest.mark.slow
def test_an_operation_without_a_deterministic_kernel_is_refused_before_training():
    class Scatter(nn.Module):  # put_ has no deterministic implementation, even on the CPU
        def forward(self, images):
            out = torch.zeros(images.shape[0], 10)
            return out.put_(torch.zeros(2, dtype=torch.int64), images.flatten()[:2]) + images.sum()

    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(UserError, match=r"--deterministic: put_ has no deterministic"):
            check_deterministic(Scatter(), nn.CrossEntropyLoss(), CPU, "off", False)
        check_deterministic(small_fishnet(), nn.CrossEntropyLoss(), CPU, "off", True)
    finally:
        torch.use_deterministic_algorithms(False)


def train_in_process(data, out, *flags) -> None:
    """train.py's main, with the signal handlers it installs put back afterwards."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        train.main(["--data", str(data), "--out", str(out), *SMALL, *map(str, flags)])
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@pytest.mark.slow
def test_a_run_resumes_with_another_precision(synthetic_cifar10_dir, tmp_path, capsys):
    """--amp is not run-defining: auto picks fp16 on older GPUs, bf16 on newer ones."""
    out, narrow = tmp_path / "run", ["--width", "0.0625"]  # fp16 is slow on a CPU
    train_in_process(synthetic_cifar10_dir, out, *narrow, "--epochs", "1", "--amp", "off")
    train_in_process(synthetic_cifar10_dir, out, *narrow, "--epochs", "2", "--amp", "fp16",
                     "--resume")  # fmt: skip
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["scaler"]["scale"] > 0
    train_in_process(synthetic_cifar10_dir, out, *narrow, "--epochs", "3", "--amp", "off",
                     "--resume")  # fmt: skip
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3


@pytest.mark.slow
def test_a_mid_epoch_state_from_another_device_type_draws_anew(
    synthetic_cifar10_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    train_in_process(synthetic_cifar10_dir, out, "--epochs", "1")
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    # Stopped after one step of epoch 2 on a CUDA GPU: its generator state is 16 bytes.
    checkpoint["partial"] = {
        "loaders": [{"epoch": 1, "step": 1, "augment_rng": torch.zeros(16, dtype=torch.uint8)}],
        "progress": {"lr": 0.1, "totals": torch.zeros(3), "samples": 32, "seconds": 1.0},
    }
    torch.save(checkpoint, out / "last.pt")
    train_in_process(synthetic_cifar10_dir, out, "--epochs", "2", "--resume")
    assert "draws its augmentation anew" in capsys.readouterr().out
    history = json.loads((out / "history.json").read_text())
    assert [row["train_samples"] for row in history] == [64, 64]


@pytest.mark.slow
def test_checkpoints_wait_for_the_interval_and_keep_the_best_epoch(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    train_in_process(
        synthetic_cifar10_dir, out, "--epochs", "3", "--save-every", "3600", "--lr", "0.05"
    )
    history = json.loads((out / "history.json").read_text())
    best_epoch = max(history, key=lambda row: row["valid_top1"])["epoch"]  # the first best
    best = torch.load(out / "best.pt", weights_only=True)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3
    assert best["epoch"] == best_epoch
    if best_epoch == 3:  # one file under two names: nothing was copied
        assert os.path.samefile(out / "best.pt", out / "last.pt")


@pytest.mark.slow
def test_best_pt_is_a_link_that_a_new_last_pt_leaves_alone(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    train_in_process(synthetic_cifar10_dir, out, "--epochs", "1")
    assert os.path.samefile(out / "best.pt", out / "last.pt")
    shutil.copyfile(out / "best.pt", tmp_path / "best-before.pt")
    train_in_process(synthetic_cifar10_dir, out, "--epochs", "2", "--resume", "--save-every", "0")
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
    best = torch.load(out / "best.pt", weights_only=True)["epoch"]
    if best == 1:
        assert (out / "best.pt").read_bytes() == (tmp_path / "best-before.pt").read_bytes()
