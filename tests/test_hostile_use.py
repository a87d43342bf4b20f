"""Careless or hostile use of the commands: no tool replaces work it was not asked to, no
small file takes gigabytes, no signal loses a trained epoch, no name reaches the terminal as
a control sequence, and every mistake is one line with a non-zero exit."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, SMALL, one_line_error, run_script, write_synthetic_source
from PIL import Image

import ablate
import bench
import training.options
from data import download_data
from dataloader import DataError, load_split, read_manifest
from training.checkpoint import load_checkpoint
from utils import UnsafeFile, UserError, load_torch_file, printable

ESCAPES = "\x1b[2J\x1b]0;owned\x07"  # clear the screen, retitle the terminal


@pytest.fixture(scope="module")
def finished_run(synthetic_cifar10_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    result = run_script(
        "train.py", "--data", synthetic_cifar10_dir, "--out", out, *SMALL, "--epochs", "1"
    )
    assert result.returncode == 0, result.stderr
    return out


def start(script: str, *args, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / script), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        **options,
    )


def wait_for(process: subprocess.Popen, text: bytes, timeout: float = 300) -> bytes:
    """What the process wrote on stdout and stderr until ``text`` appeared (progress bars
    end their lines with carriage returns, so the pipes are read as they come)."""
    seen, deadline = b"", time.monotonic() + timeout
    for stream in (process.stdout, process.stderr):
        os.set_blocking(stream.fileno(), False)
    while text not in seen:
        assert time.monotonic() < deadline, seen[-2000:]
        assert process.poll() is None, seen[-2000:]
        for stream in (process.stdout, process.stderr):
            seen += stream.read() or b""
        time.sleep(0.05)
    return seen


def deflated_copy(path: Path, copy: Path) -> Path:
    """The same torch file with every zip record compressed: a few hundred KB that inflate
    to what the original holds."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy, "w", zipfile.ZIP_DEFLATED) as out:
        for name in source.namelist():
            out.writestr(name, source.read(name))
    return copy


# -- small files that would take gigabytes ---------------------------------------------------


def test_torch_files_cannot_inflate_beyond_their_size(tmp_path):
    plain = tmp_path / "zeros.pt"
    torch.save({"w": torch.zeros(32 << 20)}, plain)  # 128 MiB of zeros
    bomb = deflated_copy(plain, tmp_path / "bomb.pt")
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(UnsafeFile, match="compressed"):
        load_torch_file(bomb, 4 << 30)
    assert load_torch_file(plain, 4 << 30)["w"].numel() == 32 << 20

    # torch's format before 1.6 declares each tensor's size before its data, and torch
    # allocates that size first: this 400-byte file asks for 4 GiB.
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(5)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_torch_file(legacy, 1 << 20)["w"], torch.zeros(5))
    declares_more = tmp_path / "declares-more.pt"
    content = legacy.read_bytes()
    assert content.count(b"K\x05N") == 1  # the storage's size, 5, in its persistent id
    declares_more.write_bytes(
        content.replace(b"K\x05N", b"J" + (2**30).to_bytes(4, "little") + b"N")
    )
    with pytest.raises(UnsafeFile, match="declares 4,294,967,296 bytes"):
        load_torch_file(declares_more, 1 << 20)


def test_a_legacy_file_with_a_zip_directory_appended_is_still_checked(tmp_path):
    """torch tells its formats apart by the first bytes, zipfile by the end of the file."""
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(5)}, legacy, _use_new_zipfile_serialization=False)
    content = legacy.read_bytes().replace(b"K\x05N", b"J" + (2**30).to_bytes(4, "little") + b"N")
    legacy.write_bytes(content + b"PK\x05\x06" + bytes(18))  # an empty zip's directory
    assert zipfile.is_zipfile(legacy)
    with pytest.raises(UnsafeFile, match="declares 4,294,967,296 bytes"):
        load_torch_file(legacy, 1 << 20)


