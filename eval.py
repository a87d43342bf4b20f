"""Evaluate a checkpoint: top-1 and top-5 per split, per-class accuracy, confusion matrices.

python eval.py runs/fishnet99-seed/best.pt                       # valid and test
python eval.py runs/fishnet99-seed/best.pt --split train valid test --json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dataloader import DeviceLoader, load_split, manifest_sha256, read_classes
from dataloader.augment import TEST_AUGMENTATIONS, check_test_augment
from training.checkpoint import load_checkpoint, load_ready_model
from training.cli import (
    HelpFormatter,
    at_most,
    check_output_folder,
    positive_int,
    program_name,
    run_cli,
)
from training.distributed import resolve_device
from training.metrics import METRICS, Metric, evaluate, per_class_accuracy
from training.options import DEFAULT_EVAL_BATCH_SIZE, MAX_BATCH_SIZE
from training.plots import plot_confusion
from training.precision import AMP_CHOICES
from utils import UserError, markdown_table, one_line, printable

SPLITS = ("train", "valid", "test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eval.py",
        description="Evaluate a checkpoint written by train.py.",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("checkpoint", type=Path, help="a last.pt or best.pt written by train.py")
    add(
        "--data",
        type=Path,
        default=None,
        help="dataset folder (none given: the one the run trained on, by its absolute path)",
    )
    add(
        "--split",
        nargs="+",
        choices=SPLITS,
        default=["valid", "test"],
        help="splits to evaluate (train: 40,000 images, minutes on a CPU)",
    )
    add(
        "--batch-size",
        type=at_most(positive_int, MAX_BATCH_SIZE),
        default=DEFAULT_EVAL_BATCH_SIZE,
        help="images per batch",
    )
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add(
        "--amp",
        choices=AMP_CHOICES,
        default=None,
        help="precision (none given: the run's on CUDA, fp32 on a CPU)",
    )
    add(
        "--test-augment",
        nargs="+",
        default=[],
        choices=TEST_AUGMENTATIONS,
        metavar="NAME",
        help="also report these test-time augmentations, each beside the plain scores: "
        f"{', '.join(TEST_AUGMENTATIONS)} (docs/evaluation.md; default: none)",
    )
    # The flag before the table of test-time augmentations, refused with today's spelling.
    add("--flip", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add("--json", action="store_true", help="print top-1 and top-5 per split as JSON")
    add(
        "--out",
        type=Path,
        default=None,
        help="folder for confusion_SPLIT.png (none given: the checkpoint's folder)",
    )
    args = parser.parse_args(argv)
    if "flip" in args:
        parser.error("--flip: give --test-augment flip instead")
    try:
        check_test_augment(args.test_augment)
    except ValueError as error:
        parser.error(f"--test-augment: {error}")
    return args


def dataset_folder(args: argparse.Namespace, checkpoint: dict) -> Path:
    """--data, else the folder the run trained on: checkpoints record its absolute path
    (older ones the path as given to train.py, taken from the current folder)."""
    if args.data is not None:
        return args.data
    recorded = checkpoint.get("dataset", {}).get("path") or checkpoint["args"].get("data")
    if not isinstance(recorded, str):
        raise UserError(f"{args.checkpoint}: no dataset folder recorded; pass --data")
    return Path(recorded)


def check_same_data(args, checkpoint: dict, data_dir: Path, split: str) -> None:
    """Refuses a split whose manifest is not the one the run recorded (or, for valid and
    test, is its training split): its accuracy would not be what the name says."""
    dataset = checkpoint.get("dataset", {})
    recorded = dict(dataset.get("sha256") or {"train": dataset.get("train_sha256")})
    digest = manifest_sha256(data_dir, split)
    wrong = (split in recorded and recorded[split] not in (None, digest)) or (
        split != "train" and digest == recorded.get("train")
    )
    if not wrong:
        return
    message = (
        f"{data_dir}: its {split} split is not the one {args.checkpoint} was trained and "
        "scored with"
    )
    if args.data is None:
        raise UserError(message + "; pass --data to evaluate on this data anyway")
    print(f"{program_name()}: warning: {message}", file=sys.stderr)


def evaluate_splits(args, ready, data_dir: Path) -> dict[str, dict]:
    results = {}
    for split in args.split:
        check_same_data(args, ready.checkpoint, data_dir, split)
        images, labels = load_split(data_dir, split)
        stats = ready.normalization
        loader = DeviceLoader(
            images,
            labels,
            args.batch_size,
            mean=stats["mean"],
            std=stats["std"],
            train=False,
            device=ready.device,
            channels_last=ready.channels_last,
        )
        started = time.perf_counter()
        results[split] = evaluate(
            ready.model,
            loader,
            len(ready.classes),
            ready.device,
            ready.amp,
            test_augment=args.test_augment,
            desc=f"{split} ({len(labels):,} images)",
        )
        results[split]["seconds"] = time.perf_counter() - started
    return results


# The metrics in percent: eval.py's table shows them first, and --json holds them only.
ACCURACIES = [metric for metric in METRICS if metric.unit == "%"]


def report(args, checkpoint: dict, classes: list[str], results: dict[str, dict]) -> None:
    if args.json:
        keys = [m.key for m in ACCURACIES] + [
            f"{name}_{m.key}" for name in args.test_augment for m in ACCURACIES if m.test_augmented
        ]
        print(
            json.dumps({s: {k: r[k] for k in keys if k in r} for s, r in results.items()}, indent=1)
        )
        return
    model, epoch = checkpoint["model"]["name"], checkpoint["epoch"]
    print(f"{printable(args.checkpoint)}: {model}, epoch {epoch}\n")
    # The accuracies first, then the loss, then the time; the test-time augmented scores last.
    columns = [*ACCURACIES, *(metric for metric in METRICS if metric not in ACCURACIES)]
    augmented = [
        (name, metric) for name in args.test_augment for metric in columns if metric.test_augmented
    ]
    header = ["split", "images", *(_heading(m) for m in columns), "seconds"]
    header += [f"{name} {_heading(m)}" for name, m in augmented]
    rows = []
    for split, r in results.items():
        row = [
            split,
            f"{r['samples']:,}",
            *(f"{r[m.key]:.{m.report_digits}f}" for m in columns),
            f"{r['seconds']:.1f}",
        ]
        rows.append(row + [f"{r[f'{name}_{m.key}']:.{m.report_digits}f}" for name, m in augmented])
    print(markdown_table(header, rows))
    per_class = {s: per_class_accuracy(r["confusion"]) for s, r in results.items()}
    rows = [
        [printable(name)] + [f"{per_class[s][i]:.1f}" for s in results]
        for i, name in enumerate(classes)
    ]
    print("\nper-class top-1 (%):\n")
    print(markdown_table(["class", *results], rows))


def _heading(metric: Metric) -> str:
    """A metric's column heading: "top-1 (%)", "loss"."""
    return f"{metric.label} ({metric.unit})" if metric.unit else metric.label


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint)
    data_dir = dataset_folder(args, checkpoint)
    classes = read_classes(data_dir)
    if classes != checkpoint["classes"]:
        raise UserError(f"{args.checkpoint} was trained on other classes than {data_dir} holds")
    out = args.out or args.checkpoint.parent
    check_output_folder(out, "--out")
    ready = load_ready_model(args.checkpoint, device, args.amp, checkpoint)
    results = evaluate_splits(args, ready, data_dir)
    report(args, checkpoint, classes, results)
    # Results first, files second: an unwritable folder costs the plots, not the numbers.
    try:
        for split, result in results.items():
            title = f"{checkpoint['model']['name']}, {split} ({result['top1']:.2f} % top-1)"
            plot_confusion(result["confusion"], classes, title, out / f"confusion_{split}.png")
    except OSError as error:
        raise UserError(
            f"--out {out}: cannot write the confusion matrices ({one_line(error)})"
        ) from None
    if not args.json:
        print(
            f"\nconfusion matrices: {', '.join(str(out / f'confusion_{s}.png') for s in results)}"
        )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
