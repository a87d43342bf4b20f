"""Command-line plumbing: user errors as one line and exit status 2, argparse value types."""

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from dataloader import DataError
from dataloader.images import ImageError


class UserError(Exception):
    """A mistake in the command, a file or the data: reported as one line, exit status 2."""


def program_name() -> str:
    return Path(sys.argv[0]).name


def run_cli(main: Callable[[], object]) -> None:
    """Runs a command-line entry point, turning user errors into one line and exit status 2."""
    try:
        main()
    except (UserError, DataError, ImageError) as error:
        print(f"{program_name()}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{program_name()}: interrupted", file=sys.stderr)
        sys.exit(130)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


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
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


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
    """The command line that starts ``script`` again with this process's flags, less
    ``drop``, plus ``add``."""
    argv = [arg for arg in sys.argv[1:] if arg not in drop]
    return shlex.join([python_command(), script, *argv, *add])