def test_crafted_state_dicts_are_conversion_errors():
    from models.convert import ConversionError, convert_state_dict, unwrap

    bias = torch.zeros(10)
    state = {"fish.fish.9.4.1.bias": bias, "fish.fish.0.0.x": torch.zeros(2)}
    with pytest.raises(ConversionError, match="not a tensor of a bottleneck"):
        convert_state_dict(state, "fishnet99")
    with pytest.raises(ConversionError, match="dense"):
        unwrap({"state_dict": {"w": torch.zeros(3).to_sparse()}})


def test_a_stop_while_a_dataset_is_put_in_place_waits_for_it():
    with download_data.stops_deferred() as stops:
        os.kill(os.getpid(), signal.SIGTERM)  # would raise Stopped outside the block
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt
    assert stops == [signal.SIGTERM, signal.SIGINT]


@pytest.mark.slow
def test_readers_refuse_an_inflating_checkpoint(finished_run, tmp_path):
    bomb = deflated_copy(finished_run / "best.pt", tmp_path / "bomb.pt")
    image = tmp_path / "cat.png"
    Image.new("RGB", (32, 32)).save(image)
    one_line_error(run_script("predict.py", bomb, image, "--device", "cpu"), "compressed")
    # eval.py, train.py --resume, tools.visualize and hub loads read it the same way.
    with pytest.raises(UserError, match=f"{bomb}: refused, its record .* is compressed"):
        load_checkpoint(bomb)


def test_an_inflating_cache_is_rebuilt_from_the_images(synthetic_cifar10_dir, tmp_path):
    data = shutil.copytree(synthetic_cifar10_dir, tmp_path / "data")
    images, _ = load_split(data, "valid")
    cache = data / "valid_cache.pt"
    content = torch.load(cache, weights_only=True)
    # The right key and labels, other pixels, and compressed: a cache that would be served
    # if only its size were checked.
    torch.save({**content, "images": torch.zeros_like(images)}, tmp_path / "zeros.pt")
    deflated_copy(tmp_path / "zeros.pt", cache)
    again, _ = load_split(data, "valid")
    assert torch.equal(again, images)


def test_an_image_replaced_in_place_invalidates_the_cache(synthetic_cifar10_dir, tmp_path):
    data = shutil.copytree(synthetic_cifar10_dir, tmp_path / "data")
    images, _ = load_split(data, "train")
    first_image = Path(read_manifest(data / "train_img2labels.json")[0][0])
    Image.new("RGB", (32, 32), (255, 0, 0)).save(first_image)  # same size on disk or not
    again, _ = load_split(data, "train")
    assert again[0].tolist() == [[[255] * 32] * 32, [[0] * 32] * 32, [[0] * 32] * 32]
    assert torch.equal(again[1:], images[1:])


# -- work replaced without asking --------------------------------------------------------------


def refused(command, *argv) -> str:
    """The one-line error of ablate.py's or bench.py's checks, in-process: they come before
    any run starts (whole commands turn it into one line and exit status 2, as tested
    elsewhere)."""
    with pytest.raises(UserError) as error:
        command(list(map(str, argv)))
    return str(error.value)


@pytest.mark.slow
def test_no_command_replaces_a_run_unasked(finished_run, synthetic_cifar10_dir, tmp_path):
    run = shutil.copytree(finished_run, tmp_path / "run")
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}
    data = ["--data", synthetic_cifar10_dir, *SMALL, "--epochs", "1"]
    tta = refused(bench.main, "tta", "--out", run, "--targets", "50", *data)
    assert str(run) in tta and "already holds a run" in tta and "--overwrite" in tta
    shutil.copytree(run, tmp_path / "report" / "cpu-seed1")
    report = refused(bench.main, "report", "--presets", "cpu", "--seeds", "0", "1", "--out",
                     tmp_path / "report", *data)  # fmt: skip
    assert "cpu-seed1 already holds a run" in report
    assert not (tmp_path / "report" / "cpu-seed0").exists()  # refused before the first run
    shutil.copytree(run, tmp_path / "runs" / "baseline")
    ablation = refused(ablate.parse_args, "--variants", "baseline", "--out", tmp_path / "runs",
                       *data)  # fmt: skip
    assert "baseline already holds a run" in ablation
    # train.py keeps a lone best.pt too (a folder whose last.pt was moved away).
    (run / "last.pt").rename(tmp_path / "moved.pt")
    one_line_error(run_script("train.py", "--out", run, *data), "best.pt", "--overwrite")
    (tmp_path / "moved.pt").rename(run / "last.pt")
    assert before == {name: (run / name).read_bytes() for name in before}


