"""See the fish: the mean activation of every stage of a trained model, at its own resolution.

    python -m tools.visualize runs/fishnet99/best.pt cat.png [--out fish.png]

One panel for the input and one for each map of ``forward_features`` (stem, tail, bridge,
body, head), each drawn at a size proportional to its resolution, so the row traces the
fish: the resolution falls in the tail, rises in the body and falls again in the head.
A panel shows the mean over the map's channels, scaled to its own range.
"""

import argparse
from pathlib import Path

import matplotlib
import torch
from torch import Tensor

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dataloader.images import read_image_file
from training.checkpoint import load_ready_model
from training.cli import HelpFormatter, UserError, first_line, run_cli
from training.distributed import resolve_device
from training.files import atomic_write

PART_COLORS = {"tail": "tab:blue", "bridge": "tab:purple", "body": "tab:green", "head": "tab:red"}
INCHES_PER_PIXEL = 0.075  # at 32x32, a panel is 2.4 inches wide
GAP = 6  # between panels, in input pixels


def part(name: str) -> str:
    """tail, bridge, body, head, or the name itself (input, stem, a ResNet layer)."""
    return name.rstrip("0123456789")


def draw_fish(image: Tensor, features: dict[str, Tensor], title: str) -> Figure:
    """A figure of image (uint8 [3, H, W]) and of the channel mean of every [C, h, w] feature,
    left to right, each panel as tall and wide as its map is (in units of input pixels)."""
    panels = [("input", image.permute(1, 2, 0).numpy(), None)]
    panels += [(name, feature.mean(0).numpy(), "magma") for name, feature in features.items()]
    largest = max(p.shape[0] for _, p, _ in panels)
    width_units = sum(p.shape[1] for _, p, _ in panels) + GAP * (len(panels) + 1)
    # Below the panels the parts' bars and names, above them the panel names and the title.
    bottom, height_units = 8, largest + 24
    fig = plt.figure(figsize=(width_units * INCHES_PER_PIXEL, height_units * INCHES_PER_PIXEL))
    centre = (bottom + largest / 2) / height_units
    x = GAP
    spans: dict[str, list[float]] = {}
    for name, pixels, cmap in panels:
        height, width = pixels.shape[:2]
        box = [
            x / width_units,
            centre - height / 2 / height_units,
            width / width_units,
            height / height_units,
        ]
        ax = fig.add_axes(box)
        ax.imshow(pixels, cmap=cmap, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        color = PART_COLORS.get(part(name), "black")
        for spine in ax.spines.values():
            spine.set_color(color)
        ax.set_title(f"{name}\n{height}x{width}", fontsize=9, color=color)
        ax.set_label(name)
        if part(name) in PART_COLORS:
            spans.setdefault(part(name), []).extend([x, x + width])
        x += width + GAP
    bar = (bottom - 3) / height_units
    for name, span in spans.items():
        left, right = min(span) / width_units, max(span) / width_units
        color = PART_COLORS[name]
        fig.add_artist(Line2D([left, right], [bar, bar], color=color, linewidth=3))
        fig.text((left + right) / 2, bar - 0.02, name, ha="center", va="top", color=color)
    fig.suptitle(title, fontsize=11)
    return fig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.visualize",
        description="Draw the mean activation of every stage of a trained model on one image.",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("checkpoint", type=Path, help="a last.pt or best.pt written by train.py")
    add("image", type=Path, help="an image file (any size and mode)")
    add(
        "--out",
        type=Path,
        default=None,
        help="PNG to write (none given: fish_IMAGE.png beside the checkpoint)",
    )
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    classifier = load_ready_model(args.checkpoint, resolve_device(args.device))
    image = read_image_file(args.image)
    features = classifier.features(image[None])
    probabilities = classifier.probabilities(image[None])[0]
    label = int(probabilities.argmax())
    spec = classifier.checkpoint["model"]
    model = f"{spec['name']} (width {spec['kwargs'].get('width', 1.0)})"
    title = (
        f"{model} on {args.image.name}: {classifier.classes[label]}, "
        f"{100 * probabilities[label]:.0f} %\n"
        "the mean over channels of every stage's map, drawn at its own resolution"
    )
    fig = draw_fish(image, {name: f[0].cpu() for name, f in features.items()}, title)
    out = args.out or args.checkpoint.parent / f"fish_{args.image.stem}.png"
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    except OSError as error:
        raise UserError(f"--out {out}: cannot write the figure ({first_line(error)})") from None
    plt.close(fig)
    sizes = ", ".join(f"{n} {f.shape[-2]}x{f.shape[-1]}" for n, f in features.items())
    print(f"{out}: input 32x32, {sizes}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
