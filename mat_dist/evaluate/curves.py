"""Robust accuracy against attack steps and against radius, per norm (paper Figures 2 and 3)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

CURVE_FIELDS = ["curve", "attack", "norm", "x", "robust_accuracy", "examples"]


def write_curves_csv(points: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        for p in points:
            writer.writerow({k: p[k] for k in CURVE_FIELDS})


def plot_curves(points: list[dict[str, Any]], path: Path, *, title: str = ""):
    """Two panels (steps, radius), one line per attack; returns the matplotlib figure (also saved as PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [c for c in ("steps", "radius") if any(p["curve"] == c for p in points)]
    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(5 * max(1, len(curves)), 3.6), squeeze=False)
    for ax, curve in zip(axes[0], curves):
        for attack in dict.fromkeys(p["attack"] for p in points if p["curve"] == curve):
            pts = [p for p in points if p["curve"] == curve and p["attack"] == attack]
            ax.plot([p["x"] for p in pts], [100 * p["robust_accuracy"] for p in pts], marker="o",
                    label=f"{attack} ({pts[0]['norm']})")
        ax.set_xlabel("attack steps" if curve == "steps" else "radius eps (pixel units)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        if curve == "steps":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig
