"""Command-line plumbing: user errors as one line and exit status 2, argparse value types,
output paths checked before the work, child processes that end with their parent."""

import argparse
import contextlib
import copy
import functools
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from utils import (
    UserError,
    end_with_parent,
    file_in_the_way,
    make_output_printable,
    printable,
    stop_signals_to,
)


class Ended(Exception):
    """A command that ends with ``status`` and a one-line note, its work saved or another
    program's error already shown: Ctrl-C or SIGTERM (128 + the signal's number, the note
    saying what was kept and how to go on), or a child program that failed (its status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def program_name() -> str:
    """How the user started this program: ``train.py``, or ``python -m tools.convert``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec is not None else Path(sys.argv[0]).name


def run_cli(main: Callable[[], object]) -> None:
    """Runs a command-line entry point: user errors become one line and exit status 2, and
    everything printed is plain text (no terminal control sequences, whatever the names)."""
    make_output_printable()
    try:
        main()
    except UserError as error:
        print(f"{program_name()}: error: {printable(error)}", file=sys.stderr)
        sys.exit(2)
    except Ended as ended:
        print(f"{program_name()}: {printable(ended)}", file=sys.stderr)
        sys.exit(ended.status)
    except KeyboardInterrupt:
        print(f"{program_name()}: interrupted", file=sys.stderr)
        sys.exit(130)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be zero or a positive finite number, got {text}")
    return value


def at_most(parse: Callable[[str], float], limit: float) -> Callable[[str], float]:
    """The argparse type ``parse`` with an upper bound: values beyond it would only hang,
    overflow or exhaust the machine."""

    def parse_at_most(text: str) -> float:
        value = parse(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit:,}, got {text}")
        return value

    parse_at_most.__name__ = parse.__name__  # argparse names the type in its messages
    return parse_at_most


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default once: argparse's "(default: X)", except where the default is
    None and the help says in words what happens then."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.help is None or "default" in action.help:
            return action.help or ""
        return super()._get_help_string(action)

    def _expand_help(self, action: argparse.Action) -> str:
        # A list default (--augment's, which a preset or a config file may set) as the
        # command line writes it: crop-flip cutout, not ['crop-flip', 'cutout'].
        if isinstance(action.default, list):
            action = copy.copy(action)
            action.default = " ".join(map(str, action.default))
        return super()._expand_help(action)


def python_command() -> str:
    """How to start this Python from the current folder: ``python`` where that is the one
    on PATH, else its path (a virtual environment that is not activated)."""
    on_path = shutil.which("python")
    if on_path and os.path.realpath(on_path) == os.path.realpath(sys.executable):
        return "python"
    try:
        return os.path.relpath(sys.executable)
    except ValueError:  # another drive (Windows)
        return sys.executable


