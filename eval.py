"""Evaluate a checkpoint: top-1 and top-5 per split, per-class accuracy, confusion matrices.

python eval.py runs/fishnet99/best.pt
python eval.py runs/fishnet99/best.pt --split test --json
"""

import argparse
import json
from pathlib import Path

import torch

from dataloader import DeviceLoader, load_split, read_classes
from utils import (
    UserError,
    evaluate,
    load_checkpoint,
    model_from_checkpoint,
    per_class_accuracy,
    plot_confusion,
    positive_int,
    resolve_device,
    run_cli,
)

SPLITS = ("train", "valid", "test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate a checkpoint written by train.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("checkpoint", type=Path, help="a last.pt or best.pt written by train.py")
    add("--data", default=None, help="dataset folder (default: the one the run trained on)")
    add("--split", nargs="+", choices=SPLITS, default=list(SPLITS))
    add("--batch-size", type=positive_int, default=256)
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="bf16 autocast (default: as in training, on CUDA only)",
    )
    add("--json", action="store_true", help="print top-1 and top-5 per split as JSON")
    add(
        "--out", type=Path, default=None, help="folder for confusion_SPLIT.png (default: beside it)"
    )
    return parser.parse_args(argv)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint)
    trained = checkpoint["args"]
    # The training run's numerics by default, so that eval reproduces its logged accuracy.
    amp = trained["amp"] and device.type == "cuda" if args.amp is None else args.amp
    channels_last = trained["channels_last"]
    model = model_from_checkpoint(checkpoint, args.checkpoint).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    data_dir = args.data or trained["data"]
    classes = read_classes(data_dir)
    if classes != checkpoint["classes"]:
        raise UserError(f"{args.checkpoint} was trained on other classes than {data_dir} holds")
    out = args.out or args.checkpoint.parent

    results = {}
    for split in args.split:
        images, labels = load_split(data_dir, split)
        loader = DeviceLoader(
            images,
            labels,
            args.batch_size,
            mean=checkpoint["normalization"]["mean"],
            std=checkpoint["normalization"]["std"],
            train=False,
            device=device,
            channels_last=channels_last,
        )
        results[split] = evaluate(model, loader, len(classes), device, amp)
        plot_confusion(
            results[split]["confusion"],
            classes,
            f"{checkpoint['model']['name']}, {split} ({results[split]['top1']:.2f} % top-1)",
            out / f"confusion_{split}.png",
        )

    if args.json:
        summary = {s: {"top1": r["top1"], "top5": r["top5"]} for s, r in results.items()}
        print(json.dumps(summary, indent=1))
        return
    epoch = checkpoint["epoch"]
    print(f"{args.checkpoint}: {checkpoint['model']['name']}, epoch {epoch}\n")
    rows = [
        [s, f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['loss']:.4f}"] for s, r in results.items()
    ]
    print(markdown_table(["split", "top-1 (%)", "top-5 (%)", "loss"], rows))
    per_class = {s: per_class_accuracy(r["confusion"]) for s, r in results.items()}
    rows = [[name] + [f"{per_class[s][i]:.1f}" for s in results] for i, name in enumerate(classes)]
    print("\nper-class top-1 (%):\n")
    print(markdown_table(["class", *results], rows))
    print(f"\nconfusion matrices: {', '.join(str(out / f'confusion_{s}.png') for s in results)}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
