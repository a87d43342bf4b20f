"""What happens when things go wrong: interruptions, faults and bad input.

Every case ends with a clear message and a non-zero exit, never a traceback, and no run
loses more than the step it was in.
"""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO_ROOT, SMALL, one_line_error, run_download_data, run_script, without_timing

from training.checkpoint import load_checkpoint

# Every test starts a Python that imports torch (train.py, eval.py, predict.py or a writer of
# its own) or reads the run that finished_run trains with train.py.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(synthetic_cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    result = run_script(
        "train.py", "--data", synthetic_cifar10_dir, "--out", out, *SMALL, "--epochs", "1"
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def trained_run(finished_run, tmp_path):
    """A copy of a finished one-epoch run on the synthetic data, the test's to damage."""
    return shutil.copytree(finished_run, tmp_path / "run")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_resume_matches(synthetic_cifar10_dir, tmp_path, signum):
    recipe = [*SMALL, "--batch-size", "4", "--epochs", "3", "--deterministic", "--seed", "1"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    args = ["--data", synthetic_cifar10_dir, *recipe]
    assert run_script("train.py", "--out", straight, *args).returncode == 0

    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "train.py"), "--out", str(stopped), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    # The run prints its plan once the data and model are ready; stop it a moment later.
    assert "steps per epoch" in process.stdout.readline() + process.stdout.readline()
    time.sleep(1.5)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert "Resume with:" in stderr and "--resume" in stderr
    interrupted = torch.load(stopped / "last.pt", weights_only=True)
    assert interrupted["epoch"] < 3

    resumed = run_script("train.py", "--out", stopped, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(stopped / "last.pt", weights_only=True)
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    assert without_timing(a["history"]) == without_timing(b["history"])


def test_kill_between_write_and_rename_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save = "from training.checkpoint import save_checkpoint\n"
    subprocess.run(
        [sys.executable, "-c", save + "import sys, torch\n"
         "save_checkpoint({'epoch': 1, 'w': torch.ones(3)}, sys.argv[1])", str(path)],
        cwd=REPO_ROOT, check=True,
    )  # fmt: skip
    writer = (
        "import os, sys, torch\n" + save
        + "os.replace = lambda *a: os._exit(9)  # killed after the write, before the rename\n"
        "save_checkpoint({'epoch': 2, 'w': torch.zeros(3)}, sys.argv[1])\n"
    )  # fmt: skip
    result = subprocess.run([sys.executable, "-c", writer, str(path)], cwd=REPO_ROOT, check=False)
    assert result.returncode == 9
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_resume_without_a_checkpoint(synthetic_cifar10_dir, tmp_path):
    result = run_script(
        "train.py", "--data", synthetic_cifar10_dir, "--out", tmp_path / "x", "--resume"
    )
    one_line_error(result, "last.pt does not exist")
    assert not (tmp_path / "x").exists()


def test_resume_with_another_model_or_dataset(trained_run, make_synthetic_source, tmp_path):
    before = (trained_run / "last.pt").read_bytes()
    flags = ["--out", trained_run, *SMALL, "--epochs", "1", "--resume"]
    checkpoint_data = torch.load(trained_run / "last.pt", weights_only=True)["args"]["data"]
    other_model = run_script("train.py", "--data", checkpoint_data, *flags, "--model", "resnet50")
    one_line_error(other_model, "--model fishnet99 (now resnet50)")

    # The same images split with another seed: another training set.
    reseeded = tmp_path / "reseeded"
    prepared = run_download_data(
        "--source", make_synthetic_source(), "--out", reseeded, "--seed", "7"
    )
    assert prepared.returncode == 0, prepared.stderr
    other_split = run_script("train.py", "--data", reseeded / "cifar10", *flags)
    one_line_error(other_split, "another dataset")
    assert (trained_run / "last.pt").read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "json", "tensor", "code"])
def test_bad_checkpoint_files(trained_run, synthetic_cifar10_dir, tmp_path, damage):
    bad = tmp_path / "bad.pt"
    good = (trained_run / "last.pt").read_bytes()
    if damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "random bytes":
        bad.write_bytes(os.urandom(4096))
    elif damage == "json":
        bad.write_text(json.dumps({"epoch": 1}))
    elif damage == "tensor":
        torch.save(torch.zeros(3), bad)
    else:

        class RunsCode:
            def __reduce__(self):
                return (os.system, ("touch " + str(tmp_path / "pwned"),))

        bad.write_bytes(pickle.dumps(RunsCode()))
    one_line_error(run_script("eval.py", bad, "--device", "cpu"), str(bad))
    assert not (tmp_path / "pwned").exists()

    (trained_run / "last.pt").write_bytes(bad.read_bytes())
    result = run_script("train.py", "--data", synthetic_cifar10_dir, "--out", trained_run,
                        *SMALL, "--epochs", "1", "--resume")  # fmt: skip
    one_line_error(result, "last.pt")


