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
    from mat_dist.evaluate.metrics import wilson_interval
    from mat_dist.evaluate.plots import accuracy_panels, save_figure, style_accuracy_axis

    radii = radii or {}
    curves = [c for c in ("steps", "radius") if any(p["curve"] == c for p in points)]
    fig, axes = accuracy_panels(len(curves), width=5)
    for ax, curve in zip(axes, curves):
        for attack in dict.fromkeys(p["attack"] for p in points if p["curve"] == curve):
            pts = [p for p in points if p["curve"] == curve and p["attack"] == attack]
            scale = radii.get(attack) if curve == "radius" else None
            xs = [p["x"] / scale if scale else p["x"] for p in pts]
            bands = [wilson_interval(round(p["robust_accuracy"] * p["examples"]), p["examples"]) for p in pts]
            label = f"{attack} ({pts[0]['norm']}" + (f", eps {scale:g})" if scale else ")")
            (line,) = ax.plot(xs, [100 * p["robust_accuracy"] for p in pts], marker="o", label=label)
            ax.fill_between(xs, [100 * lo for lo, _ in bands], [100 * hi for _, hi in bands],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        style_accuracy_axis(ax, curve, radius_label="radius / the attack's radius in the suite" if radii
                            else "radius eps (pixel units)")
        ax.legend(fontsize=8)
    save_figure(fig, path, title=(title + (f"\n{subtitle}" if subtitle else "")) if title else "")
    return fig
