"""CIFAR-100: preparation from the official archive's layout or an image folder, the 40k/10k/10k
split over the fine labels, and train, eval and predict taking the 100 classes from the data.

No copy of CIFAR-100 is at hand offline, so the archive here is a small one of random images in
the official format (pickled dicts in cifar-100-python/{train,test,meta})."""

import json
import os
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, run_download_data, run_script
from PIL import Image

from data import download_data
from data.download_data import CIFAR100
from training.checkpoint import load_checkpoint, model_from_checkpoint

TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 2


def write_cifar100_source(folder: Path) -> dict[str, np.ndarray]:
    """folder/cifar-100-python/{train,test,meta} of random images and folder/
    cifar-100-python.tar.gz of that folder; returns the pixels [N, 32, 32, 3] per split.

    Fine labels cycle through the 100 classes; the coarse labels are there, as in the official
    files, and must be ignored."""
    rng = np.random.default_rng(7)
    official = folder / CIFAR100.archive_folder
    official.mkdir(parents=True)
    pixels = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        count = 100 * per_class
        rows = rng.integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8)
        content = {
            "filenames": [f"image_{i}.png" for i in range(count)],
            "batch_label": f"{split} batch",
            "fine_labels": [i % 100 for i in range(count)],
            "coarse_labels": [i % 20 for i in range(count)],
            "data": rows,
        }
        (official / split).write_bytes(pickle.dumps(content))
        pixels[split] = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    meta = {
        "fine_label_names": list(CIFAR100.classes),
        "coarse_label_names": [f"superclass_{i}" for i in range(20)],
    }
    (official / "meta").write_bytes(pickle.dumps(meta))
    with tarfile.open(folder / CIFAR100.filename, "w:gz") as tar:
        tar.add(official, arcname=CIFAR100.archive_folder)
    return pixels


def manifest(dataset_dir: Path, split: str) -> dict[str, int]:
    return json.loads((dataset_dir / f"{split}_img2labels.json").read_text())


def prepare(source: Path, out: Path) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        # The stand-in files cannot match the published MD5s; everything else is the real path.
        patch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args: True)
        arguments = ["--dataset", "cifar100", "--source", str(source), "--out", str(out)]
        assert download_data.main(arguments) == 0
    return out / "cifar100"


@pytest.fixture(scope="module")
def cifar100_source(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("cifar100-source")
    return folder, write_cifar100_source(folder)


@pytest.fixture(scope="module")
def cifar100_dir(cifar100_source, tmp_path_factory) -> Path:
    folder, _ = cifar100_source
    return prepare(folder / CIFAR100.filename, tmp_path_factory.mktemp("cifar100-data"))


def test_the_official_split_is_40k_10k_10k_with_100_per_class_in_valid():
    labels = [i % 100 for i in range(50_000)]
    train, valid = download_data.split_train_valid(labels, CIFAR100, seed=0)
    assert (len(train), len(valid)) == (40_000, 10_000)
    assert set(Counter(labels[i] for i in valid).values()) == {100}
    assert len(CIFAR100.classes) == len(set(CIFAR100.classes)) == 100
    assert CIFAR100.classes[:3] == ("apple", "aquarium_fish", "baby")
    assert CIFAR100.classes[-3:] == ("wolf", "woman", "worm")


def test_official_archive_gives_fine_label_manifests(cifar100_source, cifar100_dir, tmp_path):
    assert json.loads((cifar100_dir / "classes.json").read_text()) == list(CIFAR100.classes)
    train, valid, test = (manifest(cifar100_dir, s) for s in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (400, 100, 200)
    # 1 of every class's 5 training images is held out: the official 100 of 500.
    assert Counter(valid.values()) == {label: 1 for label in range(100)}
    assert Counter(test.values()) == {label: TEST_PER_CLASS for label in range(100)}
    folder, pixels = cifar100_source
    for split, entries in (("train", train), ("valid", valid), ("test", test)):
        for path, label in entries.items():
            index = int(Path(path).stem)
            assert label == index % 100
            assert Path(path).parent.name == CIFAR100.classes[label]
            with Image.open(cifar100_dir / path) as image:
                official = pixels["test" if split == "test" else "train"][index]
                assert np.array_equal(np.asarray(image), official)

    # The extracted folder gives the same dataset as the tarball.
    extracted = prepare(folder / CIFAR100.archive_folder, tmp_path)
    for split in ("train", "valid", "test"):
        assert manifest(extracted, split) == manifest(cifar100_dir, split)


def test_image_folder_source_uses_the_fine_class_names(make_synthetic_source, tmp_path):
    source = make_synthetic_source(train_per_class=2, test_per_class=1, classes=CIFAR100.classes)
    result = run_download_data("--dataset", "cifar100", "--source", source, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    dataset_dir = tmp_path / "cifar100"
    assert [len(manifest(dataset_dir, s)) for s in ("train", "valid", "test")] == [100, 100, 100]
    assert (dataset_dir / "images" / "test" / "willow_tree").is_dir()


def test_the_wrong_dataset_flag_is_named(cifar100_source, make_synthetic_source, tmp_path):
    cifar10 = make_synthetic_source(train_per_class=2, test_per_class=1)
    result = run_download_data("--dataset", "cifar100", "--source", cifar10, "--out", tmp_path)
    assert result.returncode == 2 and "not a cifar100 class" in result.stderr

    folder, _ = cifar100_source
    for source in (folder / CIFAR100.filename, folder / CIFAR100.archive_folder, folder):
        result = run_download_data("--source", source, "--out", tmp_path)
        assert result.returncode == 2 and "pass --dataset cifar100" in result.stderr
        assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_failed_download_names_the_cifar100_archive(tmp_path):
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    result = run_download_data("--dataset", "cifar100", "--out", tmp_path, env=env)
    assert result.returncode == 2
    assert CIFAR100.url in result.stderr and "cifar-100-python.tar.gz" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_train_eval_and_predict_take_the_100_classes_from_the_data(cifar100_dir, tmp_path):
    out = tmp_path / "run"
    result = run_script(
        "train.py", "--data", cifar100_dir, "--out", out, *SMALL, "--epochs", "1",
        "--train-subset", "64",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    checkpoint = load_checkpoint(out / "best.pt")
    assert checkpoint["classes"] == list(CIFAR100.classes)
    assert checkpoint["model"]["kwargs"]["num_classes"] == 100
    model = model_from_checkpoint(checkpoint, out / "best.pt").eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 100)

    result = run_script("eval.py", out / "best.pt", "--split", "test", "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)["test"]
    assert 0 <= scores["top1"] <= scores["top5"] <= 100

    image = cifar100_dir / next(iter(manifest(cifar100_dir, "test")))
    result = run_script("predict.py", out / "best.pt", image, "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    (prediction,) = json.loads(result.stdout)
    assert len(prediction["top"]) == 5
    assert all(t["class"] == CIFAR100.classes[t["label"]] for t in prediction["top"])
