"""Prepare CIFAR-10 or CIFAR-100 as PNG files plus JSON manifests for training and evaluation.

    python data/download_data.py [--dataset {cifar10,cifar100}] [--source PATH] [--out DIR]
                                 [--seed N] [--resize]

Without --source the official python archive is downloaded (MD5 checked) with torchvision.
--source takes, for machines without internet:
  - the official cifar-10-python.tar.gz or its extracted cifar-10-batches-py/ folder
    (cifar-100-python.tar.gz or cifar-100-python/ with --dataset cifar100);
  - an image-folder tree train/<class>/*.{png,jpg,jpeg} and test/<class>/*, or a .tar/.tar.gz
    of one (such as ../shared/data/cifar10-jpeg.tar.gz). CIFAR-100 class folders are named
    after its 100 fine classes.

The dataset goes into <out>/cifar10/ or <out>/cifar100/ (<out> defaults to the folder of this
script):
    images/{train,valid,test}/<class>/<index>.png
    classes.json                class names in label order (CIFAR-100: the fine labels)
    train_img2labels.json       image path (relative to the manifest) -> label index
    valid_img2labels.json       a stratified, seeded part of the official training set
                                (1,000 per class for CIFAR-10, 100 for CIFAR-100)
    test_img2labels.json        the official test set
    prepared.json               what the folder was made from (source, seed), written last

Same source and seed give byte-identical manifests; a run that finds them in place does no work.
Everything is written into a temporary folder beside the dataset and renamed into place, so an
interrupted or failed run leaves the previous dataset (or nothing) behind; a lock file in <out>
keeps a second run from preparing the same dataset there at the same time.
Images are read as dataloader/images.py says (EXIF orientation, 16-bit and float modes).
Archives are read member by member: links, special files, names leading outside the archive
and members larger than any CIFAR file are refused before anything is read or extracted.
Bad sources end with a one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import stat
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm import tqdm

# Run as a script, sys.path[0] is data/; the repository root holds the dataloader package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloader.images import IMAGE_SUFFIXES, ImageError, ImageSizeError, cifar_pixels
from dataloader.manifests import (
    CLASSES_FILE,
    DATA_ROOT,
    MAX_JSON_BYTES,
    SPLITS,
    DataError,
    manifest_path,
    read_manifest,
)
from utils import (
    FileLock,
    end_with_parent,
    file_in_the_way,
    make_output_printable,
    one_line,
    printable,
    read_regular_file,
    stop_signals_to,
)

EXIT_BAD_SOURCE = 2
MAX_SEED = 2**32 - 1  # as train.py's
STAMP_FILE = "prepared.json"
STAMP_FORMAT = 1

# Bounds checked before a source file is read or extracted. The largest official file is a
# 31 MB batch and a CIFAR image is a few KB; larger images are allowed for --resize.
MAX_ARCHIVE_FILE_BYTES = 256 << 20
MAX_IMAGE_BYTES = 16 << 20
MAX_SOURCE_BYTES = 2 << 30
MAX_STAMP_BYTES = 1 << 20


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between the CIFAR datasets this script prepares."""

    name: str
    classes: tuple[str, ...]
    url: str
    filename: str
    md5: str
    archive_folder: str
    torchvision_dataset: str
    """The torchvision class that reads (and MD5-checks) the extracted official archive."""
    train_per_class: int
    valid_per_class: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


CIFAR10 = DatasetSpec(
    name="cifar10",
    classes=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    filename="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    archive_folder="cifar-10-batches-py",
    torchvision_dataset="CIFAR10",
    train_per_class=5000,
    valid_per_class=1000,
)

# The fine labels in label order, as fine_label_names in the archive's meta file.
# fmt: off
CIFAR100_FINE_LABELS = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard",
    "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse",
    "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray",
    "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
# fmt: on

CIFAR100 = DatasetSpec(
    name="cifar100",
    classes=CIFAR100_FINE_LABELS,
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    filename="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    archive_folder="cifar-100-python",
    torchvision_dataset="CIFAR100",
    train_per_class=500,
    valid_per_class=100,
)

DATASETS = {spec.name: spec for spec in (CIFAR10, CIFAR100)}


class SourceError(Exception):
    """A source that cannot be turned into the dataset; the message is one line."""


