"""Hostile and malformed data: every case ends in one line naming the file, or is used
correctly; nothing is written or read outside the data folder, nothing hangs."""

from __future__ import annotations

import fcntl
import gzip
import io
import json
import os
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, one_line_error, run_download_data, run_script
from PIL import Image, PngImagePlugin

from data import download_data
from dataloader import DataError, ManifestDataset, load_split, read_manifest
from dataloader.images import ImageError, ImageSizeError, cifar_pixels
from dataloader.images import read_image_file as read_image


def copy_dataset(dataset_dir: Path, destination: Path) -> Path:
    return Path(
        shutil.copytree(
            dataset_dir, destination / "cifar10", ignore=shutil.ignore_patterns("*_cache.pt")
        )
    )


def prepare(capsys, *args: str | Path) -> tuple[int, str]:
    """download_data.main in this process: its exit status and its stderr."""
    status = download_data.main([str(arg) for arg in args])
    return status, capsys.readouterr().err


def assert_one_line(status: int, stderr: str, *phrases: str) -> None:
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("download_data.py: error: "), stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


# Archives that would write outside the work folder, or fill memory, if extracted as given


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, linkname
    member.size = 1 if kind == tarfile.REGTYPE else 0
    return member


HOSTILE_MEMBERS = {
    "dot-dot": lambda outside: tar_member("cifar-10-batches-py/../../escaped"),
    "absolute": lambda outside: tar_member(f"{outside}/escaped"),
    "symlink": lambda outside: tar_member(
        "cifar-10-batches-py/link", tarfile.SYMTYPE, str(outside)
    ),
    "hard link": lambda outside: tar_member(
        "cifar-10-batches-py/hard", tarfile.LNKTYPE, f"{outside}/escaped"
    ),
    "fifo": lambda outside: tar_member("cifar-10-batches-py/fifo", tarfile.FIFOTYPE),
    "device": lambda outside: tar_member("cifar-10-batches-py/zero", tarfile.CHRTYPE),
    "image dot-dot": lambda outside: tar_member("../escaped.png"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_MEMBERS))
def test_hostile_tar_members_are_refused_before_extraction(capsys, tmp_path: Path, kind: str):
    outside = tmp_path / "outside"
    outside.mkdir()
    tarball = tmp_path / "hostile.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        if not kind.startswith("image"):
            tar.addfile(tar_member("cifar-10-batches-py/batches.meta"), io.BytesIO(b"x"))
        hostile = HOSTILE_MEMBERS[kind](outside)
        tar.addfile(hostile, io.BytesIO(b"x") if hostile.isfile() else None)
        # What would land outside had the symbolic link above been extracted.
        tar.addfile(tar_member("cifar-10-batches-py/link/escaped"), io.BytesIO(b"x"))
    out = tmp_path / "out"
    status, stderr = prepare(capsys, "--source", tarball, "--out", out)
    phrase = "leads outside" if "dot" in kind or kind == "absolute" else "link or special file"
    assert_one_line(status, stderr, hostile.name, phrase)
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar.gz", "out", "outside"]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "name",
    ["train/cat/0000.png", "cifar-10-batches-py/data_batch_1"],
    ids=["image", "official batch"],
)
def test_huge_member_is_refused_by_its_size_before_it_is_read(capsys, tmp_path: Path, name):
    # A tar whose member claims 2 GiB and holds a few bytes: the claim alone refuses it.
    member = tarfile.TarInfo(name)
    member.size = 2 << 30
    tarball = tmp_path / "bomb.tar.gz"
    with gzip.open(tarball, "wb") as stream:
        stream.write(member.tobuf(tarfile.GNU_FORMAT) + bytes(1024))
    status, stderr = prepare(capsys, "--source", tarball, "--out", tmp_path / "out")
    assert_one_line(status, stderr, name, "2,147,483,648 bytes")


# Sources that are no files, or have odd files


def test_special_and_odd_sources_are_one_line_errors(
    capsys, make_synthetic_source, tmp_path: Path
) -> None:
    fifo = tmp_path / "source.fifo"
    os.mkfifo(fifo)
    for source in (fifo, Path("/dev/zero")):
        status, stderr = prepare(capsys, "--source", source, "--out", tmp_path / "out")
        assert_one_line(status, stderr, str(source), "not a file or folder")

    source = make_synthetic_source(train_per_class=2, test_per_class=1)
    os.mkfifo(source / "train" / "cat" / "0002.png")
    status, stderr = prepare(capsys, "--source", source, "--out", tmp_path / "out")
    assert_one_line(status, stderr, "train/cat/0002.png", "not a regular file")

    os.remove(source / "train" / "cat" / "0002.png")
    latin1_name = source / "test" / "cat" / os.fsdecode(b"\xff.png")
    shutil.copy(source / "train" / "cat" / "0000.png", latin1_name)
    status, stderr = prepare(capsys, "--source", source, "--out", tmp_path / "out")
    assert_one_line(status, stderr, "not UTF-8", r"\udcff.png")
    assert not list((tmp_path / "out").glob(".cifar10*"))


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_works(
    make_synthetic_source, tmp_path: Path
) -> None:
    source = make_synthetic_source(train_per_class=2, test_per_class=1)
    working = tmp_path / ".cifar10.partial-first"
    working.mkdir()
    with open(tmp_path / ".cifar10.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_download_data("--source", source, "--out", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "another download_data.py run" in result.stderr
    assert working.is_dir()
    # Once the lock is free, the leftover is a dead run's and is cleaned up.
    result = run_download_data("--source", source, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10"]


@pytest.mark.parametrize(
    "stamp",
    ["[" * 100_000, '{"made_with": ' + "7" * 5000 + "}", "fifo", "outside names"],
)
def test_a_hostile_prepared_json_means_not_prepared(
    synthetic_cifar10_dir: Path, tmp_path: Path, stamp: str
) -> None:
    dataset_dir = copy_dataset(synthetic_cifar10_dir, tmp_path)
    recorded = json.loads((dataset_dir / "prepared.json").read_text())
    assert download_data.is_prepared(dataset_dir, recorded["made_with"])
    (dataset_dir / "prepared.json").unlink()
    if stamp == "fifo":
        os.mkfifo(dataset_dir / "prepared.json")
    elif stamp == "outside names":
        os.mkfifo(tmp_path / "fifo")
        recorded["sha256"]["../fifo"] = "0" * 64
        (dataset_dir / "prepared.json").write_text(json.dumps(recorded))
    else:
        (dataset_dir / "prepared.json").write_text(stamp)
    assert not download_data.is_prepared(dataset_dir, recorded["made_with"])


# Images: one rule for every mode, used by download_data.py, predict.py and the readers


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.fromarray(np.full((32, 32), 0xAB12, np.uint16)), 0xAB),
        (Image.new("I;16B", (32, 32), 0x3400), 0x34),
        (Image.new("I", (32, 32), 65535), 255),
        (Image.new("I", (32, 32), 70000), "outside the 16-bit"),
        (Image.new("I", (32, 32), -1), "outside the 16-bit"),
        (Image.new("F", (32, 32), 0.8), 204),
        (Image.new("F", (32, 32), 1.5), "outside the 0..1"),
        (Image.new("F", (32, 32), float("nan")), "outside the 0..1"),
        (Image.new("P", (32, 32), 0), 0),
        (Image.new("LA", (32, 32), (77, 0)), 77),
        (Image.new("RGBA", (32, 32), (77, 77, 77, 0)), 77),
        (Image.new("1", (32, 32), 1), 255),
        (Image.new("CMYK", (32, 32), (0, 0, 0, 0)), 255),
        (Image.new("La", (32, 32)), "cannot be converted to RGB"),
    ],
    ids=lambda value: value.mode if isinstance(value, Image.Image) else str(value),
)
def test_every_mode_is_scaled_to_8_bits_or_refused(image: Image.Image, expected) -> None:
    if isinstance(expected, str):
        with pytest.raises(ImageError, match=expected):
            cifar_pixels(image, resize=False)
        return
    pixels = cifar_pixels(image, resize=False)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    assert np.all(pixels == expected)


def exif_rotated(path: Path) -> np.ndarray:
    """A 32x32 PNG stored sideways with EXIF orientation 6 (turn 90 degrees clockwise);
    returns the upright pixels."""
    upright = np.zeros((32, 32, 3), np.uint8)
    upright[:4] = 255  # a white band at the top
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(upright, 1).copy()).save(path, exif=exif)
    return upright


