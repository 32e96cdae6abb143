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


def plot_curves(points: list[dict[str, Any]], path: Path, *, title: str = "", subtitle: str = "",
                radii: dict[str, float] | None = None):
    """Two panels (steps, radius), one line per attack with its 95% Wilson band; returns the matplotlib figure
    (also saved as PNG).

    The radius panel's x axis is the radius over the attack's own radius in the suite (``radii``: attack ->
    eps), so l_1, l_2 and l_inf curves share one axis (1 = the suite's radius) instead of l_inf's 0.3 sitting
    at 0 beside l_1's 10. ``title`` names the model (the run), ``subtitle`` the data and suite.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mat_dist.evaluate.metrics import wilson_interval

    radii = radii or {}
    curves = [c for c in ("steps", "radius") if any(p["curve"] == c for p in points)]
    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(5 * max(1, len(curves)), 3.8), squeeze=False)
    for ax, curve in zip(axes[0], curves):
        for attack in dict.fromkeys(p["attack"] for p in points if p["curve"] == curve):
            pts = [p for p in points if p["curve"] == curve and p["attack"] == attack]
            scale = radii.get(attack) if curve == "radius" else None
            xs = [p["x"] / scale if scale else p["x"] for p in pts]
            bands = [wilson_interval(round(p["robust_accuracy"] * p["examples"]), p["examples"]) for p in pts]
            label = f"{attack} ({pts[0]['norm']}" + (f", eps {scale:g})" if scale else ")")
            (line,) = ax.plot(xs, [100 * p["robust_accuracy"] for p in pts], marker="o", label=label)
            ax.fill_between(xs, [100 * lo for lo, _ in bands], [100 * hi for _, hi in bands],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        if curve == "steps":
            ax.set_xlabel("attack steps")
            ax.set_xscale("log")
        else:
            ax.set_xlabel("radius / the attack's radius in the suite" if radii else "radius eps (pixel units)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig
