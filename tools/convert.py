"""Convert a FishNet checkpoint of the authors' release (kevin-ssy/FishNet) to this repository's.

    python -m tools.convert fishnet99_ckpt.tar fishnet99.pt [--model fishnet99] [--overwrite]

The output is a checkpoint as train.py writes it (ImageNet stem, width 1, their number of
classes, ImageNet's class names where there are 1000), which eval.py and predict.py read.
The renaming is models.convert's. The output is checked before their file is read: an
existing file is replaced only with --overwrite, and never their file itself. Their file is
read within the bounds of training.checkpoint.read_torch_file, and every part of it used is
checked first; anything wrong is one line and exit status 2.
"""

import argparse
import os
import reprlib
from pathlib import Path

from models.convert import ConversionError, convert_state_dict, infer_model, unwrap
from models.fishnet import CONFIGS
from training.checkpoint import read_torch_file, save_checkpoint
from training.cli import check_output_file, run_cli
from utils import UserError, printable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.convert",
        description="Convert a FishNet ImageNet checkpoint of the authors' release "
        "(kevin-ssy/FishNet) into a checkpoint of this repository for eval.py and predict.py.",
    )
    parser.add_argument("authors", type=Path, help="their checkpoint, e.g. fishnet99_ckpt.tar")
    parser.add_argument("out", type=Path, help="the checkpoint to write, e.g. fishnet99.pt")
    parser.add_argument(
        "--model", choices=list(CONFIGS), help="the FishNet it holds (default: inferred)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the output if it exists already"
    )
    return parser.parse_args(argv)


def check_output(out: Path, authors: Path, overwrite: bool) -> None:
    """Refuses, before their file is read, an output that cannot be written or that would
    replace a file unasked; their file itself is never replaced."""
    check_output_file(out, "output")
    if not out.exists():
        return
    if authors.exists() and os.path.samefile(out, authors):
        raise UserError(f"output {out}: is the file to convert; name another output")
    if not overwrite:
        raise UserError(f"output {out}: exists already; pass --overwrite to replace it")


def checked_epoch(checkpoint: object) -> int:
    """Their checkpoint's ``epoch``: a whole number of at least 0, or 0 where it has none."""
    epoch = checkpoint.get("epoch", 0) if isinstance(checkpoint, dict) else 0
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ConversionError(
            f"'epoch' must be a whole number of at least 0, not {reprlib.repr(epoch)}"
        )
    return epoch


def class_names(num_classes: int) -> list[str]:
    """ImageNet's class names in label order for 1000 classes (torchvision ships them with
    its weights' metadata; their release was trained on ImageNet's folders in the same
    sorted order), ``class N`` for any other number."""
    if num_classes != IMAGENET_CLASSES:
        return [f"class {label}" for label in range(num_classes)]
    from torchvision.models import ResNet50_Weights  # slow to import; only this needs it

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_output(args.out, args.authors, args.overwrite)
    checkpoint = read_torch_file(args.authors)
    try:
        state = unwrap(checkpoint)
        epoch = checked_epoch(checkpoint)
        name = args.model or infer_model(state)
        state_dict, num_classes = convert_state_dict(state, name)
    except ConversionError as error:
        raise UserError(f"{args.authors}: {error}") from None
    save_checkpoint(
        {
            "model": {
                "name": name,
                "kwargs": {"num_classes": num_classes, "stem": "imagenet", "width": 1.0},
            },
            "state_dict": state_dict,
            "classes": class_names(num_classes),
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            # What eval.py and predict.py read of a training run: its numerics, no dataset.
            "args": {"amp": False, "channels_last": False, "data": None, "model": name},
            "epoch": epoch,
            "history": [],
            "source": str(args.authors),
        },
        args.out,
    )
    print(f"{printable(args.out)}: {name}, {num_classes} classes, from {printable(args.authors)}")


if __name__ == "__main__":
    run_cli(main)
