"""Dataset preparation (data/download_data.py), manifests, cached splits and DeviceLoader."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR10_CLASSES, REPO_ROOT, SHARED_TARBALL, run_download_data
from PIL import Image
from torchvision import transforms

from dataloader import (
    DataError,
    DeviceLoader,
    ManifestDataset,
    channel_stats,
    crop_flip,
    load_split,
    normalize,
    pca_lighting,
    random_crop_flip,
    random_resized_crop_flip,
    read_classes,
    read_manifest,
)
from dataloader.augment import IMAGENET_EIGVAL, IMAGENET_EIGVEC

MANIFESTS = ("train_img2labels.json", "valid_img2labels.json", "test_img2labels.json")


def manifest(dataset_dir: Path, split: str) -> dict[str, int]:
    return json.loads((dataset_dir / f"{split}_img2labels.json").read_text())


def manifest_bytes(dataset_dir: Path) -> dict[str, bytes]:
    return {name: (dataset_dir / name).read_bytes() for name in MANIFESTS}


def assert_clean_failure(result: subprocess.CompletedProcess, out: Path, *fragments: str) -> None:
    """Exit status 2, one error line naming the fragments, and nothing left in out."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("download_data.py: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert not (out / "cifar10").exists()
    assert not list(out.glob(".cifar10.partial-*"))


def copy_dataset(dataset_dir: Path, destination: Path) -> Path:
    """A private copy of a prepared dataset, without the split caches other tests made."""
    return Path(
        shutil.copytree(
            dataset_dir, destination / "cifar10", ignore=shutil.ignore_patterns("*_cache.pt")
        )
    )


# Preparation of the real data (the shared JPEG tarball)


@pytest.mark.real_data
def test_real_split_sizes_classes_and_files(cifar10_dir: Path) -> None:
    assert read_classes(cifar10_dir) == list(CIFAR10_CLASSES)
    splits = {split: manifest(cifar10_dir, split) for split in ("train", "valid", "test")}
    expected = {"train": 4000, "valid": 1000, "test": 1000}
    for split, entries in splits.items():
        assert len(entries) == 10 * expected[split]
        assert Counter(entries.values()) == dict.fromkeys(range(10), expected[split])
        assert all((cifar10_dir / path).is_file() for path in entries)
    assert not set(splits["train"]) & set(splits["valid"])
    assert not set(splits["train"]) & set(splits["test"])
    assert not set(splits["valid"]) & set(splits["test"])
    # Train and valid together are the official training set: every index exactly once.
    indices = sorted(int(Path(p).stem) for split in ("train", "valid") for p in splits[split])
    assert indices == list(range(50_000))


@pytest.mark.real_data
def test_real_second_run_does_no_work(cifar10_dir: Path) -> None:
    before = {name: (cifar10_dir / name).stat().st_mtime_ns for name in MANIFESTS}
    result = run_download_data("--source", SHARED_TARBALL, "--out", cifar10_dir.parent)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert {name: (cifar10_dir / name).stat().st_mtime_ns for name in MANIFESTS} == before


