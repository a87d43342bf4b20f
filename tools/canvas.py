"""FishNet beyond classification: train and score a detection or a segmentation model with
a FishNet backbone on canvases of CIFAR-10 images.

    python -m tools.canvas detection                  # Faster R-CNN on FishNet-99's head maps
    python -m tools.canvas detection --stages tail    # on the tail's maps instead
    python -m tools.canvas segmentation               # FCN on the last body map (full size)
    python -m tools.canvas detection --backbone runs/fishnet99-cpu/best.pt

A canvas (downstream.canvas) holds one to three images of the prepared dataset pasted at
random places and sizes; its boxes and per-pixel masks are labelled by their class. The
training canvases use the training split's images, the held-out ones those of --eval-split,
the same canvases for every run. The held-out canvases are scored at initialisation and at
the end (and every --eval-every steps): box mAP@0.5 and mAP@[.5:.95] for detection, mean
IoU and pixel accuracy for segmentation.

The run folder OUT (default runs/canvas-TASK) takes args.json, last.pt (the run's state,
written at every scoring and when the run stops), scores.json and predictions.png (the
first held-out canvases with the truth and the predictions). Ctrl-C or SIGTERM saves last.pt
after the current step; --resume goes on from it exactly as an unbroken run would.
"""

import argparse
import json
import signal
from pathlib import Path

import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from tqdm import tqdm

from dataloader import DEFAULT_DATA, channel_stats, load_split, read_classes
from downstream.backbones import (
    SEGMENTATION_HEADS,
    STAGE_GROUPS,
    finest_stage,
    pyramid_indices,
    stage_indices,
)
from downstream.canvas import CanvasDataset
from downstream.run import CanvasRun
from downstream.tasks import TASKS, Normalization
from models import build_model, model_names
from training.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    read_torch_file,
    refuse_existing_run,
    save_checkpoint,
)
from training.cli import (
    Ended,
    HelpFormatter,
    at_most,
    check_output_folder,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    rerun_command,
    run_cli,
)
from training.distributed import resolve_device
from training.engine import StopRequest
from training.optim import make_optimizer, make_scheduler
from training.options import model_width, seed_number
from utils import UserError, atomic_write, lock_run_folder, one_line, printable, write_text

CANVAS_FORMAT = "fishnet-cifar-canvas-run"
CANVAS_VERSION = 1
CHECKPOINT = "last.pt"
DEFAULT_MODEL, DEFAULT_WIDTH = "fishnet99", 0.25
# Bounds of the flags whose larger values would only hang or exhaust the machine; MAX_STEPS
# keeps every step's seed distinct (downstream.run.STEP_SEEDS).
MAX_STEPS = 1_000_000
MAX_CANVAS_SIZE = 1024
MAX_OBJECTS = 64
MAX_CANVASES = 1 << 16
MAX_CHANNELS = 1 << 14
EVAL_SEED = 0  # the held-out canvases are the same for every run
FIGURE_CANVASES = 8
FIGURE_DETECTIONS = 3  # the best-scored detections drawn on each canvas of predictions.png
# The flags that define a run (besides its task): --resume refuses a command that changes one.
RUN_FLAGS = (
    "data",
    "model",
    "width",
    "backbone",
    "stages",
    "stage",
    "head",
    "fpn_channels",
    "representation_size",
    "canvas_size",
    "max_objects",
    "object_sizes",
    "steps",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_steps",
    "seed",
    "eval_split",
    "eval_canvases",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.canvas",
        description="Train and score a detection or segmentation model with a FishNet "
        "backbone on canvases of CIFAR-10 images.",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("task", choices=TASKS, help="what to train")
    add("--data", type=Path, default=DEFAULT_DATA, help="a dataset prepared by download_data.py")
    add("--out", type=Path, default=None, help="the run folder (default: runs/canvas-TASK)")
    model = parser.add_argument_group("backbone")
    model.add_argument("--model", default=DEFAULT_MODEL, choices=model_names())
    model.add_argument(
        "--width", type=model_width, default=DEFAULT_WIDTH, help="channel multiplier"
    )
    model.add_argument(
        "--backbone",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="start from the weights of a train.py checkpoint (its model and width; "
        "none: a fresh model)",
    )
    model.add_argument(
        "--stages",
        nargs="+",
        default=None,
        metavar="STAGE",
        help="detection: the maps of the feature pyramid, by name or as one of "
        f"{', '.join(STAGE_GROUPS)} (none: FishNet's head, another model's last three)",
    )
    model.add_argument(
        "--stage",
        default=None,
        help="segmentation: the map the head reads (none: the last at the highest "
        "resolution, FishNet's body3)",
    )
    model.add_argument("--head", default="fcn", choices=SEGMENTATION_HEADS, help="segmentation")
    model.add_argument(
        "--fpn-channels", type=at_most(positive_int, MAX_CHANNELS), default=64, help="detection"
    )
    model.add_argument(
        "--representation-size",
        type=at_most(positive_int, MAX_CHANNELS),
        default=256,
        help="detection: box head",
    )
    canvas = parser.add_argument_group("canvases")
    canvas.add_argument(
        "--canvas-size", type=at_most(positive_int, MAX_CANVAS_SIZE), default=96, help="pixels"
    )
    canvas.add_argument(
        "--max-objects", type=at_most(positive_int, MAX_OBJECTS), default=3, help="per canvas"
    )
    canvas.add_argument(
        "--object-sizes",
        nargs=2,
        type=positive_int,
        default=[24, 48],
        metavar=("MIN", "MAX"),
        help="side of a pasted image, pixels",
    )
    recipe = parser.add_argument_group("recipe (SGD with a warm-up, then cosine to zero)")
    recipe.add_argument("--steps", type=at_most(positive_int, MAX_STEPS), default=300)
    recipe.add_argument(
        "--batch-size", type=at_most(positive_int, MAX_CANVASES), default=8, help="canvases"
    )
    recipe.add_argument("--lr", type=positive_float, default=0.02)
    recipe.add_argument("--momentum", type=fraction, default=0.9)
    recipe.add_argument(
        "--weight-decay", type=non_negative_float, default=1e-4, help="on weights only"
    )
    recipe.add_argument("--warmup-steps", type=non_negative_int, default=30)
    recipe.add_argument("--seed", type=seed_number, default=0)
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--eval-split", default="valid", choices=("valid", "test"))
    scoring.add_argument("--eval-canvases", type=at_most(positive_int, MAX_CANVASES), default=256)
    scoring.add_argument(
        "--eval-every", type=non_negative_int, default=0, help="steps (0: start and end only)"
    )
    run = parser.add_argument_group("the run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    existing = run.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="go on with the run in OUT")
    existing.add_argument("--overwrite", action="store_true", help="replace the run in OUT")
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except UserError as error:
        parser.error(str(error))
    return args


def check_args(args: argparse.Namespace) -> None:
    """What argparse's types cannot see: bounds that depend on each other."""
    low, high = args.object_sizes
    if low > high:
        raise UserError(f"--object-sizes {low} {high}: MIN is above MAX")
    if high > args.canvas_size:
        raise UserError(f"--object-sizes: {high} pixels do not fit a {args.canvas_size} canvas")
    if args.warmup_steps >= args.steps:
        raise UserError("--warmup-steps must be fewer than --steps")
    if args.task != "detection" and args.stages is not None:
        raise UserError("--stages is for detection; segmentation reads one --stage")
    if args.task != "segmentation" and args.stage is not None:
        raise UserError("--stage is for segmentation; detection reads --stages")


def resolve_stages(args: argparse.Namespace, model) -> list[str]:
    """--stages with group names (tail, body, head) written out, checked against the model."""
    names = [info["name"] for info in model.feature_info]
    if args.stages is None:
        head = list(STAGE_GROUPS["head"])
        stages = head if set(head) <= set(names) else names[-3:]
    else:
        stages = [s for given in args.stages for s in STAGE_GROUPS.get(given, (given,))]
    try:
        pyramid_indices(model, stages)
    except ValueError as error:
        raise UserError(f"--stages: {error}") from None
    return stages


def load_backbone(args: argparse.Namespace, num_classes: int):
    """(the backbone model, its normalisation or None, its record)."""
    if args.backbone is None:
        torch.manual_seed(args.seed)
        model = build_model(args.model, num_classes=num_classes, width=args.width)
        return model, None, {"name": args.model, "kwargs": {"width": args.width}}
    if args.backbone.is_dir():
        raise UserError(f"--backbone {args.backbone}: a folder, not a checkpoint file")
    try:
        checkpoint = load_checkpoint(args.backbone)
    except UserError as error:
        raise UserError(f"--backbone {error}") from None
    spec = checkpoint["model"]
    width = spec["kwargs"].get("width", 1.0)
    for flag, given, default, saved in (
        ("--model", args.model, DEFAULT_MODEL, spec["name"]),
        ("--width", args.width, DEFAULT_WIDTH, width),
    ):
        if given not in (default, saved):
            raise UserError(f"{flag} {given}: --backbone {args.backbone} holds {saved}")
    # The run records the backbone's model and width, which --resume then checks.
    args.model, args.width = spec["name"], width
    if spec["kwargs"].get("stem", "cifar") != "cifar":
        raise UserError(
            f"--backbone {args.backbone}: the {spec['kwargs']['stem']} stem; "
            "the canvases are for the CIFAR stem"
        )
    model = model_from_checkpoint(checkpoint, args.backbone)
    statistics = checkpoint["normalization"]
    normalization = Normalization(tuple(statistics["mean"]), tuple(statistics["std"]))
    return model, normalization, spec


def check_out(args: argparse.Namespace, out: Path) -> None:
    """Refuses, before any work, a run folder that cannot take this run."""
    check_output_folder(out, "--out")
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out {out}: a broken symbolic link")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a folder")
    if args.resume and not (out / CHECKPOINT).is_file():
        raise UserError(
            f"--resume: {out / CHECKPOINT} does not exist; start the run without --resume"
        )
    if not (args.resume or args.overwrite):
        refuse_existing_run(out)


def read_saved_run(path: Path, args: argparse.Namespace, classes: list[str]) -> dict:
    """The checkpoint --resume goes on from, if it is one of this run; else a UserError."""
    saved = read_torch_file(path)
    if not isinstance(saved, dict) or saved.get("format") != CANVAS_FORMAT:
        raise UserError(f"--resume: {path} is not a canvas run's checkpoint")
    if saved.get("version") != CANVAS_VERSION:
        raise UserError(f"--resume: {path} has version {saved.get('version')!r}")
    recorded = saved.get("args")
    if not isinstance(recorded, dict) or not isinstance(saved.get("run"), dict):
        raise UserError(f"--resume: {path} is damaged (no flags or no state)")
    if recorded.get("task") != args.task:
        raise UserError(f"--resume: {path} is a run of {recorded.get('task')!r}, not {args.task}")
    given = run_fields(args)
    changed = [
        f"--{key.replace('_', '-')} {recorded.get(key)!r}"
        for key in RUN_FLAGS
        if recorded.get(key) != given[key]
    ]
    if changed:
        raise UserError(
            f"--resume: {path} was trained with {', '.join(changed)}; resume with the flags "
            "of the original run"
        )
    if saved.get("classes") != classes:
        raise UserError(f"--resume: {path} was trained on other classes than {args.data}'s")
    return saved


def run_fields(args: argparse.Namespace) -> dict:
    """The run-defining flags as args.json and last.pt record them: paths absolute, the
    stages written out (so that the default and its spelling compare equal)."""
    fields = {key: getattr(args, key) for key in ("task", *RUN_FLAGS)}
    for key in ("data", "backbone"):
        fields[key] = None if fields[key] is None else str(Path(fields[key]).resolve())
    return fields


def save_run(out: Path, run: CanvasRun, args: argparse.Namespace, extra: dict) -> None:
    save_checkpoint(
        {
            "format": CANVAS_FORMAT,
            "version": CANVAS_VERSION,
            "args": run_fields(args),
            **extra,
            "run": run.state_dict(),
        },
        out / CHECKPOINT,
    )
    text = json.dumps(run.history, indent=1)
    atomic_write(out / "scores.json", lambda tmp: tmp.write_text(text))


def draw_predictions(run: CanvasRun, classes: list[str], title: str) -> Figure:
    """The first held-out canvases: for detection each with its true boxes (dashed) and its
    :data:`FIGURE_DETECTIONS` best-scored detections; for segmentation a row of canvases, one
    of true masks and one of predicted masks."""
    canvases = [run.eval_canvases[i] for i in range(min(FIGURE_CANVASES, len(run.eval_canvases)))]
    predictions = run.predict(canvases)
    rows = 1 if run.task.name == "detection" else 3
    figure = Figure(figsize=(2.2 * len(canvases), 2.3 * rows + 1.0), layout="constrained")
    axes = figure.subplots(rows, len(canvases), squeeze=False)
    label_colors = ListedColormap(["black", *[f"C{i}" for i in range(len(classes))]])
    for column, (canvas, predicted) in enumerate(zip(canvases, predictions, strict=True)):
        image = canvas.image.permute(1, 2, 0).numpy()
        axes[0, column].imshow(image)
        if run.task.name == "detection":
            draw_boxes(axes[0, column], canvas.boxes, canvas.labels, classes, dashed=True)
            best = predicted["scores"].argsort(descending=True)[:FIGURE_DETECTIONS]
            draw_boxes(
                axes[0, column],
                predicted["boxes"][best],
                predicted["labels"][best],
                classes,
                scores=predicted["scores"][best],
            )
        else:
            for row, mask in ((1, canvas.mask), (2, predicted)):
                axes[row, column].imshow(
                    mask.numpy(),
                    cmap=label_colors,
                    vmin=0,
                    vmax=len(classes),
                    interpolation="nearest",
                )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if rows == 3:
        for row, name in enumerate(("canvas", "true classes", "predicted")):
            axes[row, 0].set_ylabel(name)
        handles = [Patch(color=f"C{i}", label=printable(name)) for i, name in enumerate(classes)]
        figure.legend(handles=handles, loc="outside lower center", ncol=len(classes), fontsize=8)
    figure.suptitle(title, fontsize=10, parse_math=False)
    return figure


def draw_boxes(ax, boxes, labels, classes, dashed: bool = False, scores=None) -> None:
    """Boxes (xyxy) with their class names, in the class's colour; true boxes dashed."""
    for index, ((x1, y1, x2, y2), label) in enumerate(
        zip(boxes.tolist(), labels.tolist(), strict=True)
    ):
        color = f"C{label - 1}"
        ax.add_patch(
            Rectangle(
                (x1 - 0.5, y1 - 0.5),
                x2 - x1,
                y2 - y1,
                fill=False,
                color=color,
                linestyle="--" if dashed else "-",
                linewidth=1.5,
            )
        )
        text = printable(classes[label - 1])
        if scores is not None:
            text += f" {scores[index]:.2f}"
        ax.text(
            x1,
            y2 if dashed else y1,
            text,
            color="white",
            fontsize=7,
            parse_math=False,
            va="top" if dashed else "bottom",
            bbox={"facecolor": color, "pad": 1, "linewidth": 0},
        )


def describe(row: dict) -> str:
    return ", ".join(f"{key} {value:.3f}" for key, value in row.items() if key != "step")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out if args.out is not None else Path(f"runs/canvas-{args.task}")
    check_out(args, out)
    device = resolve_device(args.device)
    classes = read_classes(args.data)
    model, normalization, backbone_spec = load_backbone(args, len(classes))
    if args.task == "detection":
        args.stages = resolve_stages(args, model)
    else:
        args.stage = args.stage or finest_stage(model)
        try:
            stage_indices(model, [args.stage])
        except ValueError as error:
            raise UserError(f"--stage: {error}") from None
    train_images, train_labels = load_split(args.data, "train")
    eval_images, eval_labels = load_split(args.data, args.eval_split)
    if normalization is None:
        normalization = Normalization(*channel_stats(train_images))
    task = TASKS[args.task]
    net = task.build(
        model,
        len(classes) + 1,
        args.canvas_size,
        normalization,
        stages=args.stages,
        stage=args.stage,
        head=args.head,
        fpn_channels=args.fpn_channels,
        representation_size=args.representation_size,
    ).to(device)
    optimizer = make_optimizer(
        net,
        name="sgd",
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        decay_norm_bias=False,
    )
    scheduler = make_scheduler(
        optimizer,
        name="cosine",
        epochs=1,
        steps_per_epoch=args.steps,
        lr=args.lr,
        warmup_epochs=args.warmup_steps / args.steps,
    )
    canvas_options = {
        "num_classes": len(classes),
        "size": args.canvas_size,
        "max_objects": args.max_objects,
        "object_sizes": tuple(args.object_sizes),
    }
    run = CanvasRun(
        task,
        net,
        optimizer,
        scheduler,
        CanvasDataset(
            train_images, train_labels, args.steps * args.batch_size, args.seed, **canvas_options
        ),
        CanvasDataset(eval_images, eval_labels, args.eval_canvases, EVAL_SEED, **canvas_options),
        args.batch_size,
        args.seed,
        device,
    )
    extra = {
        "classes": classes,
        "normalization": {"mean": list(normalization.mean), "std": list(normalization.std)},
        "backbone": backbone_spec,
    }
    lock = lock_run_folder(out)
    # From here on, Ctrl-C and SIGTERM stop the run at the next step with its state saved.
    stop = StopRequest()
    stop.install()
    if args.resume:
        path = out / CHECKPOINT
        try:
            run.load_state_dict(read_saved_run(path, args, classes)["run"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
            raise UserError(f"--resume: {path} is damaged ({one_line(error)})") from None
        print(f"resuming {printable(path)} at step {run.step} of {args.steps}")
    else:
        if not args.overwrite:
            refuse_existing_run(out)  # one written since the check, before the lock
        write_text(
            out / "args.json",
            json.dumps(
                {"command": rerun_command("-m tools.canvas"), "args": run_fields(args)}, indent=1
            ),
        )
        print(f"step 0 (initialisation): {describe(run.evaluate())}")
        save_run(out, run, args, extra)
    bar = tqdm(total=args.steps, initial=run.step, desc=args.task, dynamic_ncols=True)
    while run.step < args.steps:
        if stop.signal is not None:
            save_run(out, run, args, extra)
            bar.close()
            resume = rerun_command("-m tools.canvas", drop=("--overwrite",), add=("--resume",))
            raise Ended(
                128 + stop.signal,
                f"stopped by {signal.Signals(stop.signal).name} at step {run.step}; "
                f"{out / CHECKPOINT} saved: go on with {resume}",
            )
        loss = run.train_step()
        bar.update()
        bar.set_postfix(loss=f"{loss:.3f}")
        if run.step == args.steps or (args.eval_every and run.step % args.eval_every == 0):
            tqdm.write(f"step {run.step}: {describe(run.evaluate())}")
            save_run(out, run, args, extra)
    bar.close()
    title = (
        f"{args.task}: {backbone_spec['name']}, width {backbone_spec['kwargs'].get('width', 1.0)}, "
        f"{' '.join(args.stages) if args.stages else args.stage}, {run.step} steps; "
        "held-out canvases "
        f"({args.eval_split} split)\nat initialisation {describe(run.history[0])}; "
        f"now {describe(run.history[-1])}"
    )
    figure = draw_predictions(run, classes, title)
    atomic_write(out / "predictions.png", lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    print(f"{printable(out)}: {CHECKPOINT}, scores.json, predictions.png")
    lock.release()


if __name__ == "__main__":
    run_cli(main)
