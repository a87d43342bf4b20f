"""utils.py, the bottom layer: one-line messages, the one file lock and the run folder's,
Markdown tables, integer tensors."""

import re
import subprocess
import sys

import pytest
import torch

from utils import (
    FileLock,
    UserError,
    holds_integers,
    lock_run_folder,
    markdown_table,
    one_line,
    out_of_gpu_memory,
)

HOLD_LOCK = """
import sys, time
from utils import FileLock
lock = FileLock(sys.argv[1])
assert lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_one_line_keeps_the_first_line_of_a_message_and_names_an_empty_one():
    assert one_line(OSError("cannot   read\n  traceback follows")) == "cannot read"
    assert one_line("\n\n  graph break:\tdata-dependent\nmore") == "graph break: data-dependent"
    assert one_line(KeyError()) == "KeyError"
    assert len(one_line("x" * 1000)) == 300


def test_the_data_errors_are_user_errors():
    from dataloader import DataError
    from dataloader.images import ImageError

    assert issubclass(DataError, UserError)
    assert issubclass(ImageError, UserError) and issubclass(ImageError, ValueError)
    assert "try --batch-size 256" in str(out_of_gpu_memory(512))


def test_a_file_lock_refuses_a_second_process_until_the_first_ends(tmp_path):
    path = tmp_path / "run" / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not FileLock(path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = FileLock(path)
    assert lock.acquire()  # the kernel released the killed holder's lock
    lock.release()
    assert path.exists()  # a run folder keeps its lock file


def test_a_removed_lock_file_is_replaced_not_shared(tmp_path):
    path = tmp_path / ".cifar10.lock"
    first = FileLock(path, remove=True)
    assert first.acquire()
    first.release()
    assert not path.exists()
    second, third = FileLock(path, remove=True), FileLock(path)
    assert second.acquire()
    assert not third.acquire()
    second.release()


def test_a_run_folder_is_locked_once_and_its_refusals_name_out(tmp_path):
    out = tmp_path / "run"
    lock = lock_run_folder(out)  # the folder is made
    with pytest.raises(UserError, match=re.escape(f"--out {out}: another run is writing there")):
        lock_run_folder(out)
    lock.release()
    lock_run_folder(out).release()
    (tmp_path / "file").write_text("")
    inside_a_file = tmp_path / "file" / "run"
    with pytest.raises(UserError, match=re.escape(f"--out {inside_a_file}: cannot write there")):
        lock_run_folder(inside_a_file)


def test_holds_integers_takes_every_integer_dtype_and_nothing_else():
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        assert holds_integers(torch.zeros(2, dtype=dtype))
    for dtype in (torch.bool, torch.float16, torch.float32, torch.complex64):
        assert not holds_integers(torch.zeros(2, dtype=dtype))


def test_markdown_table_aligns_the_columns_it_is_told_to():
    table = markdown_table(["variant", "top-1"], [["a", "90.1"]], align="lr").splitlines()
    assert table == ["| variant | top-1 |", "|---|---:|", "| a | 90.1 |"]
    assert markdown_table(["x"], []) == "| x |\n|---|"