@pytest.mark.real_data
def test_real_runs_are_deterministic_and_the_seed_moves_valid(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    result = run_download_data("--source", SHARED_TARBALL, "--out", tmp_path, "--seed", "1")
    assert result.returncode == 0, result.stderr
    reseeded = tmp_path / "cifar10"
    assert set(manifest(reseeded, "valid")) != set(manifest(cifar10_dir, "valid"))
    assert Counter(manifest(reseeded, "valid").values()) == dict.fromkeys(range(10), 1000)
    assert manifest(reseeded, "test") == manifest(cifar10_dir, "test")

    result = run_download_data("--source", SHARED_TARBALL, "--out", tmp_path, "--seed", "0")
    assert result.returncode == 0, result.stderr
    assert "nothing to do" not in result.stdout
    assert manifest_bytes(reseeded) == manifest_bytes(cifar10_dir)


@pytest.mark.real_data
def test_real_training_data_normalises_to_zero_mean_unit_std(cifar10_dir: Path) -> None:
    images, labels = load_split(cifar10_dir, "train")
    assert images.shape == (40_000, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (40_000,) and labels.dtype == torch.int64
    mean, std = channel_stats(images)
    # The well-known CIFAR-10 statistics, to within what JPEG and the split change.
    assert mean == pytest.approx((0.491, 0.482, 0.447), abs=0.01)
    assert std == pytest.approx((0.247, 0.243, 0.262), abs=0.01)

    def epoch_moments(loader: DeviceLoader) -> tuple[torch.Tensor, torch.Tensor]:
        batches = torch.cat([batch for batch, _ in loader]).double()
        return batches.mean(dim=(0, 2, 3)), batches.std(dim=(0, 2, 3))

    plain = DeviceLoader(images, labels, 1000, mean=mean, std=std, train=False)
    plain_mean, plain_std = epoch_moments(plain)
    torch.testing.assert_close(plain_mean, torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(plain_std, torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)
    # The zero padding of the crops pulls the mean down a little (as with torchvision).
    augmented = DeviceLoader(images, labels, 1000, mean=mean, std=std, train=True)
    augmented_mean, augmented_std = epoch_moments(augmented)
    assert augmented_mean.abs().max() < 0.4
    assert (augmented_std - 1).abs().max() < 0.25


# Preparation of synthetic sources


def test_synthetic_source_layout_and_pixels(make_synthetic_source, tmp_path: Path) -> None:
    source = make_synthetic_source(train_per_class=10, test_per_class=4)
    result = run_download_data("--source", source, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    dataset_dir = tmp_path / "cifar10"
    train, valid, test = (manifest(dataset_dir, s) for s in ("train", "valid", "test"))
    # The official valid fraction (1000 of 5000) of each class.
    assert Counter(train.values()) == dict.fromkeys(range(10), 8)
    assert Counter(valid.values()) == dict.fromkeys(range(10), 2)
    assert Counter(test.values()) == dict.fromkeys(range(10), 4)
    assert not set(train) & set(valid)
    for path, label in {**train, **valid, **test}.items():
        split, class_name, name = Path(path).parts[1:]
        assert CIFAR10_CLASSES[label] == class_name
        # Index n of a split is file n % per_class of class n // per_class, sorted by name.
        per_class = 4 if split == "test" else 10
        original = source / ("test" if split == "test" else "train") / class_name
        original /= f"{int(Path(name).stem) % per_class:04d}.png"
        with Image.open(dataset_dir / path) as written, Image.open(original) as expected:
            assert written.format == "PNG" and written.mode == "RGB"
            assert np.array_equal(np.asarray(written), np.asarray(expected))


@pytest.mark.slow
def test_rerun_does_no_work_but_a_new_seed_or_source_redoes(
    make_synthetic_source, tmp_path: Path
) -> None:
    source = make_synthetic_source()
    assert run_download_data("--source", source, "--out", tmp_path).returncode == 0
    first = manifest_bytes(tmp_path / "cifar10")

    again = run_download_data("--source", source, "--out", tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout

    reseeded = run_download_data("--source", source, "--out", tmp_path, "--seed", "7")
    assert reseeded.returncode == 0 and "nothing to do" not in reseeded.stdout
    assert (
        manifest_bytes(tmp_path / "cifar10")["valid_img2labels.json"]
        != first["valid_img2labels.json"]
    )

    other = make_synthetic_source(seed=1)
    changed = run_download_data("--source", other, "--out", tmp_path, "--seed", "7")
    assert changed.returncode == 0 and "nothing to do" not in changed.stdout
    image = next(iter(manifest(tmp_path / "cifar10", "test")))
    with (
        Image.open(tmp_path / "cifar10" / image) as written,
        Image.open(other / "test" / "airplane" / "0000.png") as expected,
    ):
        assert np.array_equal(np.asarray(written), np.asarray(expected))

    # A dataset with an image gone is not "in place": the run redoes it.
    (tmp_path / "cifar10" / image).unlink()
    repaired = run_download_data("--source", other, "--out", tmp_path, "--seed", "7")
    assert repaired.returncode == 0 and "nothing to do" not in repaired.stdout
    assert (tmp_path / "cifar10" / image).is_file()


def test_tarball_of_an_image_folder(make_synthetic_source, tmp_path: Path) -> None:
    source = make_synthetic_source()
    tarball = tmp_path / "images.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(source, arcname="cifar10-png")
    out_folder, out_tar = tmp_path / "from-folder", tmp_path / "from-tar"
    assert run_download_data("--source", source, "--out", out_folder).returncode == 0
    result = run_download_data("--source", tarball, "--out", out_tar)
    assert result.returncode == 0, result.stderr
    assert manifest_bytes(out_tar / "cifar10") == manifest_bytes(out_folder / "cifar10")


def test_grayscale_rgba_and_jpeg_images_become_rgb(make_synthetic_source, tmp_path: Path) -> None:
    source = make_synthetic_source()
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    Image.fromarray(gray).save(source / "test" / "cat" / "0000.png")
    Image.fromarray(rgba).save(source / "test" / "cat" / "0001.png")
    Image.fromarray(gray).save(source / "test" / "dog" / "0000.jpg", quality=75)
    result = run_download_data("--source", source, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    test = manifest(tmp_path / "cifar10", "test")
    assert Counter(test.values())[CIFAR10_CLASSES.index("dog")] == 5

    def pixels(index: int, class_name: str) -> np.ndarray:
        with Image.open(tmp_path / "cifar10" / f"images/test/{class_name}/{index:05d}.png") as im:
            assert im.mode == "RGB"
            return np.asarray(im)

    cat = CIFAR10_CLASSES.index("cat")
    assert np.array_equal(pixels(cat * 4, "cat"), np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(pixels(cat * 4 + 1, "cat"), rgba[:, :, :3])


def test_wrong_size_is_an_error_unless_resize(make_synthetic_source, tmp_path: Path) -> None:
    source = make_synthetic_source()
    Image.new("RGB", (40, 36), "red").save(source / "train" / "cat" / "0003.png")
    result = run_download_data("--source", source, "--out", tmp_path)
    assert_clean_failure(result, tmp_path, "train/cat/0003.png", "40x36", "--resize")

    result = run_download_data("--source", source, "--out", tmp_path, "--resize")
    assert result.returncode == 0, result.stderr
    index = CIFAR10_CLASSES.index("cat") * 10 + 3
    split = (
        "train"
        if f"images/train/cat/{index:05d}.png" in manifest(tmp_path / "cifar10", "train")
        else "valid"
    )
    with Image.open(tmp_path / "cifar10" / f"images/{split}/cat/{index:05d}.png") as resized:
        assert resized.size == (32, 32)
        assert np.all(np.asarray(resized) == (255, 0, 0))


def make_bad_source(kind: str, make_synthetic_source, tmp_path: Path) -> tuple[Path, str]:
    """A bad source of the given kind and a fragment its error message must contain."""
    if kind == "missing path":
        return tmp_path / "nowhere.tar.gz", "nowhere.tar.gz"
    if kind == "tarball not CIFAR-10":
        (tmp_path / "notes.txt").write_text("not images")
        tarball = tmp_path / "other.tar.gz"
        with tarfile.open(tarball, "w:gz") as tar:
            tar.add(tmp_path / "notes.txt", arcname="notes.txt")
        return tarball, "is not cifar10"
    if kind == "not a tarball":
        (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
        return tmp_path / "junk.tar.gz", "not a readable tar archive"
    if kind == "archive failing its MD5":
        batches = tmp_path / "cifar-10-batches-py"
        batches.mkdir()
        for name in ("data_batch_1", "test_batch", "batches.meta"):
            (batches / name).write_bytes(b"garbage")
        return batches, "MD5"
    source = make_synthetic_source()
    if kind == "class folder missing":
        shutil.rmtree(source / "train" / "cat")
        return source, "train/cat/"
    if kind == "unexpected class folder":
        shutil.copytree(source / "train" / "cat", source / "train" / "kitten")
        return source, "train/kitten/"
    if kind == "corrupt image":
        (source / "test" / "frog" / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        return source, "test/frog/0002.png"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "missing path",
        "tarball not CIFAR-10",
        "not a tarball",
        pytest.param("archive failing its MD5", marks=pytest.mark.slow),
        "class folder missing",
        "unexpected class folder",
        "corrupt image",
    ],
)
def test_bad_source_is_one_line_error(kind: str, make_synthetic_source, tmp_path: Path) -> None:
    source, fragment = make_bad_source(kind, make_synthetic_source, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_failure(run_download_data("--source", source, "--out", out), out, fragment)


@pytest.mark.slow
def test_failed_download_says_to_use_source(tmp_path: Path) -> None:
    # An unreachable proxy makes the download fail the same way with or without internet.
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    result = run_download_data("--out", tmp_path, env=env)
    assert_clean_failure(result, tmp_path, "cannot download", "--source")
    assert list(tmp_path.iterdir()) == []


def test_failed_run_keeps_the_previous_dataset(make_synthetic_source, tmp_path: Path) -> None:
    source = make_synthetic_source()
    assert run_download_data("--source", source, "--out", tmp_path).returncode == 0
    before = manifest_bytes(tmp_path / "cifar10")
    broken = make_synthetic_source(seed=2)
    (broken / "train" / "ship" / "0001.png").write_bytes(b"broken")
    result = run_download_data("--source", broken, "--out", tmp_path)
    assert result.returncode == 2 and "train/ship/0001.png" in result.stderr
    assert manifest_bytes(tmp_path / "cifar10") == before
    assert not list(tmp_path.glob(".cifar10.partial-*"))
    assert "nothing to do" in run_download_data("--source", source, "--out", tmp_path).stdout


def write_official_batches(folder: Path, per_batch: int = 20, test: int = 30) -> np.ndarray:
    """The official archive's pickled layout with random images; returns the training pixels
    as [N, 32, 32, 3]."""
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True)
    train_rows = []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = test if name == "test_batch" else per_batch
        rows = rng.integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8)
        labels = [i % 10 for i in range(count)]
        with open(folder / name, "wb") as stream:
            pickle.dump({"data": rows, "labels": labels}, stream)
        if name != "test_batch":
            train_rows.append(rows)
    with open(folder / "batches.meta", "wb") as stream:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, stream)
    return np.concatenate(train_rows).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def test_official_archive_folder_and_tarball(monkeypatch, tmp_path: Path) -> None:
    from data import download_data

    # The stand-in batches cannot match the published MD5s; everything else is the real path.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args: True)
    train_pixels = write_official_batches(tmp_path / "source" / "cifar-10-batches-py")
    out = tmp_path / "from-folder"
    assert download_data.main(["--source", str(tmp_path / "source"), "--out", str(out)]) == 0
    dataset_dir = out / "cifar10"
    assert [len(manifest(dataset_dir, s)) for s in ("train", "valid", "test")] == [80, 20, 30]
    for path, label in {**manifest(dataset_dir, "train"), **manifest(dataset_dir, "valid")}.items():
        index = int(Path(path).stem)
        assert label == index % 20 % 10
        with Image.open(dataset_dir / path) as written:
            assert np.array_equal(np.asarray(written), train_pixels[index])

    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "source" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    out_tar = tmp_path / "from-tarball"
    assert download_data.main(["--source", str(tarball), "--out", str(out_tar)]) == 0
    assert manifest_bytes(out_tar / "cifar10") == manifest_bytes(dataset_dir)


# Manifests and cached splits


def rewrite_manifest(dataset_dir: Path, split: str, change) -> Path:
    path = dataset_dir / f"{split}_img2labels.json"
    entries = json.loads(path.read_text())
    path.write_text(change(entries))
    return path


def first_key(entries: dict) -> str:
    return next(iter(entries))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: json.dumps({**e, "images/train/cat/99999.png": 3}), "not found"),
        (lambda e: json.dumps({**e, first_key(e): 10}), "label 10 out of range 0..9"),
        (lambda e: json.dumps({**e, first_key(e): -1}), "label -1 out of range"),
        (lambda e: json.dumps({**e, first_key(e): "3"}), "label must be an integer"),
        (lambda e: json.dumps(e)[:-10], "not valid JSON"),
        (lambda e: json.dumps(list(e)), "expected a JSON object"),
    ],
)
def test_manifest_errors_name_the_manifest_and_entry(
    synthetic_cifar10_dir: Path, tmp_path: Path, change, message: str
) -> None:
    dataset_dir = copy_dataset(synthetic_cifar10_dir, tmp_path)
    path = rewrite_manifest(dataset_dir, "train", change)
    for read in (read_manifest, ManifestDataset, lambda _: load_split(dataset_dir, "train")):
        with pytest.raises(DataError) as error:
            read(path)
        text = str(error.value)
        assert str(path) in text and message in text and "\n" not in text
        if "entry" in message or "label" in message or message == "not found":
            assert "entry 'images/" in text


def test_read_classes_needs_its_file(synthetic_cifar10_dir: Path, tmp_path: Path) -> None:
    dataset_dir = copy_dataset(synthetic_cifar10_dir, tmp_path)
    (dataset_dir / "classes.json").unlink()
    with pytest.raises(DataError, match=r"classes\.json: not found"):
        read_classes(dataset_dir)
    with pytest.raises(DataError, match=r"classes\.json: not found"):
        read_manifest(dataset_dir / "test_img2labels.json")


def test_manifest_dataset_returns_rgb_images(synthetic_cifar10_dir: Path, tmp_path: Path) -> None:
    dataset_dir = copy_dataset(synthetic_cifar10_dir, tmp_path)
    dataset = ManifestDataset(dataset_dir / "test_img2labels.json")
    assert len(dataset) == 40 and dataset.classes == list(CIFAR10_CLASSES)
    image, label = dataset[5]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32)
    assert label == 1
    tensors = ManifestDataset(dataset_dir / "test_img2labels.json", transform=transforms.ToTensor())
    images, labels = load_split(dataset_dir, "test")
    assert torch.equal((tensors[5][0] * 255).round().to(torch.uint8), images[5])
    assert labels[5].item() == label


def test_split_cache_is_used_and_rebuilt_when_the_manifest_changes(
    synthetic_cifar10_dir: Path, tmp_path: Path
) -> None:
    dataset_dir = copy_dataset(synthetic_cifar10_dir, tmp_path)
    images, labels = load_split(dataset_dir, "valid")
    assert images.shape == (20, 3, 32, 32) and labels.tolist() == sorted(labels.tolist())
    assert (dataset_dir / "valid_cache.pt").is_file()
    assert [p.name for p in dataset_dir.glob(".valid_cache.pt.*")] == []

    # An image changed behind the cache's back is seen: the cache keys on the files' sizes
    # and modification times as well as on the manifest.
    first_image = first_key(manifest(dataset_dir, "valid"))
    Image.new("RGB", (32, 32), "white").save(dataset_dir / first_image)
    cached_images, _ = load_split(dataset_dir, "valid")
    assert torch.all(cached_images[0] == 255) and torch.equal(cached_images[1:], images[1:])

    rewrite_manifest(dataset_dir, "valid", lambda e: json.dumps(dict(list(e.items())[:-1])))
    rebuilt_images, rebuilt_labels = load_split(dataset_dir, "valid")
    assert rebuilt_images.shape[0] == 19 and torch.equal(rebuilt_labels, labels[:-1])
    assert torch.all(rebuilt_images[0] == 255)

    (dataset_dir / "valid_cache.pt").write_bytes(b"truncated")
    assert torch.equal(load_split(dataset_dir, "valid")[0], rebuilt_images)


def test_split_with_a_corrupt_image_names_it(synthetic_cifar10_dir: Path, tmp_path: Path) -> None:
    dataset_dir = copy_dataset(synthetic_cifar10_dir, tmp_path)
    broken = sorted(manifest(dataset_dir, "test"))[7]
    (dataset_dir / broken).write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"test_img2labels\.json: cannot decode image .*") as error:
        load_split(dataset_dir, "test")
    assert broken in str(error.value)


