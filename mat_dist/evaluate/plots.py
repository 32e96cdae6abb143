"""The look of mat-dist's robust-accuracy figures, one place for an evaluation's curves
(``mat_dist.evaluate.curves``) and the reproduction's report (``mat_dist.reproduce.reproduction_report``).

matplotlib is imported on first use, on the Agg backend: figures go to files, never to a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PANEL_HEIGHT = 3.8  # inches
DPI = 120


def pyplot():
    """matplotlib's pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_panels(count: int, *, width: float) -> tuple[Any, list[Any]]:
    """A figure with a row of ``count`` panels (at least one), each ``width`` inches wide: (figure, axes)."""
    count = max(1, count)
    fig, axes = pyplot().subplots(1, count, figsize=(width * count, PANEL_HEIGHT), squeeze=False)
    return fig, list(axes[0])


def style_accuracy_axis(ax: Any, curve: str, *, radius_label: str) -> None:
    """A panel of robust accuracy against attack steps (log scale) or radius (``radius_label``): axis labels,
    0-100% with a margin so 0 and 100 stay visible, a light grid."""
    if curve == "steps":
        ax.set_xlabel("attack steps")
        ax.set_xscale("log")
    else:
        ax.set_xlabel(radius_label)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)


def save_figure(fig: Any, path: Path, *, title: str = "") -> None:
    """``title`` above the panels, a tight layout, the PNG at ``DPI``."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
