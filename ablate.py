"""Ablations: train FishNet and variants of it with one recipe, then table and plot them.

    python ablate.py                                  # the baseline and every switch, preset fast
    python ablate.py --variants baseline bridge=none downsample=conv --epochs 30
    python ablate.py --variants baseline body-dilation=off,transfer=off --preset accuracy
    python ablate.py --variants baseline bridge=none --width 0.25 --epochs 2 --device cpu

A variant is ``baseline`` (the paper's network) or one or more switches joined by commas,
each ``name=value`` with the name of its train.py flag (downsample, upsample,
body-shortcut, body-dilation, transfer, bridge) and ``on``/``off`` for body-dilation and
transfer. Every other flag goes to train.py, so all variants train with the same recipe,
seed and number of epochs, each into OUT/VARIANT (a run already there is kept: pass
--resume to go on with the runs in OUT, or --overwrite to replace them). Each
variant's valid top-1 is the best epoch's, and its test top-1 that of the same checkpoint
(best.pt); its time is the run's wall-clock time, validation included. The markdown table
(--table), the bar plot of test top-1 (--plot) and OUT/ablation.json are rewritten after
every variant, so an interrupted ablation keeps the variants it finished.
"""

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import matplotlib
import torch

from dataloader import DeviceLoader, load_split
from models import SWITCHES, count_macs, count_parameters, switch_flags
from training.checkpoint import load_checkpoint, load_ready_model, refuse_existing_run
from training.cli import (
    Ended,
    check_output_file,
    check_output_folder,
    rerun_command,
    run_child,
    run_cli,
)
from training.distributed import resolve_device
from training.metrics import evaluate
from training.options import PRESETS
from training.options import parse_args as parse_train_args
from utils import atomic_write, markdown_table, write_text

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

BASELINE = "baseline"
ON_OFF = {"on": True, "off": False}


def variant_name(switches: dict[str, object]) -> str:
    """``baseline``, or ``key=value`` items joined by commas, as --variants takes them."""
    if not switches:
        return BASELINE
    items = []
    for key, value in switches.items():
        text = ("on" if value else "off") if isinstance(value, bool) else value
        items.append(f"{key.replace('_', '-')}={text}")
    return ",".join(items)


def parse_variant(text: str) -> dict[str, object]:
    """``bridge=none,transfer=off`` -> {"bridge": "none", "transfer": False}; ``baseline`` -> {}."""
    if text == BASELINE:
        return {}
    switches: dict[str, object] = {}
    for item in text.split(","):
        name, equals, value = item.partition("=")
        key = name.replace("-", "_")
        if not equals or key not in SWITCHES:
            names = ", ".join(k.replace("_", "-") for k in SWITCHES)
            raise argparse.ArgumentTypeError(
                f"{item!r} is not SWITCH=VALUE with a switch of: {names} (or use {BASELINE!r})"
            )
        if key in switches:
            raise argparse.ArgumentTypeError(f"{text!r} sets {name} twice")
        choices = SWITCHES[key]
        if isinstance(choices[0], bool):
            if value not in ON_OFF:
                raise argparse.ArgumentTypeError(f"{name} is 'on' or 'off', got {value!r}")
            switches[key] = ON_OFF[value]
        elif value in choices:
            switches[key] = value
        else:
            raise argparse.ArgumentTypeError(
                f"{name} is one of {', '.join(choices)}, got {value!r}"
            )
    return switches


def all_variants() -> list[dict[str, object]]:
    """The baseline, then each switch at each of its values other than the paper's."""
    return [{}] + [{key: value} for key, choices in SWITCHES.items() for value in choices[1:]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train FishNet's baseline and variants with one recipe; table and plot them.",
        epilog="Every other flag goes to train.py (python train.py --help lists them).",
        allow_abbrev=False,  # abbreviations of train.py's flags must reach train.py
    )
    add = parser.add_argument
    add(
        "--variants",
        nargs="+",
        type=parse_variant,
        default=None,
        metavar="VARIANT",
        help="baseline, or SWITCH=VALUE[,SWITCH=VALUE...] (default: the baseline and every "
        "switch at each of its other values, "
        f"{len(all_variants())} runs)",
    )
    add("--preset", default="fast", choices=PRESETS, help="train.py's recipe (default: fast)")
    add("--out", type=Path, default=Path("runs/ablate"), help="runs go to OUT/VARIANT")
    add("--table", type=Path, default=None, help="the markdown table (default: OUT/ablation.md)")
    add("--plot", type=Path, default=None, help="the bar plot (default: OUT/ablation.png)")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue the runs in OUT: finished variants are kept, a stopped one goes on, "
        "the others start",
    )
    existing.add_argument(
        "--overwrite", action="store_true", help="replace the runs already in OUT/VARIANT"
    )
    args, train_flags = parser.parse_known_args(argv)
    args.variants = args.variants or all_variants()
    names = [variant_name(v) for v in args.variants]
    if len(set(names)) != len(names):
        parser.error(f"--variants names a variant twice: {' '.join(names)}")
    # Every variant's train.py arguments and output folder, checked before the first run.
    args.runs = {}
    for name, switches in zip(names, args.variants, strict=True):
        flags = [flag for key, value in switches.items() for flag in switch_flags(key, value)]
        folder = args.out / name.replace("=", "-").replace(",", "+")
        argv = ["--preset", args.preset, *train_flags, *flags, "--out", str(folder)]
        run = parse_train_args(argv, passed_on_by="ablate.py")
        check_output_folder(folder, "--out")
        if args.overwrite:
            argv.append("--overwrite")
        elif args.resume and (folder / "last.pt").exists():
            argv.append("--resume")
        elif not args.resume:
            refuse_existing_run(folder)
        run.argv = argv
        set_elsewhere = [
            " ".join(switch_flags(key, getattr(run, key)))
            for key, choices in SWITCHES.items()
            if key not in switches and getattr(run, key) != choices[0]
        ]
        if set_elsewhere:
            parser.error(
                f"{', '.join(set_elsewhere)}: give switches as --variants, so that the "
                "baseline stays the paper's network"
            )
        args.runs[name] = (switches, run)
    args.train_flags = train_flags
    args.table = args.table or args.out / "ablation.md"
    args.plot = args.plot or args.out / "ablation.png"
    check_output_file(args.table, "--table", kind="text")
    check_output_file(args.plot, "--plot", kind="png")
    check_output_file(args.out / "ablation.json", "--out", kind="text")
    return args


def evaluate_run(run: argparse.Namespace, test_split: dict) -> dict:
    """Parameters, MACs, best valid top-1, test top-1 of best.pt and time of a finished run."""
    out = Path(run.out)
    last = load_checkpoint(out / "last.pt")
    best = load_checkpoint(out / "best.pt")
    history = last["history"]
    ready = load_ready_model(out / "best.pt", resolve_device(run.device), checkpoint=best)
    if "images" not in test_split:
        test_split["images"], test_split["labels"] = load_split(run.data, "test")
    loader = DeviceLoader(
        test_split["images"],
        test_split["labels"],
        run.batch_size,
        mean=best["normalization"]["mean"],
        std=best["normalization"]["std"],
        train=False,
        device=ready.device,
        channels_last=ready.channels_last,
    )
    test = evaluate(ready.model, loader, len(ready.classes), ready.device, ready.amp)
    return {
        "params": count_parameters(ready.model),
        "macs": count_macs(ready.model, 32),
        "valid_top1": last["best_valid_top1"],
        "best_epoch": best["epoch"],
        "epochs": last["epoch"],
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "train_images": history[-1]["train_samples"],
        "test_images": test["samples"],
        "seconds": history[-1]["elapsed"],
        "out": str(out),
    }


