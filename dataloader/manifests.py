"""The prepared dataset's files as data/download_data.py writes them: classes.json and one
manifest per split, mapping image paths to labels.

Nothing here needs torch, so that data preparation starts without it (about 2 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
import stat
from pathlib import Path, PurePosixPath

from utils import UserError, one_line, read_regular_file

SPLITS = ("train", "valid", "test")
# Where data/download_data.py puts the datasets it prepares, beside the scripts, and so where
# every command looks for them by default, from whatever folder it is run.
DATA_ROOT = Path(__file__).resolve().parents[1] / "data"
DEFAULT_DATA = DATA_ROOT / "cifar10"
CLASSES_FILE = "classes.json"

# Bounds checked before a file is read, far above what download_data.py writes (a CIFAR-10
# training manifest is 1.5 MB, an image 3 KB) and far below what would exhaust memory.
MAX_JSON_BYTES = 64 << 20
MAX_IMAGE_BYTES = 64 << 20
MAX_LABEL_DIGITS = 20


class DataError(UserError):
    """Bad data input; the message is one line naming the file (and the manifest entry)."""


def manifest_path(data_dir: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(data_dir) / f"{split}_img2labels.json"


def manifest_sha256(data_dir: str | os.PathLike, split: str) -> str:
    """Identifies a split: checkpoints record it, so --resume and eval.py can tell whether
    they are given the data the run was trained on."""
    return hashlib.sha256(_read_data_file(manifest_path(data_dir, split))).hexdigest()


class _JSONBeyondLimits(ValueError):
    """Well-formed JSON that no manifest or classes.json holds."""


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json keeps the last of repeated keys, which would silently drop manifest entries.
    mapping: dict[str, object] = {}
    for key, value in pairs:
        if key in mapping:
            raise _JSONBeyondLimits(f"entry {reprlib.repr(key)} appears more than once")
        mapping[key] = value
    return mapping


def _small_int(digits: str) -> int:
    # Checked before int() would run into Python's limit on the digits it converts.
    if len(digits.lstrip("-")) > MAX_LABEL_DIGITS:
        raise _JSONBeyondLimits(f"a number of {len(digits):,} digits")
    return int(digits)


def _read_data_file(path: Path) -> bytes:
    """A manifest's or classes.json's bytes; a DataError when it cannot be read."""
    try:
        return read_regular_file(path, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise DataError(
            f"{Path(path).absolute()}: not found (prepare the data with python "
            "data/download_data.py)"
        ) from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read ({one_line(error)})") from None


def _read_json(path: Path) -> object:
    try:
        text = _read_data_file(path).decode()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: cannot read ({one_line(error)})") from None
    try:
        return json.loads(text, object_pairs_hook=_object_without_repeats, parse_int=_small_int)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    except _JSONBeyondLimits as error:
        raise DataError(f"{path}: {error}") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None


def read_classes(data_dir: str | os.PathLike) -> list[str]:
    """The class names of a prepared dataset, in label order (its classes.json)."""
    path = Path(data_dir) / CLASSES_FILE
    classes = _read_json(path)
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(name, str) and name for name in classes)
    ):
        raise DataError(f"{path}: expected a non-empty JSON list of class names")
    if len(set(classes)) != len(classes):
        raise DataError(f"{path}: class names repeat")
    return classes


def read_manifest(path: str | os.PathLike, num_classes: int | None = None) -> list[tuple[str, int]]:
    """The (image path, label) entries of a manifest, image paths joined to its folder.

    Labels must lie in 0..num_classes-1; num_classes defaults to the length of the
    classes.json beside the manifest. Every image must be a regular file inside the
    manifest's folder (after symbolic links are followed), named by one entry only.
    """
    path = Path(path)
    mapping = _read_json(path)
    if not isinstance(mapping, dict):
        raise DataError(
            f"{path}: expected a JSON object mapping image path to label index, "
            f"got {type(mapping).__name__}"
        )
    if not mapping:
        raise DataError(f"{path}: no entries")
    if num_classes is None:
        num_classes = len(read_classes(path.parent))
    folder = Path(os.path.realpath(path.parent))
    entry_of: dict[str, str] = {}
    entries = []
    for image, label in mapping.items():
        entry = f"{path}: entry {reprlib.repr(image)}"
        if not isinstance(label, int) or isinstance(label, bool):
            raise DataError(f"{entry}: label must be an integer, got {reprlib.repr(label)}")
        if not 0 <= label < num_classes:
            raise DataError(f"{entry}: label {label} out of range 0..{num_classes - 1}")
        try:
            os.fsencode(image)
        except UnicodeEncodeError:  # JSON can spell characters no file name holds
            raise DataError(f"{entry}: not a file name this system can hold") from None
        relative = PurePosixPath(image)
        if not relative.parts or relative.is_absolute() or ".." in relative.parts:
            raise DataError(
                f"{entry}: image paths must be relative to the manifest's folder, without '..'"
            )
        image_path = path.parent / relative
        real_path = os.path.realpath(image_path)
        if not Path(real_path).is_relative_to(folder):
            raise DataError(f"{entry}: image {image_path} leads outside {path.parent}")
        try:
            status = os.stat(real_path)
        except FileNotFoundError:
            raise DataError(f"{entry}: image {image_path} not found") from None
        except OSError as error:
            raise DataError(f"{entry}: cannot read image ({error.strerror})") from None
        if not stat.S_ISREG(status.st_mode):
            raise DataError(f"{entry}: image {image_path} is not a regular file")
        if real_path in entry_of:
            raise DataError(f"{entry}: the same image as entry {reprlib.repr(entry_of[real_path])}")
        entry_of[real_path] = image
        entries.append((str(image_path), label))
    return entries