# An image to write: (pixels HxWx3 uint8, a file path or the bytes of an encoded image),
# the name used in error messages, the destination PNG path, whether to resize.
ImageTask = tuple[np.ndarray | str | bytes, str, str, bool]


@dataclass
class Samples:
    """The official training and test sets, in source order, before any splitting."""

    train: list[tuple[np.ndarray | str | bytes, str, int]]
    test: list[tuple[np.ndarray | str | bytes, str, int]]


def encode_png(task: ImageTask) -> str | None:
    """Decode one image, bring it to 32x32 RGB (dataloader.images), write it as PNG; return an
    error."""
    source, name, destination, resize = task
    try:
        if isinstance(source, np.ndarray):
            pixels = source
        else:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
                pixels = cifar_pixels(opened, resize)
    except ImageSizeError as error:
        return f"image {name} is {error} (pass --resize to resize such images)"
    except ImageError as error:
        return f"cannot use image {name}: {error}"
    except Exception as error:
        # PIL's decoders report damaged, foreign or oversized files with many kinds of exception.
        return f"cannot decode image {name}: {one_line(error)}"
    Image.fromarray(pixels).save(destination, format="PNG")
    return None


class Stopped(BaseException):
    """Ctrl-C or SIGTERM stopped the run, after it cleaned up what it wrote; ``outcome``
    says what is in place. Like KeyboardInterrupt it is no Exception: the signal may land
    inside a library's ``except Exception`` (tqdm's start of its monitor thread has one),
    which would swallow it and let the run go on."""

    def __init__(self, signum: int, outcome: str = "nothing was changed") -> None:
        super().__init__(outcome)
        self.signum, self.outcome = signum, outcome


def raise_stopped(signum: int, frame) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def stops_deferred() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM wait until the block ends (the signals received are listed): a
    stop half-way through putting the new dataset in place would leave the old one beside
    it, or half of it removed."""
    received: list[int] = []
    with stop_signals_to(received.append):
        yield received


def worker_signals(parent: int) -> None:
    # Ctrl-C reaches the whole process group; only the main process reports it and cleans
    # up. SIGTERM ends a worker at once, quietly: the main process sends it when it stops,
    # and the kernel when the main process is killed outright.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    end_with_parent(parent)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def source_fingerprint(source: Path | None, spec: DatasetSpec) -> str:
    """Identify a source cheaply: a file by its content, a folder by its listing."""
    if source is None:
        return f"download:{spec.url}:md5:{spec.md5}"
    if source.is_file():
        return f"file:sha256:{sha256_file(source)}"
    listing = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        status = path.stat()
        # fsencode: a name that is not UTF-8 is refused later, with a message, not here.
        listing.update(os.fsencode(path.relative_to(source).as_posix()))
        listing.update(f"\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return f"folder:{listing.hexdigest()}"


def is_prepared(dataset_dir: Path, stamp: dict) -> bool:
    """Whether dataset_dir was made with this stamp, its manifests and classes.json are the
    ones written then and every image they name is in place."""
    try:
        previous = json.loads(read_regular_file(dataset_dir / STAMP_FILE, MAX_STAMP_BYTES))
        if not isinstance(previous, dict) or previous.get("made_with") != stamp:
            return False
        digests = previous["sha256"]
        manifests = [manifest_path(dataset_dir, split) for split in SPLITS]
        if sorted(digests) != sorted([CLASSES_FILE, *(path.name for path in manifests)]):
            return False
        for name, digest in digests.items():
            content = read_regular_file(dataset_dir / name, MAX_JSON_BYTES)
            if hashlib.sha256(content).hexdigest() != digest:
                return False
        for path in manifests:
            read_manifest(path)
    except (OSError, ValueError, KeyError, AttributeError, TypeError, RecursionError, DataError):
        return False
    return True


def load_official(folder: Path, spec: DatasetSpec, shown: str) -> Samples:
    """Read an extracted official archive with torchvision, which checks every file's MD5.

    CIFAR-100 targets are its fine labels.
    """
    import torchvision.datasets

    official = getattr(torchvision.datasets, spec.torchvision_dataset)
    if folder.name == spec.archive_folder:
        folder = folder.parent
    for path in (folder / spec.archive_folder).iterdir():
        status = path.stat()
        if not stat.S_ISREG(status.st_mode) and not stat.S_ISDIR(status.st_mode):
            raise SourceError(f"{shown}: {path.name} is not a regular file")
        if status.st_size > MAX_ARCHIVE_FILE_BYTES:
            raise SourceError(f"{shown}: {path.name} is {too_large(status.st_size)}")
    try:
        train = official(str(folder), train=True, download=False)
        test = official(str(folder), train=False, download=False)
    except (RuntimeError, OSError, ValueError, KeyError, EOFError) as error:
        raise SourceError(
            f"{shown} is not the official {spec.name} python archive "
            f"({spec.archive_folder}/ is incomplete or fails its MD5 check: {one_line(error)})"
        ) from None
    if tuple(train.classes) != spec.classes:
        raise SourceError(f"{shown}: class names {train.classes} are not those of {spec.name}")
    return Samples(
        train=[
            (pixels, f"training image {index} of {shown}", label)
            for index, (pixels, label) in enumerate(zip(train.data, train.targets, strict=True))
        ],
        test=[
            (pixels, f"test image {index} of {shown}", label)
            for index, (pixels, label) in enumerate(zip(test.data, test.targets, strict=True))
        ],
    )


def visible(path: PurePosixPath) -> bool:
    return not any(part.startswith(".") for part in path.parts)


def too_large(size: int) -> str:
    return f"{size:,} bytes, larger than any file of a CIFAR source"


def checked_path(name: str, shown: str) -> PurePosixPath:
    """A file name of a source as a relative path; one that would lead outside the folder it
    is read into (absolute, or with '..') or is not UTF-8 is refused."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise SourceError(f"{shown}: refusing {name!r}, which leads outside the archive")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise SourceError(f"{shown}: file name {name!r} is not UTF-8; rename it") from None
    return path


def image_folder_root(files: dict[PurePosixPath, Path | bytes]) -> PurePosixPath | None:
    """The folder holding train/ and test/: the top level or a single folder below it."""
    tops = {path.parts[0] for path in files if len(path.parts) > 1}
    if tops & {"train", "test"}:
        return PurePosixPath()
    if len(tops) == 1:
        (top,) = tops
        if any(len(p.parts) > 2 and p.parts[1] in ("train", "test") for p in files):
            return PurePosixPath(top)
    return None


def load_image_folder(
    files: dict[PurePosixPath, Path | bytes], spec: DatasetSpec, shown: str
) -> Samples:
    root = image_folder_root(files)
    if root is None:
        raise SourceError(
            f"{shown} is not {spec.name}: expected {spec.archive_folder}/ (the official archive) "
            "or an image folder with train/<class>/ and test/<class>/"
        )
    by_split: dict[str, list[tuple[np.ndarray | str | bytes, str, int]]] = {}
    for split in ("train", "test"):
        per_class: dict[str, list[tuple[str, Path | bytes]]] = {name: [] for name in spec.classes}
        for path, content in files.items():
            relative = path.relative_to(root) if path.is_relative_to(root) else None
            if relative is None or relative.parts[0] != split:
                continue
            name = str(relative)
            if len(relative.parts) != 3:
                raise SourceError(f"{shown}: unexpected {name} (expected {split}/<class>/<image>)")
            if relative.parts[1] not in per_class:
                other = [d.name for d in DATASETS.values() if relative.parts[1] in d.classes]
                hint = f"; pass --dataset {other[0]}" if other else ""
                raise SourceError(
                    f"{shown}: unexpected folder {split}/{relative.parts[1]}/ "
                    f"(not a {spec.name} class{hint})"
                )
            if relative.suffix.lower() not in IMAGE_SUFFIXES:
                suffixes = ", ".join(IMAGE_SUFFIXES)
                raise SourceError(f"{shown}: unexpected file {name} (images end in {suffixes})")
            per_class[relative.parts[1]].append((name, content))
        if not any(per_class.values()):
            raise SourceError(f"{shown}: no {split}/ folder (or it holds no images)")
        for class_name, images in per_class.items():
            if not images:
                raise SourceError(f"{shown}: class folder {split}/{class_name}/ missing or empty")
        by_split[split] = [
            (str(content) if isinstance(content, Path) else content, f"{name} in {shown}", label)
            for label, class_name in enumerate(spec.classes)
            for name, content in sorted(per_class[class_name])
        ]
    return Samples(train=by_split["train"], test=by_split["test"])