@pytest.mark.slow
def test_outputs_are_checked_before_any_work(finished_run, synthetic_cifar10_dir, tmp_path):
    data = ["--data", synthetic_cifar10_dir, *SMALL, "--epochs", "1"]
    a_folder, a_file = tmp_path / "folder", tmp_path / "file"
    a_folder.mkdir()
    a_file.write_text("mine")
    ablation = run_script("ablate.py", "--variants", "baseline", "--out", tmp_path / "runs",
                          "--table", a_folder, *data)  # fmt: skip
    one_line_error(ablation, "--table", "a folder")
    report = refused(bench.main, "report", "--presets", "cpu", "--seeds", "0", "--out",
                     tmp_path / "report", "--figures", a_file, *data)  # fmt: skip
    assert "--figures" in report and "not a folder" in report
    evaluation = run_script("eval.py", finished_run / "best.pt", "--out", a_file / "x")
    one_line_error(evaluation, "--out", "is a file, not a folder")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "report").exists()
    assert a_file.read_text() == "mine"

    # Outputs that name a checkpoint, another run's figures or the command's own input.
    run = shutil.copytree(finished_run, tmp_path / "run")
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    ablation = refused(ablate.parse_args, "--variants", "baseline", "--out", tmp_path / "runs",
                       "--table", run / "best.pt", *data)  # fmt: skip
    assert "--table" in ablation and "best.pt: exists and is not a text file" in ablation
    report = refused(bench.main, "report", "--presets", "cpu", "--seeds", "0", "--out",
                     tmp_path / "report", "--figures", run, *data)  # fmt: skip
    assert "--figures" in report and "holds a run" in report
    image = run / "acc.png"
    drawn = subprocess.run(
        [sys.executable, "-m", "tools.visualize", run / "best.pt", image, "--out", image],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    one_line_error(drawn, "--out", "is an input of this command")
    assert before == {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}


# -- signals ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_validation_data(tmp_path_factory) -> Path:
    """1,000 training and 200 validation images: validation at width 0.5 and batch 8 takes
    tens of seconds on a CPU, while training 8 of the images takes one step."""
    source = write_synthetic_source(tmp_path_factory.mktemp("source"), train_per_class=100)
    out = tmp_path_factory.mktemp("slow-validation")
    prepared = subprocess.run(
        [sys.executable, str(REPO_ROOT / "data/download_data.py"), "--source", str(source),
         "--out", str(out)], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    return out / "cifar10"


@pytest.mark.slow
def test_sigterm_during_validation_saves_the_trained_epoch(slow_validation_data, tmp_path):
    out = tmp_path / "run"
    flags = ["--data", slow_validation_data, "--out", out, "--model", "fishnet99", "--width",
             "0.5", "--batch-size", "8", "--train-subset", "8", "--epochs", "1", "--device",
             "cpu"]  # fmt: skip
    training = start("train.py", *flags)
    wait_for(training, b"valid after epoch 1")
    time.sleep(1)
    signalled = time.monotonic()
    training.send_signal(signal.SIGTERM)
    _, stderr = training.communicate(timeout=120)
    # Measured on the 2-core development machine: 1.3-3.5 s over 5 runs; the validation pass
    # it cuts short takes 15-40 s.
    assert time.monotonic() - signalled < 10
    assert training.returncode == 143, stderr
    assert b"before its evaluation" in stderr and b"Traceback" not in stderr
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["epoch"] == 0 and saved["history"] == []
    assert saved["partial"]["loaders"][0]["step"] == 1  # the epoch's one step is trained

    resumed = run_script("train.py", *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "at epoch 1, its evaluation" in resumed.stdout
    (row,) = torch.load(out / "last.pt", weights_only=True)["history"]
    assert (row["epoch"], row["train_samples"]) == (1, 8) and "valid_top1" in row


@pytest.mark.slow
def test_ablate_passes_a_stop_on_and_resumes(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "runs"
    flags = ["--variants", "baseline", "--out", out, "--data", synthetic_cifar10_dir, *SMALL,
             "--batch-size", "4", "--train-subset", "32", "--epochs", "2"]  # fmt: skip
    ablation = start("ablate.py", *flags)
    wait_for(ablation, b"steps per epoch")
    time.sleep(1)
    ablation.send_signal(signal.SIGTERM)
    _, stderr = ablation.communicate(timeout=120)
    assert ablation.returncode == 143, stderr
    assert b"stopped by SIGTERM during variant baseline" in stderr and b"--resume" in stderr
    assert b"Traceback" not in stderr
    saved = torch.load(out / "baseline" / "last.pt", weights_only=True)
    assert saved["partial"] is not None or saved["epoch"] < 2

    resumed = run_script("ablate.py", *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(out / "baseline" / "last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_a_killed_parent_stops_its_training_child(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "tta"
    flags = ["tta", "--out", out, "--targets", "99", "--data", synthetic_cifar10_dir, *SMALL,
             "--batch-size", "4", "--epochs", "3"]  # fmt: skip
    bench = start("bench.py", *flags)
    wait_for(bench, b"steps per epoch")
    bench.kill()  # SIGKILL: nothing of bench.py runs; the kernel tells the child
    bench.communicate(timeout=60)
    deadline = time.monotonic() + 60
    while not (out / "last.pt").exists() or _locked(out):
        assert time.monotonic() < deadline, "the child of the killed bench.py trains on"
        time.sleep(0.2)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] < 3


def _locked(folder: Path) -> bool:
    """Whether a live train.py holds the folder's lock."""
    import fcntl

    with open(folder / ".lock", "a") as stream:
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


@pytest.mark.slow
def test_a_reader_gone_does_not_cost_a_stopped_run_its_epoch(synthetic_cifar10_dir, tmp_path):
    """train.py | head: the reader ends, then Ctrl-C; printing must not stop the saving."""
    out = tmp_path / "run"
    training = start("train.py", "--data", synthetic_cifar10_dir, "--out", out, *SMALL,
                     "--batch-size", "4", "--epochs", "3")  # fmt: skip
    wait_for(training, b"steps per epoch")
    training.stdout.close()
    training.send_signal(signal.SIGINT)
    stderr = training.stderr.read() or b""  # non-blocking since wait_for
    while training.poll() is None:
        time.sleep(0.1)
        stderr += training.stderr.read() or b""
    assert training.returncode == 130, stderr
    assert b"Traceback" not in stderr
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] < 3


def test_download_stopped_by_sigterm_cleans_up(tmp_path):
    source = write_synthetic_source(tmp_path / "source", train_per_class=300)
    out = tmp_path / "data"
    download = start("data/download_data.py", "--source", source, "--out", out)
    wait_for(download, b"writing")
    download.send_signal(signal.SIGTERM)
    _, stderr = download.communicate(timeout=60)
    assert download.returncode == 143, stderr
    assert b"Traceback" not in stderr and b"Error" not in stderr
    assert stderr.strip().endswith(
        b"download_data.py: error: stopped by SIGTERM; nothing was changed"
    )
    assert [path.name for path in out.iterdir()] == []


def test_a_sigterm_inside_a_library_that_catches_exceptions_still_stops_the_download(
    tmp_path, monkeypatch, capsys
):
    """The signal lands as tqdm starts its monitor thread, inside tqdm's ``except Exception``
    (the race the test above can hit)."""
    import tqdm.std

    def terminated_as_the_monitor_starts(*args):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(tqdm.std, "TMonitor", terminated_as_the_monitor_starts)
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 10)
    monkeypatch.setattr(tqdm.std.tqdm, "monitor", None)
    source = write_synthetic_source(tmp_path / "source", train_per_class=2)
    out = tmp_path / "data"
    handler_before = signal.getsignal(signal.SIGTERM)
    try:
        status = download_data.main(["--source", str(source), "--out", str(out)])
    finally:
        signal.signal(signal.SIGTERM, handler_before)
    stderr = capsys.readouterr().err
    assert status == 143, stderr
    assert stderr.strip().endswith("stopped by SIGTERM; nothing was changed"), stderr
    assert [path.name for path in out.iterdir()] == []


# -- torchrun's variables --------------------------------------------------------------------


@pytest.mark.slow
def test_a_process_of_a_run_that_never_assembles_ends_in_one_line(
    synthetic_cifar10_dir, tmp_path, monkeypatch
):
    from training.distributed import init_distributed

    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="LOCAL_RANK is set but RANK, WORLD_SIZE, MASTER_ADDR"):
        init_distributed("cpu")
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": str(port)}
    for name, value in {**env, "MASTER_ADDR": ""}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match="LOCAL_RANK is set but MASTER_ADDR is not"):
        init_distributed("cpu")

    # The whole command, waiting for a peer that never comes.
    env = {**os.environ, **env, "MASTER_ADDR": "127.0.0.1"}
    flags = ["--data", synthetic_cifar10_dir, "--out", tmp_path / "run", *SMALL]
    started = time.monotonic()
    waiting = subprocess.run(
        [sys.executable, "train.py", *map(str, flags), "--dist-timeout", "3"], env=env,
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    one_line_error(waiting, "did not all join", "within 3 s")
    assert time.monotonic() - started < 60
    assert "joining 2 processes" in waiting.stdout


# -- names and numbers -------------------------------------------------------------------------


@pytest.mark.slow
def test_names_reach_the_terminal_as_plain_text(synthetic_cifar10_dir, tmp_path):
    assert (
        printable(f"a{ESCAPES}\nb\udce9\u202e") == "a\\x1b[2J\\x1b]0;owned\\x07\\x0ab\\xe9\\u202e"
    )
    data = shutil.copytree(synthetic_cifar10_dir, tmp_path / "data")
    classes = json.loads((data / "classes.json").read_text())
    classes[0] = f"air{ESCAPES}\nplane"
    (data / "classes.json").write_text(json.dumps(classes))
    # A folder name that is not UTF-8 (it reaches Python as a lone surrogate), and TeX that
    # matplotlib's mathtext cannot draw.
    out = os.fsencode(tmp_path) + b"/r\xe9sultat $\\frac$"
    flags = [os.fsencode(str(arg)) for arg in ["--data", data, *SMALL, "--epochs", "1"]]
    command = [os.fsencode(sys.executable), b"train.py", b"--out", out, *flags]
    trained = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, timeout=600, check=False)
    assert trained.returncode == 0, trained.stderr
    assert b"\x1b" not in trained.stdout + trained.stderr
    run = Path(os.fsdecode(out))
    assert (run / "acc.png").is_file() and (run / "loss.png").is_file()

    scored = run_script("eval.py", run / "best.pt", "--split", "valid", "--device", "cpu")
    assert scored.returncode == 0, scored.stderr
    assert (
        "\x1b" not in scored.stdout
        and "| air\\x1b[2J\\x1b]0;owned\\x07\\x0aplane |" in scored.stdout
    )

    image = tmp_path / f"{ESCAPES} x.png"
    Image.new("RGB", (32, 32)).save(image)
    missing = tmp_path / f"{ESCAPES}.pt"
    result = run_script("predict.py", missing, image)
    one_line_error(result, "\\x1b[2J")
    assert "\x1b" not in result.stderr


PARSERS = {
    "train.py": training.options.parse_args,
    "bench.py": bench.main,
    "ablate.py": ablate.parse_args,
    "download_data.py": download_data.parse_args,
}


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["bench.py", "data", "--seconds", "inf"], "--seconds: must be a positive finite"),
        (["bench.py", "data", "--workers", "100000"], "--workers: must be at most 64"),
        (["bench.py", "data", "--batch-size", "99999999999999999999"], "--batch-size: must be"),
        (["bench.py", "train", "--model", "fishnet42"], "bench.py train: error: argument --model"),
        (["bench.py", "tta", "--epochz", "3"], "unrecognized arguments: --epochz 3 (among the"),
        (["bench.py", "tta", "--split", "valid", "--train-on-all"], "--split valid: --train-on"),
        (["bench.py", "report", "--seeds", "0", "0"], "--seeds names one twice"),
        (["ablate.py", "--epochz", "3"], "unrecognized arguments: --epochz 3 (among the flags"),
        (["train.py", "--seed", "99999999999999999999"], "--seed: must be at most"),
        (["train.py", "--lr", "nan"], "--lr: must be a positive finite"),
        (["train.py", "--width", "64"], "--width: must be at most 4"),
        (["train.py", "--epochs", "100000000"], "--epochs: must be at most 10,000"),
        (["train.py", "--momentum", "1.5"], "--momentum"),
        (["download_data.py", "--seed", "99999999999999999999"], "--seed must be between"),
    ],
)
def test_numeric_flags_are_bounded_and_named_by_their_program(command, message, capsys):
    """Each program's parser in-process (the tests of whole commands show that run_cli
    turns a UserError into the same one line)."""
    program, *argv = command
    with pytest.raises((SystemExit, UserError)) as refused:
        PARSERS[program](argv)
    if refused.type is SystemExit:
        assert refused.value.code == 2
        error = capsys.readouterr().err.splitlines()[-1]
    else:
        error = f"{program}: error: {refused.value}"
    assert error.startswith(f"{program}") and message in error, error


