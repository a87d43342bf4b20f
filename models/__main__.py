"""``python -m models``: parameters and multiply-accumulates of every registered model."""

import argparse

from . import MODELS, build_model, count_macs, count_parameters


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}",
        description="Print a Markdown table of the parameters and multiply-accumulates of "
        "every registered model, with the CIFAR stem (10 classes, 32x32) and, for FishNet, "
        "the ImageNet stem (1000 classes, 224x224).",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    parse_args(argv)
    print(
        "| model | params (CIFAR, 10 classes) | MACs @ 32x32 "
        "| params (ImageNet, 1000 classes) | MACs @ 224x224 |"
    )
    print("|---|---:|---:|---:|---:|")
    for name in MODELS:
        cifar = build_model(name, num_classes=10, stem="cifar")
        row = [name, f"{count_parameters(cifar):,}", f"{count_macs(cifar, 32) / 1e6:.1f} M"]
        if name.startswith("fishnet"):
            imagenet = build_model(name, num_classes=1000, stem="imagenet")
            row += [f"{count_parameters(imagenet):,}", f"{count_macs(imagenet, 224) / 1e6:.1f} M"]
        else:
            row += ["-", "-"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