def folder_files(folder: Path, shown: str) -> dict[PurePosixPath, Path | bytes]:
    files: dict[PurePosixPath, Path | bytes] = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = Path(directory, name)
            relative = checked_path(path.relative_to(folder).as_posix(), shown)
            if not visible(relative):
                continue
            # Links are followed (the folder is the user's own), but only to regular files:
            # a FIFO or a device would block or never end.
            status = path.stat()
            if not stat.S_ISREG(status.st_mode):
                raise SourceError(f"{shown}: {relative} is not a regular file")
            if status.st_size > MAX_IMAGE_BYTES:
                raise SourceError(f"{shown}: {relative} is {too_large(status.st_size)}")
            files[relative] = path
    return files


def tar_members(
    tar: tarfile.TarFile, shown: str
) -> Iterator[tuple[PurePosixPath, tarfile.TarInfo]]:
    """The regular files of a tar with their checked paths, read in one pass; links and
    special files are refused, since extracting them could write outside the work folder."""
    for member in tar:
        relative = checked_path(member.name, shown)
        if member.isdir():
            continue
        if not member.isfile():
            raise SourceError(
                f"{shown}: {member.name} is a link or special file; only regular files are read"
            )
        yield relative, member


def bounded_size(
    member: tarfile.TarInfo, relative: PurePosixPath, max_bytes: int, total: int, shown: str
) -> int:
    """total plus the member's size, checked against max_bytes and MAX_SOURCE_BYTES before
    the member is read (a small compressed tar can hold a huge member)."""
    if member.size > max_bytes:
        raise SourceError(f"{shown}: {relative} is {too_large(member.size)}")
    total += member.size
    if total > MAX_SOURCE_BYTES:
        raise SourceError(f"{shown}: its files add up to more than {MAX_SOURCE_BYTES:,} bytes")
    return total


def refuse_other_archive(names: set[str], spec: DatasetSpec, shown: str) -> None:
    """The official archive of the other CIFAR would otherwise read as a bad image folder."""
    for other in DATASETS.values():
        if other is not spec and other.archive_folder in names:
            raise SourceError(
                f"{shown} is the official {other.name} archive, not {spec.name}; "
                f"pass --dataset {other.name}"
            )


def load_source(source: Path, spec: DatasetSpec, shown: str, work_dir: Path) -> Samples:
    if source.is_dir():
        if source.name == spec.archive_folder or (source / spec.archive_folder).is_dir():
            return load_official(source, spec, shown)
        refuse_other_archive({source.name, *(p.name for p in source.iterdir())}, spec, shown)
        return load_image_folder(folder_files(source, shown), spec, shown)
    try:
        with tarfile.open(source) as tar:
            files: dict[PurePosixPath, Path | bytes] = {}
            total = 0
            for relative, member in tar_members(tar, shown):
                if spec.archive_folder in relative.parts:
                    return extract_official(source, spec, shown, work_dir)
                refuse_other_archive(set(relative.parts), spec, shown)
                if visible(relative):
                    total = bounded_size(member, relative, MAX_IMAGE_BYTES, total, shown)
                    files[relative] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise SourceError(f"{shown} is not a readable tar archive ({one_line(error)})") from None
    return load_image_folder(files, spec, shown)


def extract_official(source: Path, spec: DatasetSpec, shown: str, work_dir: Path) -> Samples:
    """Extract the official archive's folder, and nothing else, into the work folder."""
    extracted = work_dir / "source"
    try:
        with tarfile.open(source) as tar:
            total = 0
            for relative, member in tar_members(tar, shown):
                if spec.archive_folder in relative.parts:
                    total = bounded_size(member, relative, MAX_ARCHIVE_FILE_BYTES, total, shown)
                    # The "data" filter checks once more that nothing lands outside extracted.
                    tar.extract(member, extracted, filter="data")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise SourceError(f"{shown}: cannot extract ({one_line(error)})") from None
    folders = sorted(extracted.rglob(spec.archive_folder))
    if not folders:
        raise SourceError(f"{shown} has no {spec.archive_folder}/ folder")
    return load_official(folders[0], spec, shown)