def test_sizes_and_exif_orientation(tmp_path: Path) -> None:
    with pytest.raises(ImageSizeError, match="40x36, not 32x32"):
        cifar_pixels(Image.new("RGB", (40, 36)), resize=False)
    assert cifar_pixels(Image.new("RGB", (40, 36)), resize=True).shape == (32, 32, 3)
    upright = exif_rotated(tmp_path / "sideways.png")
    with Image.open(tmp_path / "sideways.png") as opened:
        assert np.array_equal(cifar_pixels(opened, resize=False), upright)


def test_download_data_and_predict_read_images_alike(
    capsys, make_synthetic_source, tmp_path: Path
) -> None:
    source = make_synthetic_source(train_per_class=2, test_per_class=1)
    upright = exif_rotated(source / "test" / "cat" / "0000.png")
    sixteen_bit = np.full((32, 32), 0x8000, np.uint16)
    Image.fromarray(sixteen_bit).save(source / "test" / "dog" / "0000.png")
    status, stderr = prepare(capsys, "--source", source, "--out", tmp_path)
    assert status == 0, stderr
    # One test image per class: test image 3 is the cat, 5 the dog.
    for name, index, expected in (("cat", 3, upright), ("dog", 5, 0x80)):
        with Image.open(tmp_path / f"cifar10/images/test/{name}/{index:05d}.png") as written:
            assert np.all(np.asarray(written) == expected)
        predicted = read_image(source / "test" / name / "0000.png").permute(1, 2, 0).numpy()
        assert np.all(predicted == expected)

    Image.new("I", (32, 32), 70000).save(tmp_path / "wide.tif")
    Image.new("F", (32, 32), 0.8).save(tmp_path / "float.tif")
    with pytest.raises(ImageError, match=r"wide\.tif: cannot use this image \(32-bit integer"):
        read_image(tmp_path / "wide.tif")
    assert torch.all(read_image(tmp_path / "float.tif") == 204)


# Manifests, classes.json and split caches


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(path: Path) -> None:
    """A PNG header claiming 40000x40000 pixels, above PIL's decompression-bomb limit."""
    header = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b""))


