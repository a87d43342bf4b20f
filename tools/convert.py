"""Convert a FishNet checkpoint of the authors' release (kevin-ssy/FishNet) to this repository's.

    python -m tools.convert fishnet99_ckpt.tar fishnet99.pt [--model fishnet99]

The output is a checkpoint as train.py writes it (ImageNet stem, width 1, their number of
classes), which eval.py and predict.py read. The renaming is models.convert's.
"""

import argparse
import sys
from pathlib import Path

import torch

from models.convert import convert_state_dict, infer_model, unwrap
from models.fishnet import CONFIGS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from training.checkpoint import save_checkpoint

    try:
        checkpoint = torch.load(args.authors, map_location="cpu", weights_only=True)
        state = unwrap(checkpoint)
        name = args.model or infer_model(state)
        state_dict, num_classes = convert_state_dict(state, name)
    except (OSError, RuntimeError, ValueError, AttributeError) as error:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"python -m tools.convert: error: {args.authors}: {text}", file=sys.stderr)
        sys.exit(2)
    save_checkpoint(
        {
            "model": {
                "name": name,
                "kwargs": {"num_classes": num_classes, "stem": "imagenet", "width": 1.0},
            },
            "state_dict": state_dict,
            "classes": [f"class {i}" for i in range(num_classes)],
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            # What eval.py and predict.py read of a training run: its numerics, no dataset.
            "args": {"amp": False, "channels_last": False, "data": None, "model": name},
            "epoch": int(checkpoint.get("epoch", 0)),
            "history": [],
            "source": str(args.authors),
        },
        args.out,
    )
    print(f"{args.out}: {name}, {num_classes} classes, from {args.authors}")


if __name__ == "__main__":
    main()
