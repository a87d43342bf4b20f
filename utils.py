"""The bottom layer every package but models/ may import: user errors and one-line messages,
text that is safe to print on a terminal, files written atomically and read with bounds on
what they may cost, the one lock on a file (and on a run folder), Markdown tables, whether a
tensor holds integers, waiting for a device, child processes that end with their parent.

Standard library only at import time (data/download_data.py starts without torch); torch is
imported where it is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import stat
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

if TYPE_CHECKING:
    import torch

# Characters a terminal acts on instead of showing: C0 controls (ESC starts the sequences
# that clear the screen or retitle the window), DEL, C1 controls (0x9b is a one-byte CSI),
# the bidirectional overrides that reorder what is shown ("Trojan Source"), and the lone
# surrogates that stand for undecodable bytes in file names (os.fsdecode).
_BIDI_CONTROLS = {*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C}
# What a message may keep: its own line structure (progress bars redraw with \r).
_LAYOUT = {"\n", "\r", "\t"}

ZIP_LOCAL_HEADER = b"PK\x03\x04"  # how torch.load recognises its zip format


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, as os.fsdecode keeps it
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def _is_unsafe(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or code in _BIDI_CONTROLS


def _escaped(text: str, keep: frozenset[str] | set[str] = frozenset()) -> str:
    if not any(_is_unsafe(char) for char in text):
        return text
    return "".join(
        _escape(char) if _is_unsafe(char) and char not in keep else char for char in text
    )


def printable(text: object) -> str:
    """``str(text)`` with every character a terminal would act on written as an escape
    (``\\x1b``, ``\\xe9`` for an undecodable byte, ``\\u202e``), newlines and tabs too: a
    file or class name shown with it is one line of plain text."""
    return _escaped(str(text))


class PrintableStream:
    """A text stream whose writes reach the terminal as plain text (see :func:`printable`;
    line breaks and carriage returns are kept): a name printed anywhere in a program cannot
    send the terminal a control sequence, and a name that is not UTF-8 cannot crash it. A
    reader that went away is no error either."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            self.stream.write(_escaped(text, keep=_LAYOUT))
        except BrokenPipeError:
            self._reader_gone()
        return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        # The program reading this output ended (`| head`, a closed `| tee`): what is left
        # to print goes nowhere, rather than stopping a run in the middle of saving its work
        # (or, flushed at exit, turning its exit status into 120).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def make_output_printable() -> None:
    """Routes this process's standard output and error through :class:`PrintableStream`."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, PrintableStream):
            setattr(sys, name, PrintableStream(stream))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what schedulers send


@contextlib.contextmanager
def stop_signals_to(handler: Callable[[int], object]) -> Iterator[None]:
    """Inside the block, Ctrl-C and SIGTERM call ``handler(signum)`` instead of stopping the
    program; the handlers before it are back after it."""
    previous = {
        signum: signal.signal(signum, lambda signum, frame: handler(signum))
        for signum in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


def file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing path at or above ``folder`` if it is a file (the folder cannot
    be made there), else None."""
    for path in (Path(folder), *Path(folder).parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def end_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """Has the kernel send this process ``signum`` when its parent dies (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing), so that a parent killed outright leaves no child
    working on, orphaned. Called first thing in the child, with the parent's process id."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signum)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os.kill(os.getpid(), signum)


class UnsafeFile(ValueError):
    """A file refused before it is read: not a regular file, larger than allowed, or able to
    take far more memory than its size once read."""


class UserError(Exception):
    """A mistake in the command, a file or the data: reported as one line, exit status 2."""


# Enough for a path and a reason; a longer message (a compiler's dump) is cut.
ONE_LINE_CHARACTERS = 300


def one_line(message: BaseException | str) -> str:
    """The first line of a message (an exception's, or a text), spaces collapsed and cut at
    :data:`ONE_LINE_CHARACTERS`; an exception's type name where it has no message."""
    lines = [" ".join(line.split()) for line in str(message).splitlines()]
    first = next((line for line in lines if line), "")
    if not first:
        return type(message).__name__ if isinstance(message, BaseException) else ""
    return first[:ONE_LINE_CHARACTERS]


def out_of_gpu_memory(batch_size: int) -> UserError:
    """What a program says when the GPU cannot hold a batch of ``--batch-size``."""
    return UserError(
        f"out of GPU memory at --batch-size {batch_size}; "
        f"try --batch-size {max(1, batch_size // 2)}"
    )


def synchronize(device: torch.device) -> None:
    """Waits until ``device`` has done the work queued on it (a timer's reading is then that
    of the work; the CPU has no queue)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], align: str | None = None
) -> str:
    """A Markdown table of text cells; ``align`` has one letter per column, ``l`` or ``r``
    (numbers read best right-aligned; none given: the renderer's default)."""
    rules = {"l": "---|", "r": "---:|"}
    separator = "|" + "".join(rules[a] for a in align) if align else "|" + "---|" * len(header)
    lines = ["| " + " | ".join(header) + " |", separator]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


UMASK = os.umask(0o022)
os.umask(UMASK)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Writes through a temporary file in the same folder, then renames it into place.

    A reader (or a run killed mid-save) sees either the old file or the new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp's 0600 would hide results from collaborators
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def link_or_copy(source: Path, path: Path) -> None:
    """``path`` becomes a second name of ``source`` (a hard link: nothing is copied), or a
    copy where the file system has no hard links; atomically, as :func:`atomic_write`.

    Files written by :func:`atomic_write` are replaced, never changed in place, so the
    link keeps the content it was made with when ``source`` is written again."""

    def link(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    atomic_write(path, link)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


class FileLock:
    """An exclusive advisory lock (flock) on the file ``path``, for one process at a time:
    another one is refused at once while the first lives.

    The operating system releases it when the process ends, however it ends, so a killed
    program never leaves a stale claim. ``remove`` deletes the file on :meth:`release`; a
    process that locked a file removed meanwhile locks the new one instead.
    """

    def __init__(self, path: Path, remove: bool = False) -> None:
        self.path = Path(path)
        self.remove = remove
        self._file = None

    def acquire(self) -> bool:
        """True if this process now holds the lock, False if another one does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            stream = open(self.path, "a")  # noqa: SIM115 - held open while the lock is held
            try:
                fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                stream.close()
                return False
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(stream.fileno()).st_ino:
                    self._file = stream
                    return True
            stream.close()  # the file was removed by its last holder: lock the new one

    def release(self) -> None:
        if self._file is None:
            return
        if self.remove:
            self.path.unlink(missing_ok=True)
        self._file.close()  # closing releases the lock
        self._file = None


def holds_integers(tensor: torch.Tensor) -> bool:
    """Whether the tensor's dtype is an integer one (bool is not: it holds truth values)."""
    import torch

    dtype = tensor.dtype
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def lock_run_folder(out: Path) -> FileLock:
    """The lock on the run folder ``out`` (its file ``.lock``), now held by this process; a
    UserError naming --out if another run holds it or the folder cannot be written."""
    lock = FileLock(Path(out) / ".lock")
    try:
        if not lock.acquire():
            raise UserError(f"--out {out}: another run is writing there; use another --out")
    except OSError as error:
        raise UserError(f"--out {out}: cannot write there ({one_line(error)})") from None
    return lock


@contextlib.contextmanager
def open_regular_file(path: Path, max_bytes: int) -> Iterator[BinaryIO]:
    """path opened for reading once it is known to be a regular file of at most max_bytes.

    The open does not block and the checks come before any read, so a FIFO, a device (such
    as a link to /dev/zero) or a huge sparse file raises UnsafeFile (a ValueError) instead
    of hanging or filling memory.
    """
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as stream:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise UnsafeFile("not a regular file")
        if status.st_size > max_bytes:
            raise UnsafeFile(f"{status.st_size:,} bytes, more than the {max_bytes:,} allowed")
        yield stream


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The content of a regular file of at most max_bytes; UnsafeFile for anything else."""
    with open_regular_file(path, max_bytes) as stream:
        content = stream.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise UnsafeFile(f"grew beyond the {max_bytes:,} bytes allowed while read")
    return content


def _check_zip_records(stream: BinaryIO, size: int) -> None:
    """torch.save writes its records as they are; a compressed one could inflate to many
    times the file's size (a "zip bomb"), so it is refused before anything is inflated."""
    with zipfile.ZipFile(stream) as archive:
        inflated = 0
        for record in archive.infolist():
            if record.compress_type != zipfile.ZIP_STORED:
                raise UnsafeFile(
                    f"its record {record.filename!r} is compressed, which torch.save never "
                    "does (it could inflate far beyond the file's size)"
                )
            inflated += record.file_size
    if inflated > size:
        raise UnsafeFile(f"its records claim {inflated:,} bytes in a file of {size:,}")


def _tensor_bytes(value: object) -> int:
    """The bytes of all tensors in nested containers (of a load in torch's fake mode)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _check_legacy_storages(stream: BinaryIO, size: int) -> None:
    """A file of torch's format before 1.6 (the FishNet authors' release) declares each
    tensor's size before its data, and torch allocates that size first: a small file could
    ask for terabytes. Its tensors are read once in fake mode, which allocates nothing, and
    must fit in the file."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        skeleton = torch.load(stream, weights_only=True)
    declared = _tensor_bytes(skeleton)
    if declared > size:
        raise UnsafeFile(f"it declares {declared:,} bytes of tensors in a file of {size:,}")


def load_torch_file(path: Path, max_bytes: int) -> object:
    """``torch.load(path, weights_only=True)`` onto the CPU, for a regular file of at most
    ``max_bytes`` whose tensors cannot take more memory than the file's own size.

    The bounds are checked before torch allocates anything, and the file is read through the
    descriptor that was checked. UnsafeFile (one line) for a file beyond them; torch's own
    exceptions for a file it cannot read.
    """
    import torch

    with open_regular_file(path, max_bytes) as stream, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on the pickle protocols of old files
        size = os.fstat(stream.fileno()).st_size
        # torch tells its formats apart by the first bytes, so the check does too: a file of
        # the old format with a zip directory appended is still read (and checked) as old.
        if stream.read(len(ZIP_LOCAL_HEADER)) == ZIP_LOCAL_HEADER:
            _check_zip_records(stream, size)
        else:
            stream.seek(0)
            _check_legacy_storages(stream, size)
        stream.seek(0)
        return torch.load(stream, map_location="cpu", weights_only=True)