def device_name(run: argparse.Namespace) -> str:
    device = resolve_device(run.device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def markdown(results: dict[str, dict], context: dict) -> str:
    baseline = results.get(BASELINE)
    header = ["variant", "params", "MACs", "valid top-1 (%)", "test top-1 (%)"]
    header += ["vs baseline (test)"] if baseline else []
    header += ["best epoch", "time (s)"]
    rows = []
    for name, r in results.items():
        row = [
            f"`{name}`",
            f"{r['params']:,}",
            f"{r['macs'] / 1e6:.1f} M",
            f"{r['valid_top1']:.2f}",
            f"{r['test_top1']:.2f}",
        ]
        if baseline:
            row.append("-" if r is baseline else f"{r['test_top1'] - baseline['test_top1']:+.2f}")
        row += [f"{r['best_epoch']} / {r['epochs']}", f"{r['seconds']:.1f}"]
        rows.append(row)
    return "\n".join(
        [
            f"# FishNet ablations: {context['model']} (width {context['width']})",
            "",
            f"- recipe: `{context['recipe']}` (train.py flags), seed {context['seed']}",
            f"- data: {context['data']} ({context['images']})",
            f"- device: {context['device']}; torch {torch.__version__}; {context['date']}",
            "- valid top-1: the best epoch's; test top-1: the same checkpoint (best.pt); "
            "time: training with per-epoch validation",
            "",
            markdown_table(header, rows, align="l" + "r" * (len(header) - 1)),
            "",
        ]
    )


def plot(results: dict[str, dict], context: dict, path: Path) -> None:
    names = list(results)
    values = [results[n]["test_top1"] for n in names]
    colors = ["tab:blue" if n == BASELINE else "tab:orange" for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.42 * len(names)))
    bars = ax.barh(range(len(names)), values, color=colors)
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    if BASELINE in results:
        ax.axvline(results[BASELINE]["test_top1"], color="tab:blue", linestyle="--", linewidth=1)
    # The whole scale: a cut axis would make the differences of a few tenths, often
    # within seed noise, look large; the bar labels give the numbers.
    ax.set_xlim(0, 100)
    ax.set(
        xlabel="test top-1 (%)",
        title=f"{context['model']} (width {context['width']}), {context['recipe_short']}, "
        f"{context['device']}",
    )
    ax.title.set_fontsize(9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    first = next(iter(args.runs.values()))[1]
    context = {
        "model": first.model,
        "width": first.width,
        "recipe": " ".join(["--preset", args.preset, *args.train_flags]),
        "recipe_short": f"{first.epochs} epoch{'s' * (first.epochs != 1)}, seed {first.seed}",
        "seed": first.seed,
        "data": first.data,
        "device": device_name(first),
        "date": datetime.date.today().isoformat(),
    }
    results: dict[str, dict] = {}
    test_split: dict = {}
    for index, (name, (_, run)) in enumerate(args.runs.items()):
        print(f"\n== ablation {index + 1}/{len(args.runs)}: {name} -> {run.out}", flush=True)
        train_script = Path(__file__).resolve().parent / "train.py"
        try:
            status = run_child([sys.executable, str(train_script), *run.argv])
        except Ended as ended:
            again = rerun_command("ablate.py", drop=("--resume", "--overwrite"), add=("--resume",))
            raise Ended(
                ended.status,
                f"{ended} during variant {name}; "
                + (f"the finished variants are in {args.table}, " if results else "")
                + f"the ablation goes on with: {again}",
            ) from None
        if status:
            raise Ended(
                status, f"variant {name}: train.py ended with exit status {status} (see above)"
            )
        results[name] = evaluate_run(run, test_split)
        counts = results[name]
        context["images"] = (
            f"{counts['train_images']:,} training images an epoch, "
            f"{counts['test_images']:,} test images"
        )
        write_text(args.table, markdown(results, context))
        plot(results, context, args.plot)
        summary = {"context": context, "results": results}
        write_text(args.out / "ablation.json", json.dumps(summary, indent=1))
    print("\n" + markdown(results, context))
    print(f"table: {args.table}; plot: {args.plot}; numbers: {args.out / 'ablation.json'}")


if __name__ == "__main__":
    run_cli(main)
