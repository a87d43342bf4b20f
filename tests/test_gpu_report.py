"""bench.py gpu-report at --tiny on the CPU (one run, shared by the tests that read it), its
budget, its refusals, and the deadline of training.cli.run_child that the budget rests on."""

import json
import re
import signal
import sys

import pytest
from conftest import one_line_error, run_script

import bench
from training import cli
from training.cli import DeadlinePassed, run_child
from utils import UserError

STAGES = (
    "## 1. The machine",
    "## 2. `train.py --preset fast`",
    "## 3. The training step at batch 32",
    "## 4. `eval.py` and `predict.py`",
)
LOGS = ("train.log", "train-step.log", "eval.log", "predict.log")


@pytest.fixture(scope="module")
def tiny_report(synthetic_cifar10_dir, tmp_path_factory):
    """(the report's folder, the finished command) of one --tiny run: about a minute on the
    2-core development machine, most of it five starts of Python with torch."""
    out = tmp_path_factory.mktemp("gpu-report") / "report"
    result = run_script(
        "bench.py", "gpu-report", "--device", "cpu", "--tiny", "--out", out,
        "--data", synthetic_cifar10_dir,
    )  # fmt: skip
    return out, result


def row(report: str, name: str) -> str:
    """The value cells of the table row whose first cell starts with ``name``."""
    (line,) = [line for line in report.splitlines() if line.startswith(f"| {name}")]
    return line


@pytest.mark.slow
def test_tiny_report_names_every_stage_with_its_figures(tiny_report):
    out, result = tiny_report
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"report: {out / 'report.md'}"
    report = (out / "report.md").read_text()
    head = report.split("## 1.")[0]
    assert "--tiny" in head and "Measured on the CPU" in head
    positions = [report.index(stage) for stage in STAGES]
    assert positions == sorted(positions)
    # The machine, the data by its folder and hashes.
    assert row(report, "device") == "| device | cpu |"
    assert re.search(r"^\| commit \| ([0-9a-f]{40}|unknown)", report, re.M)
    assert len(re.findall(r"^\| `\w+_img2labels\.json` sha256 \| [0-9a-f]{64} \|$", report, re.M))
    assert report.count("sha256 |") == 3
    # train.py --preset fast: its figures, and the compile line it printed.
    assert re.fullmatch(r"\| start-up \(epoch 1[^|]*\| \d+\.\d s \|", row(report, "start-up"))
    assert row(report, "compilation") == "| compilation | not compiled |"
    assert re.fullmatch(r"\| steady images/s [^|]*\| [\d,]+ \|", row(report, "steady"))
    assert re.fullmatch(r"\| training time to 85\.06 %[^|]*\| not reached in \d+ s \|",
                        row(report, "training time"))  # fmt: skip
    assert re.fullmatch(r"\| final test top-1 \| \d+\.\d\d % \|", row(report, "final test top-1"))
    assert re.fullmatch(r"\| final test top-5 \| \d+\.\d\d % \|", row(report, "final test top-5"))
    assert re.fullmatch(r"\| eval time per epoch \| mean \d+\.\d\d s, max \d+\.\d\d s \|",
                        row(report, "eval time"))  # fmt: skip
    assert "\ncompile: off (auto: on CUDA only" in report
    # The training step: both pipelines with images/s, TFLOP/s, fraction of peak, start-up.
    number = r"[\d.e+-]+"
    for pipeline in ("this repository", "seed-style"):
        assert re.fullmatch(
            rf"\| {pipeline} \([^)]*\) \| [\d,]+ \| {number} \| - \| \d+\.\d \|",
            row(report, pipeline),
        )
    assert re.search(r"^Ratio: \d+\.\d\dx; fishnet99 \(width 0\.0625\)", report, re.M)
    # eval.py and predict.py: exit codes, wall times, eval.py's scores.
    assert re.fullmatch(r"\| `eval.py` \| finished in [^|]* \| 0 \| \d+\.\d s \| "
                        r"\d+\.\d\d % \| \d+\.\d\d % \|", row(report, "`eval.py`"))  # fmt: skip
    assert re.fullmatch(r"\| `predict.py` \| finished in [^|]* \| 0 \| \d+\.\d s \| - \| - \|",
                        row(report, "`predict.py`"))  # fmt: skip
    # The exact commands, and the raw logs beside the report.
    assert "train.py --preset fast --report-test" in report and "--width 0.0625" in report
    assert all((out / log).stat().st_size > 0 for log in LOGS)
    assert (out / "fast" / "best.pt").is_file() and (out / "fast" / "history.json").is_file()
    assert "airplane/00000.png: " in (out / "predict.log").read_text()
    step = json.loads((out / "train-step.json").read_text())
    assert step["batch_size"] == 32 and set(step["pipelines"]) == {"this repository", "seed-style"}


