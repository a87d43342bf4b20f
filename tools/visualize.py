"""See the fish: the mean activation of every stage of a trained model, at its own resolution.

    python -m tools.visualize runs/fishnet99-seed/best.pt cat.png [--out fish.png]

One panel for the input and one for each map of ``forward_features`` (stem, tail, bridge,
body, head), each drawn at a size proportional to its resolution, so the row traces the
fish: the resolution falls in the tail, rises in the body and falls again in the head.
A panel shows the mean over the map's channels, scaled to its own range. The image is
prepared for the checkpoint's input size (its stem's), and the input panel is as wide at any
size.

``--out`` must name a PNG file; an existing file is replaced only if it is a PNG image. It is
checked before the model is loaded.
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
from training.cli import HelpFormatter, check_output_file, run_cli
from training.distributed import resolve_device
from utils import UserError, atomic_write, one_line, printable

PART_COLORS = {"tail": "tab:blue", "bridge": "tab:purple", "body": "tab:green", "head": "tab:red"}
# The input panel's width; every other panel in proportion to its resolution, so a 224x224
# input gives a figure no wider than a 32x32 one.
INPUT_INCHES = 2.4
GAP_INCHES = 0.45  # between panels
# Below the panels, the parts' bars and names; above them, the panel names and the title.
BOTTOM_INCHES, TOP_INCHES = 0.6, 1.2
BAR_INCHES = 0.375  # the parts' bars, from the bottom


def part(name: str) -> str:
    """tail, bridge, body, head, or the name itself (input, stem, a ResNet layer)."""
    return name.rstrip("0123456789")


def draw_fish(image: Tensor, features: dict[str, Tensor], title: str) -> Figure:
    """A figure of image (uint8 [3, H, W]) and of the channel mean of every [C, h, w] feature,
    left to right, each panel as tall and wide as its map is (in units of input pixels)."""
    panels = [("input", image.permute(1, 2, 0).numpy(), None)]
    panels += [(name, feature.mean(0).numpy(), "magma") for name, feature in features.items()]
    inches_per_pixel = INPUT_INCHES / image.shape[-1]
    largest = max(p.shape[0] for _, p, _ in panels) * inches_per_pixel
    fig_width = sum(p.shape[1] for _, p, _ in panels) * inches_per_pixel
    fig_width += GAP_INCHES * (len(panels) + 1)
    fig_height = BOTTOM_INCHES + largest + TOP_INCHES
    fig = plt.figure(figsize=(fig_width, fig_height))
    centre = (BOTTOM_INCHES + largest / 2) / fig_height
    x = GAP_INCHES
    spans: dict[str, list[float]] = {}
    for name, pixels, cmap in panels:
        rows, columns = pixels.shape[:2]
        height, width = rows * inches_per_pixel, columns * inches_per_pixel
        box = [
            x / fig_width,
            centre - height / 2 / fig_height,
            width / fig_width,
            height / fig_height,
        ]
        ax = fig.add_axes(box)
        ax.imshow(pixels, cmap=cmap, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        color = PART_COLORS.get(part(name), "black")
        for spine in ax.spines.values():
            spine.set_color(color)
        ax.set_title(f"{name}\n{rows}x{columns}", fontsize=9, color=color)
        ax.set_label(name)
        if part(name) in PART_COLORS:
            spans.setdefault(part(name), []).extend([x, x + width])
        x += width + GAP_INCHES
    bar = BAR_INCHES / fig_height
    for name, span in spans.items():
        left, right = min(span) / fig_width, max(span) / fig_width
        color = PART_COLORS[name]
        fig.add_artist(Line2D([left, right], [bar, bar], color=color, linewidth=3))
        fig.text((left + right) / 2, bar - 0.02, name, ha="center", va="top", color=color)
    # File and class names are shown as written: a "$" would start mathtext, which can fail.
    fig.suptitle(title, fontsize=11, parse_math=False)
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
    out = args.out or args.checkpoint.parent / f"fish_{args.image.stem}.png"
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: must end in .png")
    check_output_file(out, "--out", kind="png", inputs=(args.image, args.checkpoint))
    classifier = load_ready_model(args.checkpoint, resolve_device(args.device))
    image = read_image_file(args.image, classifier.input_size)
    features = classifier.features(image[None])
    probabilities = classifier.probabilities(image[None])[0]
    label = int(probabilities.argmax())
    spec = classifier.checkpoint["model"]
    model = f"{spec['name']} (width {spec['kwargs'].get('width', 1.0)})"
    title = (
        f"{model} on {printable(args.image.name)}: {printable(classifier.classes[label])}, "
        f"{100 * probabilities[label]:.0f} %\n"
        "the mean over channels of every stage's map, drawn at its own resolution"
    )
    fig = draw_fish(image, {name: f[0].cpu() for name, f in features.items()}, title)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    except OSError as error:
        raise UserError(f"--out {out}: cannot write the figure ({one_line(error)})") from None
    plt.close(fig)
    sizes = ", ".join(f"{n} {f.shape[-2]}x{f.shape[-1]}" for n, f in features.items())
    print(f"{printable(out)}: input {image.shape[-2]}x{image.shape[-1]}, {sizes}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