def text_chunk_bomb(path: Path) -> None:
    """A PNG whose compressed text chunk inflates past PIL's limit on text chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "0" * (4 << 20), zip=True)
    Image.new("RGB", (32, 32)).save(path, pnginfo=info)


def hostile_manifest(dataset_dir: Path, kind: str) -> tuple[Path, str]:
    """Makes the train split of dataset_dir hostile; returns the file to name and a phrase
    the error must hold."""
    manifest = dataset_dir / "train_img2labels.json"
    entries = json.loads(manifest.read_text())
    first, label = next(iter(entries.items()))
    text = None
    if kind == "absolute path":
        entries = {"/etc/passwd": 0, **entries}
        phrase = "must be relative"
    elif kind == "dot-dot":
        entries = {"../../../../../../etc/passwd": 0, **entries}
        phrase = "must be relative"
    elif kind == "symlink outside":
        os.symlink("/etc/passwd", dataset_dir / "images" / "passwd.png")
        entries = {"images/passwd.png": 0, **entries}
        phrase = "leads outside"
    elif kind == "repeated key":
        text = json.dumps(entries)[:-1] + f', "{first}": {(label + 1) % 10}}}'
        phrase = "appears more than once"
    elif kind == "two spellings":
        entries[first.replace("/", "/./", 1)] = (label + 1) % 10
        phrase = "same image as entry"
    elif kind == "5000-digit label":
        text = json.dumps(entries)[:-1] + ', "x.png": ' + "9" * 5000 + "}"
        phrase = "5,000 digits"
    elif kind == "deep nesting":
        text = "[" * 100_000
        phrase = "nested too deeply"
    elif kind == "300-character name":
        entries = {"a" * 300 + ".png": 0, **entries}
        phrase = "File name too long"
    elif kind == "huge sparse manifest":
        text = ""
        phrase = "more than the"
    elif kind == "fifo manifest":
        phrase = "not a regular file"
    elif kind == "fifo image":
        (dataset_dir / first).unlink()
        os.mkfifo(dataset_dir / first)
        phrase = "not a regular file"
    elif kind == "classes.json to /dev/zero":
        (dataset_dir / "classes.json").unlink()
        os.symlink("/dev/zero", dataset_dir / "classes.json")
        return dataset_dir / "classes.json", "not a regular file"
    elif kind == "decompression bomb":
        decompression_bomb(dataset_dir / first)
        phrase = "cannot decode image"
    elif kind == "text chunk bomb":
        text_chunk_bomb(dataset_dir / first)
        phrase = "cannot decode image"
    else:
        raise AssertionError(kind)
    manifest.unlink()
    if kind == "fifo manifest":
        os.mkfifo(manifest)
    else:
        manifest.write_text(json.dumps(entries) if text is None else text)
    if kind == "huge sparse manifest":
        os.truncate(manifest, 100 << 20)
    return manifest, phrase


HOSTILE_MANIFESTS = [
    "absolute path",
    "dot-dot",
    "symlink outside",
    "repeated key",
    "two spellings",
    "5000-digit label",
    "deep nesting",
    "300-character name",
    "huge sparse manifest",
    "fifo manifest",
    "fifo image",
    "classes.json to /dev/zero",
    "decompression bomb",
    "text chunk bomb",
]


@pytest.mark.parametrize("kind", HOSTILE_MANIFESTS)
def test_hostile_manifest_is_one_data_error(synthetic_cifar10_dir: Path, tmp_path: Path, kind):
    dataset_dir = copy_dataset(synthetic_cifar10_dir, tmp_path)
    named, phrase = hostile_manifest(dataset_dir, kind)
    readers = [lambda: load_split(dataset_dir, "train")]
    if "bomb" not in kind:
        manifest = dataset_dir / "train_img2labels.json"
        readers += [lambda: read_manifest(manifest), lambda: ManifestDataset(manifest)]
    for read in readers:
        with pytest.raises(DataError) as error:
            read()
        message = str(error.value)
        assert message.startswith(str(named)) and phrase in message and "\n" not in message


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["symlink outside", "text chunk bomb"])
def test_train_py_ends_hostile_data_with_one_line(synthetic_cifar10_dir, tmp_path: Path, kind):
    dataset_dir = copy_dataset(synthetic_cifar10_dir, tmp_path)
    named, phrase = hostile_manifest(dataset_dir, kind)
    result = run_script(
        "train.py", "--data", dataset_dir, "--out", tmp_path / "run", *SMALL, "--epochs", "1"
    )
    one_line_error(result, str(named), phrase)


def rewrite_cache(cache: Path, change) -> None:
    content = torch.load(cache, weights_only=True)
    change(content)
    torch.save(content, cache)


CACHE_CHANGES = {
    "5 images": lambda c: c.update(images=c["images"][:5], labels=c["labels"][:5]),
    "labels -7..893": lambda c: c.update(labels=torch.linspace(-7, 893, 80).long()),
    "zero images": lambda c: c.update(images=c["images"][:0], labels=c["labels"][:0]),
    "other labels": lambda c: c.update(labels=c["labels"].roll(1)),
    "float images": lambda c: c.update(images=c["images"].float()),
}


@pytest.mark.parametrize("change", [*CACHE_CHANGES, "fifo", "link to /dev/zero"])
def test_a_cache_that_is_not_the_manifest_is_rebuilt(
    synthetic_cifar10_dir: Path, tmp_path: Path, change: str
) -> None:
    dataset_dir = copy_dataset(synthetic_cifar10_dir, tmp_path)
    images, labels = load_split(dataset_dir, "train")
    cache = dataset_dir / "train_cache.pt"
    if change in CACHE_CHANGES:
        rewrite_cache(cache, CACHE_CHANGES[change])
    else:
        cache.unlink()
        if change == "fifo":
            os.mkfifo(cache)
        else:
            os.symlink("/dev/zero", cache)
    again, again_labels = load_split(dataset_dir, "train")
    assert torch.equal(again, images) and torch.equal(again_labels, labels)
    assert torch.equal(torch.load(cache, weights_only=True)["labels"], labels)


def test_a_cache_does_not_hide_a_shortened_classes_json(synthetic_cifar10_dir, tmp_path: Path):
    dataset_dir = copy_dataset(synthetic_cifar10_dir, tmp_path)
    load_split(dataset_dir, "train")
    classes = json.loads((dataset_dir / "classes.json").read_text())
    (dataset_dir / "classes.json").write_text(json.dumps(classes[:5]))
    with pytest.raises(DataError, match=r"train_img2labels\.json: entry .* out of range 0\.\.4"):
        load_split(dataset_dir, "train")