def test_missing_checkpoint_for_eval(tmp_path):
    one_line_error(run_script("eval.py", tmp_path / "none.pt"), "no such checkpoint")


def test_diverging_run_stops_and_keeps_the_good_checkpoints(synthetic_cifar10_dir, tmp_path):
    out = tmp_path / "run"
    # lr 0.1 in epoch 1, then 1e8: the loss blows up early in epoch 2.
    recipe = ["--epochs", "3", "--step-size", "1", "--gamma", "1e9", "--batch-size", "8"]
    result = run_script("train.py", "--data", synthetic_cifar10_dir, "--out", out, *SMALL, *recipe)
    one_line_error(result, "not finite", "epoch 2, step", "--lr")
    for name in ("last.pt", "best.pt"):
        checkpoint = load_checkpoint(out / name)
        assert checkpoint["epoch"] == 1
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert len(json.loads((out / "history.json").read_text())) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "-1"], "argument --epochs"),
        (["--batch-size", "0"], "argument --batch-size"),
        (["--model", "fishnet42"], "argument --model: invalid choice"),
        (["--optimizer", "lbfgs"], "argument --optimizer: invalid choice"),
        (["--width", "0"], "argument --width"),
        (["--width", "0.3"], "multiple of 1/16"),
        (["--lr", "abc"], "argument --lr"),
        (["--resume", "--overwrite"], "not allowed with argument"),
    ],
)
def test_nonsense_flags_stop_before_any_work(flags, message, tmp_path):
    result = run_script("train.py", "--data", tmp_path / "nowhere", *flags)
    assert result.returncode == 2
    assert "usage:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        (lambda m: {**m, "images/train/nowhere/1.png": 0}, "nowhere/1.png"),
        (lambda m: {**m, next(iter(m)): 10}, "label"),
        (None, "JSON"),
    ],
)
def test_bad_manifest_names_the_manifest_and_entry(synthetic_cifar10_dir, tmp_path, damage, phrase):
    data = tmp_path / "data"
    shutil.copytree(synthetic_cifar10_dir, data)
    manifest = data / "train_img2labels.json"
    if damage is None:
        manifest.write_text("{not json")
    else:
        manifest.write_text(json.dumps(damage(json.loads(manifest.read_text()))))
    result = run_script(
        "train.py", "--data", data, "--out", tmp_path / "r", *SMALL, "--epochs", "1"
    )
    one_line_error(result, "train_img2labels.json", phrase)


def test_finished_run_is_not_overwritten(trained_run, synthetic_cifar10_dir):
    before = (trained_run / "last.pt").read_bytes()
    data = ["--data", synthetic_cifar10_dir, "--out", trained_run, *SMALL, "--epochs", "1"]
    one_line_error(run_script("train.py", *data), "already holds a run", "--resume", "--overwrite")
    finished = run_script("train.py", *data, "--resume")
    assert finished.returncode == 0 and "nothing to do" in finished.stdout
    assert (trained_run / "last.pt").read_bytes() == before
    assert run_script("train.py", *data, "--overwrite").returncode == 0


def _damage(checkpoint: dict, damage: str) -> dict:
    """A checkpoint that passes the format check but is damaged inside."""
    weights = checkpoint["state_dict"]
    first = next(iter(weights))
    if damage == "wrong tensor shape":
        weights[first] = torch.zeros(3)
    elif damage == "missing weights":
        del weights[first]
    elif damage.startswith("no "):
        del checkpoint[damage[3:]]
    elif damage == "epoch as text":
        checkpoint["epoch"] = "1"
    elif damage == "fewer class names than outputs":
        checkpoint["classes"] = checkpoint["classes"][:3]
    elif damage == "5-channel mean":
        checkpoint["normalization"]["mean"] = [0.5] * 5
    elif damage == "std of 0":
        checkpoint["normalization"]["std"] = [0.0, 0.2, 0.2]
    elif damage == "a huge width":
        checkpoint["model"]["kwargs"]["width"] = 64.0
    elif damage == "optimizer state of another shape":
        state = next(iter(checkpoint["optimizer"]["state"].values()))
        state["momentum_buffer"] = torch.zeros(5)
    elif damage == "wrong-size RNG state":
        checkpoint["rng"]["torch"] = torch.zeros(7, dtype=torch.uint8)
    elif damage == "position past the epoch's end":
        checkpoint["partial"] = _partial(step=99)
    elif damage == "dataset record as text":
        checkpoint["dataset"] = "data/cifar10"
    elif damage == "amp as a number":
        checkpoint["args"]["amp"] = 3
    elif damage == "wrong-size augmentation RNG state":
        checkpoint["partial"] = _partial(step=0, augment_rng=torch.zeros(7, dtype=torch.uint8))
    return checkpoint