def download_official(spec: DatasetSpec, out: Path, work_dir: Path) -> Samples:
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    downloads = out / "downloads"
    archive = downloads / spec.filename
    try:
        download_and_extract_archive(
            spec.url, str(downloads), str(work_dir / "source"), spec.filename, spec.md5
        )
    except Exception as error:
        # torchvision writes straight to the final name, so a broken download leaves a part.
        if archive.exists() and not check_integrity(str(archive), spec.md5):
            archive.unlink()
        with contextlib.suppress(OSError):
            downloads.rmdir()
        raise SourceError(
            f"cannot download {spec.url} ({one_line(error)}); without internet, "
            f"pass --source PATH ({spec.filename}, {spec.archive_folder}/, "
            "or an image-folder tree or tarball)"
        ) from None
    return load_official(work_dir / "source" / spec.archive_folder, spec, spec.url)


def split_train_valid(
    labels: list[int], spec: DatasetSpec, seed: int
) -> tuple[list[int], list[int]]:
    """Stratified split: per class, a seeded random part of its images becomes valid.

    A source smaller than the official set (a subset, or synthetic test data) keeps the
    official valid fraction of every class.
    """
    rng = np.random.default_rng(seed)
    by_class: list[list[int]] = [[] for _ in range(spec.num_classes)]
    for index, label in enumerate(labels):
        by_class[label].append(index)
    valid: list[int] = []
    for class_name, indices in zip(spec.classes, by_class, strict=True):
        if len(indices) < 2:
            raise SourceError(f"class {class_name} has {len(indices)} training image(s), need 2")
        wanted = round(len(indices) * spec.valid_per_class / spec.train_per_class)
        count = min(max(wanted, 1), len(indices) - 1)
        valid.extend(indices[i] for i in rng.permutation(len(indices))[:count])
    valid_set = set(valid)
    return [i for i in range(len(labels)) if i not in valid_set], sorted(valid)