def test_a_warmup_of_nearly_the_whole_run_leaves_the_schedule_a_step():
    from training.optim import make_optimizer, make_scheduler

    optimizer = make_optimizer(torch.nn.Linear(2, 2))
    scheduler = make_scheduler(
        optimizer, name="cosine", epochs=1, steps_per_epoch=20, lr=0.1, warmup_epochs=0.99
    )
    for _ in range(20):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] < 1e-3


def test_manifest_names_no_file_can_have(synthetic_cifar10_dir, tmp_path):
    data = shutil.copytree(synthetic_cifar10_dir, tmp_path / "data")
    manifest = data / "valid_img2labels.json"
    entries = json.loads(manifest.read_text())
    first = next(iter(entries))
    # A file whose name is not UTF-8 is fine; a JSON escape no file name can hold is not.
    os.rename(data / first, os.fsencode(data) + b"/images/r\xe9.png")
    entries[os.fsdecode(b"images/r\xe9.png")] = entries.pop(first)
    manifest.write_text(json.dumps(entries))
    assert len(load_split(data, "valid")[1]) == len(entries)
    manifest.write_text(json.dumps({"images/\ud800.png": 0}))
    with pytest.raises(DataError, match="not a file name this system can hold"):
        read_manifest(manifest)


def test_a_file_or_download_target_that_is_a_file(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    result = run_script("data/download_data.py", "--source", tmp_path, "--out", a_file)
    one_line_error(result, "--out", "is a file, not a folder")
    assert a_file.read_text() == "mine"


@pytest.mark.slow
def test_bench_train_with_a_batch_larger_than_the_data(synthetic_cifar10_dir):
    result = run_script("bench.py", "train", "--data", synthetic_cifar10_dir, "--batch-size",
                        "1000", "--device", "cpu", "--width", "0.25")  # fmt: skip
    one_line_error(result, "--batch-size 1000", "80 training images")
