"""A run's history as files (JSON, CSV) and as the figures a report would show."""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from training.metrics import HEADLINE, METRICS
from utils import atomic_write, printable

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_history(history: list[dict], out_dir: Path, title: str) -> None:
    """history.json, history.csv (one row per epoch), acc.png and loss.png."""
    atomic_write(
        out_dir / "history.json", lambda tmp: tmp.write_text(json.dumps(history, indent=1))
    )

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            # Every column any epoch has: splits scored in some epochs only stay blank in the
            # others.
            columns = list(dict.fromkeys(key for row in history for key in row))
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)

    atomic_write(out_dir / "history.csv", write_csv)
    plot_history(history, out_dir, title)


def _new_figure(width: float, height: float) -> Figure:
    """A figure that is only ever saved to a file, so it needs no pyplot and no display.
    matplotlib is imported here, on first use, rather than at the top: it adds about half a
    second to the start of every script that imports this module, --help included."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _epoch_axes(title: str, ylabel: str, epochs: list[int]):
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(7, 4.5)
    ax = fig.subplots()
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.set_title(printable(title), parse_math=False)  # names as written, "$" too
    # Whole epochs only, and a 1-epoch run gets an axis around its single point.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(0.5, max(epochs) + 0.5)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


@dataclass(frozen=True)
class HistoryFigure:
    """A figure of the run's history: the metrics whose ``figure`` is its name."""

    title: str
    ylabel: str
    ylim: tuple[float | None, float | None]


FIGURES = {
    "acc": HistoryFigure("Accuracy", "accuracy (%)", (0, 100)),
    "loss": HistoryFigure("Loss", "cross-entropy", (0, None)),
}
SPLIT_COLORS = {"train": "tab:blue", "valid": "tab:orange", "test": "tab:green"}
LINESTYLES = ("-", "--", ":", "-.")  # a figure's metrics, in the order of METRICS


def history_figures(history: list[dict], title: str) -> tuple[Figure, ...]:
    """One figure per entry of :data:`FIGURES` (accuracy: every evaluated split's top-1 and
    top-5; loss), on linear axes from zero, against whole epochs."""
    epochs = [row["epoch"] for row in history]
    style = {"marker": "o", "markersize": 3}
    # A split scored in some epochs only (--report-test added or dropped on --resume) is
    # drawn where it was scored.
    splits = [s for s in SPLIT_COLORS if any(f"{s}_{HEADLINE}" in r for r in history)]
    figures = []
    for name, spec in FIGURES.items():
        metrics = [m for m in METRICS if m.figure == name]
        fig, ax = _epoch_axes(f"{spec.title}: {title}", spec.ylabel, epochs)
        for split in splits:
            for metric, linestyle in zip(metrics, itertools.cycle(LINESTYLES)):
                values = [row.get(f"{split}_{metric.key}", math.nan) for row in history]
                # A figure of one metric names the splits only.
                label = f"{split} {metric.label}" if len(metrics) > 1 else split
                ax.plot(epochs, values, color=SPLIT_COLORS[split], linestyle=linestyle,
                        label=label, **style)  # fmt: skip
        ax.set_ylim(*spec.ylim)
        ax.legend()
        figures.append(fig)
    return tuple(figures)


def plot_history(history: list[dict], out_dir: Path, title: str) -> None:
    """NAME.png of every figure of :func:`history_figures` (acc.png, loss.png)."""
    for name, figure in zip(FIGURES, history_figures(history, title), strict=True):
        _save(figure, out_dir / f"{name}.png")


def plot_confusion(confusion: Tensor, classes: list[str], title: str, path: Path) -> None:
    size = max(5.0, 0.45 * len(classes) + 2)
    fig = _new_figure(size, size)
    ax = fig.subplots()
    ax.imshow(confusion.numpy(), cmap="Blues")
    ticks = range(len(classes))
    # Names as written: a lone surrogate (a byte that is not UTF-8) or a "$" (mathtext)
    # would stop matplotlib.
    names = [printable(name) for name in classes]
    ax.set_xticks(ticks, names, rotation=90, parse_math=False)
    ax.set_yticks(ticks, names, parse_math=False)
    if len(classes) <= 20:
        threshold = confusion.max().item() / 2
        for i in ticks:
            for j in ticks:
                value = confusion[i, j].item()
                color = "white" if value > threshold else "black"
                ax.text(j, i, value, ha="center", va="center", color=color, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(printable(title), parse_math=False)
    _save(fig, path)