def rerun_command(script: str, drop: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> str:
    """The command line that starts ``script`` (a file, or ``-m`` and a module) again with
    this process's flags, less ``drop``, plus ``add``."""
    argv = [arg for arg in sys.argv[1:] if arg not in drop]
    program = script.split(" ", 1) if script.startswith("-m ") else [script]
    return shlex.join([python_command(), *program, *argv, *add])


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_SAMPLE_BYTES = 1 << 16


def _is_kind(path: Path, kind: str) -> bool:
    """Whether the regular file ``path`` is a PNG image (``kind`` "png") or UTF-8 text
    ("text"), judging by its first bytes."""
    try:
        with open(path, "rb") as stream:
            start = stream.read(TEXT_SAMPLE_BYTES)
    except OSError:
        return False
    if kind == "png":
        return start.startswith(PNG_SIGNATURE)
    try:
        start.decode()
    except UnicodeDecodeError as error:  # a sample may end inside a character
        return error.start >= len(start) - 3 and b"\0" not in start
    return b"\0" not in start


def check_output_file(
    path: Path, flag: str, kind: str | None = None, inputs: Sequence[Path] = ()
) -> None:
    """Refuses, before any work, an output file that cannot be written where it is asked
    for (a folder, a path below a file), that is one of the command's ``inputs``, or that
    exists and is not of the ``kind`` the command writes ("png", "text"): a figure or a table
    replaces only an earlier one, never a checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: a folder, not a file")
    check_output_folder(path.parent, flag, shown=path)
    if not (path.exists() or path.is_symlink()):
        return
    if any(Path(given).exists() and os.path.samefile(path, given) for given in inputs):
        raise UserError(f"{flag} {path}: is an input of this command; name another output")
    if kind is not None and not (path.is_file() and _is_kind(path, kind)):
        what = "a PNG image" if kind == "png" else "a text file"
        raise UserError(f"{flag} {path}: exists and is not {what}; not replaced")


def check_output_folder(folder: Path, flag: str, shown: Path | None = None) -> None:
    """Refuses, before any work, an output folder that is a file or lies inside one."""
    in_the_way = file_in_the_way(folder)
    if in_the_way is not None:
        shown = shown if shown is not None else folder
        raise UserError(f"{flag} {shown}: {in_the_way} is a file, not a folder")


# How long a child stopped at its deadline may take to save its place and exit (train.py
# saves a checkpoint within seconds) before it is killed: a SIGTERM that arrives during
# torch.compile is acted on only when the compilation ends, minutes later on a GPU.
STOP_GRACE_SECONDS = 30.0


class DeadlinePassed(Ended):
    """A child program stopped at its deadline: SIGTERM, then SIGKILL if it outlived the
    grace period. ``child_status`` is how it ended (negative: the signal that ended it);
    ``status`` is 124, the exit status of timeout(1)."""

    def __init__(self, child_status: int, deadline: float) -> None:
        super().__init__(
            124, f"stopped at its deadline of {deadline:g} s ({exit_text(child_status)})"
        )
        self.child_status = child_status


def exit_text(status: int) -> str:
    """A child's exit status in words: "exit status 1", or "killed by SIGTERM" for the
    negative statuses of subprocess."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def run_child(
    command: Sequence[str], deadline: float | None = None, log: Path | None = None
) -> int:
    """Runs ``command`` to its end and returns its exit status; the child ends with this
    process.

    Ctrl-C and SIGTERM given to this process are passed on to the child, once each (the
    child runs in a session of its own, so a terminal's Ctrl-C does not reach it twice), and
    the child stops as it does for them: train.py saves its place and exits. Then this
    raises :class:`Ended`. If this process is killed outright, the child gets SIGTERM.

    ``deadline``: seconds the child may run; then it gets SIGTERM (train.py saves its place
    and exits), and SIGKILL with the rest of its process group :data:`STOP_GRACE_SECONDS`
    later if it is still running, and this raises :class:`DeadlinePassed`. ``log``: a file
    (replaced) that takes the child's standard output and error, unbuffered, so that it can
    be followed as it grows and holds everything up to the moment a child is stopped.
    """
    received: list[int] = []
    with _log_file(log) as output:  # the child keeps its own copy of the descriptor
        child = subprocess.Popen(
            list(command),
            start_new_session=True,
            preexec_fn=functools.partial(end_with_parent, os.getpid()),
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            env={**os.environ, "PYTHONUNBUFFERED": "1"} if output is not None else None,
        )

    def pass_on(signum: int) -> None:
        received.append(signum)
        child.send_signal(signum)

    with stop_signals_to(pass_on):
        status, overran = _wait(child, deadline)
    if received:
        raise Ended(128 + received[0], f"stopped by {signal.Signals(received[0]).name}")
    if overran:
        raise DeadlinePassed(status, deadline)
    return status


@contextlib.contextmanager
def _log_file(log: Path | None) -> Iterator[BinaryIO | None]:
    if log is None:
        yield None
        return
    with open(log, "wb") as output:
        yield output


def _wait(child: subprocess.Popen, deadline: float | None) -> tuple[int, bool]:
    """(the child's exit status, whether it was stopped at the deadline)."""
    try:
        return child.wait(timeout=deadline), False
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGTERM)
    try:
        return child.wait(timeout=STOP_GRACE_SECONDS), True
    except subprocess.TimeoutExpired:
        # The child leads its session's process group: its own children (compile or data
        # loader workers) end with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        return child.wait(), True