@pytest.mark.slow
def test_an_existing_report_is_refused_before_any_program(tiny_report, monkeypatch):
    out, _ = tiny_report
    before = (out / "report.md").read_bytes()

    def no_child(*args, **kwargs):
        raise AssertionError("a program was started")

    monkeypatch.setattr(bench, "run_child", no_child)
    with pytest.raises(
        UserError, match=r"holds a report or run \(report\.md, fast/last\.pt, fast/"
    ):
        bench.main(["gpu-report", "--device", "cpu", "--tiny", "--out", str(out)])
    assert (out / "report.md").read_bytes() == before


def test_without_a_gpu_only_the_tiny_report_runs(tmp_path):
    with pytest.raises(UserError, match="--device cpu is cpu, not a CUDA GPU; --tiny runs"):
        bench.main(["gpu-report", "--device", "cpu", "--out", str(tmp_path / "report")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_out_that_is_a_file_is_refused_in_one_line(synthetic_cifar10_dir, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    result = run_script("bench.py", "gpu-report", "--device", "cpu", "--tiny", "--out", a_file,
                        "--data", synthetic_cifar10_dir)  # fmt: skip
    one_line_error(result, "--out", "is a file, not a folder")
    assert a_file.read_text() == "mine" and result.stdout == ""


@pytest.mark.slow
def test_the_budget_stops_training_and_still_writes_the_report(synthetic_cifar10_dir, tmp_path):
    # 1 s: the machine's description took 0.01 s on the 2-core development machine, and no
    # machine runs train.py in the rest (2-9 s to import torch there, 12 s for the --tiny run).
    out = tmp_path / "report"
    result = run_script("bench.py", "gpu-report", "--device", "cpu", "--tiny", "--budget", "1",
                        "--out", out, "--data", synthetic_cifar10_dir)  # fmt: skip
    assert result.returncode == 124, result.stderr
    assert result.stderr.strip() == (
        f"bench.py: the budget of 1 s ran out during train.py --preset fast; the report so "
        f"far: {out / 'report.md'}"
    )
    report = (out / "report.md").read_text()
    assert "Outcome: **stopped at the budget after" in report
    assert report.count("skipped (budget)") == 5  # bench.py train; eval.py, predict.py twice
    assert "## 1. The machine" in report and "## 4. `eval.py` and `predict.py`" in report


# -- run_child's deadline and log ------------------------------------------------------------


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_child_logs_both_streams_and_returns_the_status(tmp_path):
    log = tmp_path / "child.log"
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    assert run_child(python(code), deadline=60, log=log) == 3
    assert sorted(log.read_text().split()) == ["err", "out"]


def test_run_child_stops_a_child_at_its_deadline(tmp_path):
    log = tmp_path / "child.log"
    code = "import time; print('started', flush=True); time.sleep(60)"
    with pytest.raises(DeadlinePassed) as stopped:
        run_child(python(code), deadline=2, log=log)
    assert stopped.value.child_status == -signal.SIGTERM and stopped.value.status == 124
    assert "killed by SIGTERM" in str(stopped.value)
    assert log.read_text() == "started\n"  # unbuffered: nothing lost with the child


def test_run_child_kills_a_child_that_outlives_the_grace(monkeypatch):
    monkeypatch.setattr(cli, "STOP_GRACE_SECONDS", 0.5)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    with pytest.raises(DeadlinePassed) as stopped:
        run_child(python(code), deadline=2)
    assert stopped.value.child_status == -signal.SIGKILL