def test_channel_stats_matches_float_computation() -> None:
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    images[:, 2] //= 4
    mean, std = channel_stats(images)
    floats = images.double() / 255
    assert mean == pytest.approx(floats.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(floats.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)
    assert std[2] < std[0] / 3


# Augmentation


def coordinate_images(count: int) -> torch.Tensor:
    """Images whose channel 0 is row + 1 and channel 1 is column + 1 (0 only in padding)."""
    rows = torch.arange(1, 33, dtype=torch.uint8)[:, None].expand(32, 32)
    cols = torch.arange(1, 33, dtype=torch.uint8)[None, :].expand(32, 32)
    image = torch.stack([rows, cols, torch.full((32, 32), 200, dtype=torch.uint8)])
    return image.expand(count, 3, 32, 32).contiguous()


def test_random_crop_flip_windows_lie_in_the_padded_image() -> None:
    images = coordinate_images(2000)
    padded = torch.nn.functional.pad(images[0], (4, 4, 4, 4))
    windows = {}
    for row in range(9):
        for col in range(9):
            window = padded[:, row : row + 32, col : col + 32]
            windows[window.numpy().tobytes()] = (row, col, False)
            windows[window.flip(-1).numpy().tobytes()] = (row, col, True)
    generator = torch.Generator().manual_seed(0)
    outputs = random_crop_flip(images, generator)
    assert outputs.shape == images.shape and outputs.dtype == torch.uint8
    found = [windows.get(output.numpy().tobytes()) for output in outputs]
    assert None not in found
    rows, cols, flips = zip(*found, strict=True)
    assert set(rows) == set(range(9)) and set(cols) == set(range(9))
    assert 0.45 < sum(flips) / len(flips) < 0.55


def test_crop_flip_applies_the_given_offsets_and_flips() -> None:
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    offsets = torch.tensor([[0, 8], [4, 4], [7, 1]])
    flips = torch.tensor([False, True, True])
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    expected = torch.stack(
        [
            padded[0, :, 0:32, 8:40],
            padded[1, :, 4:36, 4:36].flip(-1),
            padded[2, :, 7:39, 1:33].flip(-1),
        ]
    )
    assert torch.equal(crop_flip(images, offsets, flips), expected)


def test_random_resized_crop_flip_zooms_and_mirrors() -> None:
    ramp = torch.linspace(0, 1, 32).expand(500, 3, 32, 32).contiguous()
    generator = torch.Generator().manual_seed(0)
    full = random_resized_crop_flip(ramp, generator, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    mirrored = torch.isclose(full, ramp.flip(-1), atol=1e-5).flatten(1).all(1)
    unchanged = torch.isclose(full, ramp, atol=1e-5).flatten(1).all(1)
    assert torch.all(mirrored | unchanged)
    assert 0.4 < mirrored.double().mean() < 0.6

    crops = random_resized_crop_flip(ramp, generator)
    rows = crops[:, 0, 16]
    span = rows[:, -1] - rows[:, 0]
    # A crop of width fraction w shows a ramp of span about w; widths lie in
    # [sqrt(0.35 * 3/4), 1] and mirrored crops run backwards.
    assert span.abs().min() > 0.45 and span.abs().max() <= 1 + 1e-5
    assert span.abs().min() < 0.65
    assert 0.4 < (span < 0).double().mean() < 0.6
    assert torch.all((rows[:, 1:] - rows[:, :-1]) * span.sign()[:, None] >= -1e-6)


def test_pca_lighting_shifts_each_image_by_the_imagenet_components() -> None:
    images = torch.rand(4000, 3, 4, 4)
    lit = pca_lighting(images, torch.Generator().manual_seed(0))
    shift = lit - images
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    eigvec, eigval = torch.tensor(IMAGENET_EIGVEC), torch.tensor(IMAGENET_EIGVAL)
    expected_std = 0.1 * ((eigvec * eigval) ** 2).sum(1).sqrt()
    measured_std = shift[:, :, 0, 0].std(0)
    torch.testing.assert_close(measured_std, expected_std, rtol=0.1, atol=0)
    assert torch.equal(pca_lighting(images, torch.Generator(), alphastd=0.0), images)


# DeviceLoader


def id_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)
    return images, torch.arange(count)


def run_epoch(loader: DeviceLoader) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    batches = list(loader)
    return [images for images, _ in batches], [labels for _, labels in batches]


STATS = {"mean": (0.5, 0.4, 0.3), "std": (0.25, 0.2, 0.3)}


def test_training_epoch_keeps_every_sample_once_in_batches() -> None:
    images, ids = id_images(1000)
    loader = DeviceLoader(images, ids, 64, **STATS, train=True)
    batch_images, batch_ids = run_epoch(loader)
    assert len(loader) == len(batch_ids) == 16 and loader.num_samples == 1000
    assert [len(b) for b in batch_ids] == [64] * 15 + [40]
    assert torch.equal(torch.cat(batch_ids).sort().values, ids)
    assert not torch.equal(torch.cat(batch_ids), ids)
    assert all(b.dtype == torch.float32 and b.shape[1:] == (3, 32, 32) for b in batch_images)
    assert all(b.dtype == torch.int64 for b in batch_ids)


@pytest.mark.slow
def test_same_seed_same_batches_and_resuming_repeats_an_epoch() -> None:
    images, ids = id_images(300)

    def epoch(loader: DeviceLoader, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        loader.set_epoch(number)
        batch_images, batch_ids = run_epoch(loader)
        return torch.cat(batch_images), torch.cat(batch_ids)

    running = DeviceLoader(images, ids, 32, **STATS, train=True, seed=3)
    epochs = [epoch(running, number) for number in range(3)]
    resumed = DeviceLoader(images, ids, 32, **STATS, train=True, seed=3)
    for got, want in zip(epoch(resumed, 2), epochs[2], strict=True):
        assert torch.equal(got, want)
    assert not torch.equal(epochs[0][1], epochs[1][1])
    other_seed = DeviceLoader(images, ids, 32, **STATS, train=True, seed=4)
    assert not torch.equal(epoch(other_seed, 2)[1], epochs[2][1])
    # Each epoch draws new crops and flips too, not only a new order.
    by_id = [images_[ids_.argsort()] for images_, ids_ in epochs]
    assert not torch.equal(by_id[0], by_id[1])


@pytest.mark.parametrize("augment", ["crop-flip", "none", "imagenet", "cutout"])
def test_augment_choices_give_normalised_float_batches(augment: str) -> None:
    images, ids = id_images(100)
    loader = DeviceLoader(images, ids, 50, **STATS, train=True, augment=[augment], seed=1)
    batch_images, batch_ids = run_epoch(loader)
    combined = torch.cat(batch_images)
    assert combined.shape == (100, 3, 32, 32) and torch.isfinite(combined).all()
    if augment == "none":
        expected = normalize(images[torch.cat(batch_ids)], STATS["mean"], STATS["std"])
        torch.testing.assert_close(combined, expected)
    else:
        assert not torch.allclose(
            combined, normalize(images[torch.cat(batch_ids)], STATS["mean"], STATS["std"])
        )
    again = DeviceLoader(images, ids, 50, **STATS, train=True, augment=[augment], seed=1)
    assert torch.equal(torch.cat(run_epoch(again)[0]), combined)


def test_evaluation_is_in_order_and_only_normalised() -> None:
    images, ids = id_images(130)
    loader = DeviceLoader(images, ids, 50, **STATS, train=False, channels_last=True)
    batch_images, batch_ids = run_epoch(loader)
    assert [len(b) for b in batch_ids] == [50, 50, 30]
    assert torch.equal(torch.cat(batch_ids), ids)
    expected = (images.double() / 255 - torch.tensor(STATS["mean"]).view(1, 3, 1, 1).double()) / (
        torch.tensor(STATS["std"]).view(1, 3, 1, 1).double()
    )
    torch.testing.assert_close(torch.cat(batch_images).double(), expected, atol=1e-5, rtol=0)
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b in batch_images)


@pytest.mark.parametrize(
    ("count", "batch_size", "world_size"),
    [(1000, 64, 2), (1001, 64, 3), (17, 8, 2), (5, 4, 4), (40, 8, 2)],
)
@pytest.mark.parametrize("train", [True, False])
def test_ranks_see_disjoint_parts_in_equal_batch_counts(
    count: int, batch_size: int, world_size: int, train: bool
) -> None:
    images, ids = id_images(count)
    seen, batch_counts = [], []
    for rank in range(world_size):
        loader = DeviceLoader(
            images, ids, batch_size, **STATS, train=train, rank=rank, world_size=world_size
        )
        loader.set_epoch(1)
        _, batch_ids = run_epoch(loader)
        assert len(batch_ids) == len(loader)
        assert all(0 < len(b) <= batch_size + 1 for b in batch_ids)
        assert loader.num_samples == sum(len(b) for b in batch_ids)
        batch_counts.append(len(batch_ids))
        seen.append(torch.cat(batch_ids))
    assert len(set(batch_counts)) == 1
    everything = torch.cat(seen)
    assert len(everything) == count
    assert torch.equal(everything.sort().values, ids)


def test_ranks_have_equal_batch_counts_and_shuffle_alike() -> None:
    images, ids = id_images(1001)
    loaders = [
        DeviceLoader(images, ids, 64, **STATS, train=True, rank=r, world_size=3) for r in range(3)
    ]
    assert len({len(loader) for loader in loaders}) == 1
    assert sum(loader.num_samples for loader in loaders) == 1001
    first_batches = [next(iter(loader))[1] for loader in loaders]
    single = DeviceLoader(images, ids, 192, **STATS, train=True)
    # The ranks split the global batch of a single process with the same seed.
    assert torch.equal(torch.cat(first_batches), next(iter(single))[1])


# bench.py


@pytest.mark.slow
def test_bench_data_reports_both_rates(synthetic_cifar10_dir: Path, tmp_path: Path) -> None:
    dataset_dir = copy_dataset(synthetic_cifar10_dir, tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench.py"),
            "data",
            "--data",
            str(dataset_dir),
            "--seconds",
            "0.2",
            "--workers",
            "0",
            "--batch-size",
            "16",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "DeviceLoader" in result.stdout and "DataLoader" in result.stdout
    assert "ratio:" in result.stdout

    missing = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench.py"), "data", "--data", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
