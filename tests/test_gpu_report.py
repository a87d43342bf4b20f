"""training.cli.run_child's deadline and log: a child stopped on time, its output all kept."""

import signal
import sys

import pytest

from training import cli
from training.cli import DeadlinePassed, run_child

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
