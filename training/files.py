"""Writing files so that a reader, or a run killed mid-write, never sees half of one."""

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

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


class FolderLock:
    """Claims a folder for one process: a second one is refused until the first ends.

    An advisory lock (flock) on ``.lock`` inside the folder; the operating system releases
    it when the process ends, however it ends, so a killed run never leaves a stale claim.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / ".lock"
        self._file = None

    def acquire(self) -> bool:
        """True if this process now holds the folder, False if another one does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            self._file = None
            return False
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None
