"""Classify your own images with a trained checkpoint: the top-5 classes of every image.

    python predict.py runs/fishnet99-seed/best.pt cat.jpg photos/
    python predict.py runs/fishnet99-seed/best.pt photos/ --json

Any image PIL reads (PNG, JPEG, ...; any size and mode) is converted to RGB, brought to the
checkpoint's input size (32x32 for CIFAR: shorter side to 32, then the centre, as
download_data.py --resize does; 224x224 for an ImageNet checkpoint of tools.convert: shorter
side to 256, then the centre, as its authors evaluated it) and normalised with the statistics
the run trained with. Folders are searched recursively for image files and processed in
batches. A file that cannot be read is reported and skipped; the exit status is then 1. A bad
command or checkpoint stops at once with one line and exit status 2. File and class names are
printed as plain text on one line (:func:`utils.printable`), whatever characters they hold.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from dataloader.images import IMAGE_SUFFIXES, ImageError, read_image_file
from training.checkpoint import load_ready_model
from training.cli import HelpFormatter, positive_int, program_name, run_cli
from training.distributed import resolve_device
from utils import out_of_gpu_memory, printable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Predict the classes of images with a checkpoint written by train.py.",
        prog="predict.py",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("checkpoint", type=Path, help="a last.pt or best.pt written by train.py")
    add("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders")
    add("--top-k", type=positive_int, default=5, help="classes to report per image")
    add("--batch-size", type=positive_int, default=256)
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add("--json", action="store_true", help="print the predictions as JSON")
    return parser.parse_args(argv)


def image_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def expand(inputs: list[Path]) -> list[Path]:
    """Files as given, folders replaced by the image files below them; a folder without any
    stays, to be reported."""
    paths = []
    for path in inputs:
        found = image_files(path) if path.is_dir() else []
        paths.extend(found or [path])
    return paths


def read(path: Path, size: int) -> Tensor | str:
    """The image as the model's size x size input, or why it cannot be had."""
    if path.is_dir():
        return f"{path}: a folder without image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
    try:
        return read_image_file(path, size)
    except ImageError as error:
        return str(error)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    classifier = load_ready_model(args.checkpoint, device)
    top_k = min(args.top_k, len(classifier.classes))
    program = program_name()
    paths = expand(args.images)
    progress = tqdm(
        total=len(paths),
        unit="image",
        leave=False,
        dynamic_ncols=True,
        disable=not any(path.is_dir() for path in args.images),
    )
    predictions, failures = [], 0
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start : start + args.batch_size]
        images = [read(path, classifier.input_size) for path in chunk]
        readable = [image for image in images if isinstance(image, Tensor)]
        if readable:
            try:
                probabilities = classifier.probabilities(torch.stack(readable))
            except torch.cuda.OutOfMemoryError:
                raise out_of_gpu_memory(args.batch_size) from None
            values, labels = probabilities.topk(top_k, dim=1)
            tops = iter(zip(values.tolist(), labels.tolist(), strict=True))
        for path, image in zip(chunk, images, strict=True):
            if isinstance(image, str):
                failures += 1
                predictions.append({"image": str(path), "error": image})
                tqdm.write(f"{program}: skipped {printable(image)}", file=sys.stderr)
                continue
            top = [
                {"class": classifier.classes[label], "label": label, "probability": probability}
                for probability, label in zip(*next(tops), strict=True)
            ]
            predictions.append({"image": str(path), "top": top})
            if not args.json:
                listed = ", ".join(
                    f"{printable(t['class'])} {100 * t['probability']:.1f} %" for t in top
                )
                tqdm.write(f"{printable(path)}: {listed}")
        progress.update(len(chunk))
    progress.close()
    if args.json:
        print(json.dumps(predictions, indent=1))
    if failures:
        predicted = len(paths) - failures
        others = f"; the other {predicted} were predicted" if predicted else ""
        print(
            f"{program}: error: {failures} of {len(paths)} inputs could not be read "
            f"(named above){others}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