def write_dataset(
    samples: Samples, spec: DatasetSpec, seed: int, resize: bool, dataset_dir: Path
) -> dict[str, dict[str, int]]:
    """Write every image as PNG and return the manifests (nothing written to them yet)."""
    train_labels = [label for _, _, label in samples.train]
    train_indices, valid_indices = split_train_valid(train_labels, spec, seed)
    parts = {
        "train": [(i, samples.train[i]) for i in train_indices],
        "valid": [(i, samples.train[i]) for i in valid_indices],
        "test": list(enumerate(samples.test)),
    }
    width = max(5, len(str(max(len(samples.train), len(samples.test)))))
    manifests: dict[str, dict[str, int]] = {}
    tasks: list[ImageTask] = []
    for split, entries in parts.items():
        manifests[split] = {}
        for class_name in spec.classes:
            (dataset_dir / "images" / split / class_name).mkdir(parents=True)
        for index, (source, name, label) in entries:
            relative = f"images/{split}/{spec.classes[label]}/{index:0{width}d}.png"
            manifests[split][relative] = label
            tasks.append((source, name, str(dataset_dir / relative), resize))
    processes = min(os.cpu_count() or 1, max(1, len(tasks) // 2000))
    chunksize = max(1, len(tasks) // (processes * 8))
    with multiprocessing.Pool(
        processes, initializer=worker_signals, initargs=(os.getpid(),)
    ) as pool:
        written = pool.imap(encode_png, tasks, chunksize=chunksize)
        for error in tqdm(
            written, total=len(tasks), desc="writing PNGs", unit="image", disable=None
        ):
            if error is not None:
                raise SourceError(error)
    return manifests


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=0) + "\n")


def prepare(
    spec: DatasetSpec, source: Path | None, out: Path, seed: int, resize: bool
) -> Path | None:
    """Make <out>/<name>/ from source; None when it was already in place."""
    shown = str(source) if source is not None else spec.url
    if source is not None:
        try:
            mode = source.stat().st_mode
        except FileNotFoundError:
            raise SourceError(f"source not found: {source}") from None
        except OSError as error:
            raise SourceError(f"{source}: cannot read ({one_line(error)})") from None
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise SourceError(f"{source}: not a file or folder (a FIFO or device is no source)")
    dataset_dir = out / spec.name
    stamp = {
        "format": STAMP_FORMAT,
        "dataset": spec.name,
        "source": source_fingerprint(source, spec),
        "seed": seed,
        "resize": resize,
    }
    in_the_way = file_in_the_way(out)
    if in_the_way is not None:
        raise SourceError(f"--out {out}: {in_the_way} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with claim(out, spec):
        if is_prepared(dataset_dir, stamp):
            return None
        # Leftovers of runs that died before they could clean up: a live run holds the claim.
        for leftover in out.glob(f".{spec.name}.partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return write_prepared(spec, source, shown, out, seed, resize, stamp)


@contextlib.contextmanager
def claim(out: Path, spec: DatasetSpec) -> Iterator[None]:
    """Holds the lock <out>/.<name>.lock for the run (removed when done), or refuses at once:
    a held lock always means a live run, since the kernel releases it when its process dies."""
    lock = FileLock(out / f".{spec.name}.lock", remove=True)
    if not lock.acquire():
        raise SourceError(
            f"{out / spec.name}: another download_data.py run is preparing it "
            f"(it holds {lock.path}); wait for it to finish"
        )
    try:
        yield
    finally:
        lock.release()


def write_prepared(
    spec: DatasetSpec,
    source: Path | None,
    shown: str,
    out: Path,
    seed: int,
    resize: bool,
    stamp: dict,
) -> Path:
    """Read the source and write <out>/<name>/ through a work folder renamed into place."""
    dataset_dir = out / spec.name
    work_dir = Path(tempfile.mkdtemp(prefix=f".{spec.name}.partial-", dir=out))
    try:
        print(f"reading {shown}", flush=True)
        if source is None:
            samples = download_official(spec, out, work_dir)
        else:
            samples = load_source(source, spec, shown, work_dir)
        total = len(samples.train) + len(samples.test)
        print(f"writing {total:,} PNG images", flush=True)
        new_dir = work_dir / spec.name
        manifests = write_dataset(samples, spec, seed, resize, new_dir)
        write_json(new_dir / CLASSES_FILE, list(spec.classes))
        written = [CLASSES_FILE]
        for split, manifest in manifests.items():
            path = manifest_path(new_dir, split)
            write_json(path, manifest)
            written.append(path.name)
        sha256 = {name: sha256_file(new_dir / name) for name in written}
        write_json(new_dir / STAMP_FILE, {"made_with": stamp, "from": shown, "sha256": sha256})
        with stops_deferred() as stops:
            if dataset_dir.exists():
                dataset_dir.rename(work_dir / "previous")
            new_dir.rename(dataset_dir)
            shutil.rmtree(work_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # what a failed or stopped run wrote
    if stops:
        raise Stopped(stops[0], f"{dataset_dir} was complete and is in place")
    return dataset_dir


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="download_data.py",
        description="Prepare CIFAR-10 or CIFAR-100 as PNG images and train/valid/test JSON "
        "manifests.",
    )
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default=CIFAR10.name,
        help="cifar10, or cifar100 with its 100 fine labels (default: cifar10)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        help="a local copy instead of downloading: cifar-10-python.tar.gz, cifar-10-batches-py/ "
        "(cifar-100-python.tar.gz, cifar-100-python/ for cifar100), or an image-folder tree "
        "train/<class>/*, test/<class>/* (PNG or JPEG) or a tarball of one",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DATA_ROOT,
        help="folder that receives the dataset folder cifar10/ or cifar100/ "
        "(default: this script's folder)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the train/valid split (default: 0)"
    )
    parser.add_argument(
        "--resize",
        action="store_true",
        help="resize images that are not 32x32 (shorter side to 32, then centre crop) "
        "instead of stopping with an error",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be between 0 and {MAX_SEED:,}")
    return args


def main(argv: list[str] | None = None) -> int:
    make_output_printable()
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_stopped)
    spec = DATASETS[args.dataset]
    started = time.perf_counter()
    try:
        dataset_dir = prepare(spec, args.source, args.out, args.seed, args.resize)
    except SourceError as error:
        print(f"download_data.py: error: {printable(error)}", file=sys.stderr)
        return EXIT_BAD_SOURCE
    except OSError as error:
        print(f"download_data.py: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("download_data.py: error: interrupted; nothing was changed", file=sys.stderr)
        return 130
    except Stopped as stopped:
        name = signal.Signals(stopped.signum).name
        print(f"download_data.py: error: stopped by {name}; {stopped.outcome}", file=sys.stderr)
        return 128 + stopped.signum
    if dataset_dir is None:
        print(
            f"{args.out / spec.name} is already prepared from this source with seed {args.seed}: "
            "nothing to do"
        )
        return 0
    counts = ", ".join(
        f"{len(json.loads(manifest_path(dataset_dir, split).read_text())):,} {split}"
        for split in SPLITS
    )
    print(f"prepared {dataset_dir}: {counts} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
