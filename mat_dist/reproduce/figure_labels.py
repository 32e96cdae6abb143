"""Where the study figure's method labels go: beside their points, on no other label, point or error bar.

Many methods share one cost (every K+1 method trains 35,640 passes, a fine-tuned one 39,204, AVG, MAX and ensemble
AT 106,920), so their points stack in columns and a label put simply to the right of its point lands on its
neighbours. The placement here is greedy, in display pixels (the log axis makes data units a poor ruler): labels
are placed from the top of the figure down, each at the nearest free spot to its point, trying the right and the
left side at each height before moving further up or down. A leader line joins each label to its point; the
leader lines are not obstacles, so a label moved far from its point may be crossed by another's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in display pixels (y grows upwards, as matplotlib's display coordinates do)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def overlap(self, other: "Box") -> float:
        """Area shared with ``other`` (0 when they only touch)."""
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return w * h if w > 0 and h > 0 else 0.0

    def inside(self, other: "Box") -> bool:
        return self.x0 >= other.x0 and self.x1 <= other.x1 and self.y0 >= other.y0 and self.y1 <= other.y1


@dataclass(frozen=True)
class Placed:
    side: int         # +1: the label's left edge is right of its point; -1: its right edge is left of it
    x: float          # the label's anchor in pixels: its left edge (side +1) or right edge (side -1)
    y: float          # the label's vertical centre in pixels
    box: Box
    free: bool        # False where no free spot was found within reach (the least-overlapping one was taken)


def place_labels(points: list[tuple[float, float]], sizes: list[tuple[float, float]], obstacles: list[Box],
                 bounds: Box, *, offset: float = 8.0, reach: int = 12) -> list[Placed]:
    """A label spot for each point (pixels) with its label's (width, height), avoiding ``obstacles`` (markers
    and error bars), the labels already placed, and leaving ``bounds`` (the axes). ``offset``: pixels between a
    point and its label's near edge; ``reach``: how many label heights up or down a label may move."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][1], points[i][0]))
    taken: list[Box] = []
    placed: dict[int, Placed] = {}
    for i in order:
        (px, py), (w, h) = points[i], sizes[i]
        best: tuple[float, Placed] | None = None
        for shift in _shifts(reach):
            y = py + shift * (h + 2.0)  # 2 px between stacked labels
            for side in (1, -1):
                x = px + side * offset
                box = Box(x, y - h / 2, x + w, y + h / 2) if side > 0 else Box(x - w, y - h / 2, x, y + h / 2)
                if not box.inside(bounds):
                    continue
                clash = sum(box.overlap(other) for other in (*taken, *obstacles))
                if best is None or clash < best[0]:
                    best = (clash, Placed(side, x, y, box, free=clash == 0.0))
                if clash == 0.0:
                    break
            if best is not None and best[0] == 0.0:
                break
        if best is None:  # no spot inside the axes within reach: beside its point, clipped by the figure
            x = px + offset
            best = (0.0, Placed(1, x, py, Box(x, py - h / 2, x + w, py + h / 2), free=False))
        placed[i] = best[1]
        taken.append(best[1].box)
    return [placed[i] for i in range(len(points))]


def _shifts(reach: int) -> list[int]:
    """0, 1, -1, 2, -2, ...: the nearest heights first."""
    return [0] + [s for k in range(1, reach + 1) for s in (k, -k)]