def _partial(step: int, augment_rng=None) -> dict:
    """The place of a run stopped in its second epoch (the runs here trained one)."""
    return {
        "loaders": [{"epoch": 1, "step": step, "augment_rng": augment_rng}],
        "progress": {"lr": 0.1, "totals": torch.zeros(3), "samples": 0, "seconds": 0.0},
    }


MODEL_DAMAGE = [
    "wrong tensor shape", "missing weights", "no model", "no args", "no normalization",
    "no history", "no classes", "epoch as text", "fewer class names than outputs",
    "5-channel mean", "std of 0", "a huge width", "dataset record as text", "amp as a number",
]  # fmt: skip
RESUME_DAMAGE = [
    "no optimizer", "no dataset", "no rng", "optimizer state of another shape",
    "wrong-size RNG state", "position past the epoch's end", "wrong-size augmentation RNG state",
]  # fmt: skip


@pytest.mark.parametrize("damage", MODEL_DAMAGE)
def test_damaged_checkpoint_is_one_line_for_every_reader(trained_run, tmp_path, damage):
    from training.checkpoint import load_ready_model
    from utils import UserError

    bad = tmp_path / "bad.pt"
    torch.save(_damage(torch.load(trained_run / "last.pt", weights_only=True), damage), bad)
    with pytest.raises(UserError, match=str(bad)):
        load_ready_model(bad, torch.device("cpu"))


def test_damaged_checkpoint_on_the_command_line(trained_run, tmp_path):
    bad = tmp_path / "bad.pt"
    checkpoint = _damage(torch.load(trained_run / "last.pt", weights_only=True), "std of 0")
    torch.save(checkpoint, bad)
    one_line_error(run_script("eval.py", bad, "--device", "cpu"), str(bad), "std")
    one_line_error(run_script("predict.py", bad, trained_run / "acc.png"), str(bad))


@pytest.mark.parametrize("damage", RESUME_DAMAGE)
def test_damaged_checkpoint_is_refused_by_resume(trained_run, synthetic_cifar10_dir, damage):
    last = trained_run / "last.pt"
    torch.save(_damage(torch.load(last, weights_only=True), damage), last)
    before = last.read_bytes()
    flags = ["--data", synthetic_cifar10_dir, "--out", trained_run, *SMALL, "--epochs", "2"]
    one_line_error(run_script("train.py", *flags, "--resume"), "last.pt")
    assert last.read_bytes() == before


def test_unwritable_outputs_are_refused_before_training(synthetic_cifar10_dir, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    flags = ["--data", synthetic_cifar10_dir, *SMALL, "--epochs", "1"]
    one_line_error(run_script("train.py", *flags, "--out", a_file), "--out", "not a folder")
    inside_a_file = a_file / "run"
    one_line_error(run_script("train.py", *flags, "--out", inside_a_file), "--out")


def test_a_second_run_into_the_same_folder_is_refused(synthetic_cifar10_dir, tmp_path):
    from utils import FileLock

    out = tmp_path / "run"
    lock = FileLock(out / ".lock")
    assert lock.acquire()  # as a first run holds it while it trains
    flags = ["--data", synthetic_cifar10_dir, "--out", out, *SMALL, "--epochs", "1"]
    one_line_error(run_script("train.py", *flags), "another run is writing there")
    lock.release()
    assert not (out / "last.pt").exists()


def test_data_never_prepared_is_named_by_its_absolute_path(tmp_path):
    """A relative --data starts at the working folder; the message says where that led."""
    result = run_script("train.py", "--data", "unprepared", "--device", "cpu", cwd=tmp_path)
    one_line_error(result, str(tmp_path / "unprepared"), "python data/download_data.py")
    assert list(tmp_path.iterdir()) == []
