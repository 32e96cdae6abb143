"""The difference in robust accuracy between two configs evaluated on the same test images, with its interval.

Two configs' union accuracies each carry a 95% Wilson interval, but asking whether those intervals overlap
throws away the pairing: both were attacked on the same images, and most images are broken (or held) by
both, so the difference is known far better than either figure. And with several training seeds a config's
figure also varies with the seed. The interval here is a two-level bootstrap (as the field's
reliable-evaluation tools recommend for few seeds):

    for each of R resamples:
        draw test images with replacement, the same draw for every seed of both configs (the pairing)
        draw each config's seeds with replacement (training randomness)
        difference = mean over the drawn seeds of (a's union accuracy on the drawn images)
                     - the same for b
    interval = the 2.5% and 97.5% quantiles of the R differences

The point estimate is the plain difference of the two seed-means. A difference counts when its interval
excludes 0; otherwise it is a tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

RESAMPLES = 10_000


@dataclass(frozen=True)
class PairedDifference:
    difference: float            # mean_seeds acc(a) - mean_seeds acc(b), a fraction in [-1, 1]
    interval: tuple[float, float]  # its 95% bootstrap interval
    images: int
    seeds: tuple[int, int]       # (a's, b's)

    @property
    def separated(self) -> bool:
        """True when the interval excludes 0: the difference counts."""
        return self.interval[0] > 0 or self.interval[1] < 0

    def text(self) -> str:
        lo, hi = self.interval
        return f"{100 * self.difference:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def paired_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray], *, resamples: int = RESAMPLES,
                      seed: int = 0, matched: bool = False) -> PairedDifference:
    """``a`` and ``b``: each seed's per-image robustness (bool, one entry per test image, the same images in the
    same order for every seed of both). Returns acc(a) - acc(b) with its two-level bootstrap interval.
    ``matched``: a's seed i belongs with b's seed i (a model fine-tuned from that seed of b), so each resample
    draws one list of seed indices for both sides; else each side's seeds are drawn on their own."""
    if not a or not b:
        raise ValueError("each config needs at least one seed's per-image results")
    ra = np.stack([np.asarray(v, dtype=bool) for v in a]).astype(np.float64)  # (seeds, images)
    rb = np.stack([np.asarray(v, dtype=bool) for v in b]).astype(np.float64)
    if ra.shape[1] != rb.shape[1] or ra.shape[1] == 0:
        raise ValueError(f"the two configs were evaluated on different numbers of images ({ra.shape[1]}, "
                         f"{rb.shape[1]}); a paired difference needs the same images")
    if matched and ra.shape[0] != rb.shape[0]:
        raise ValueError(f"matched seeds need as many seeds on each side ({ra.shape[0]}, {rb.shape[0]})")
    n = ra.shape[1]
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for chunk in range(0, resamples, 1_000):  # 1,000 resamples at a time: (1000, n) counts stay small
        r = min(1_000, resamples - chunk)
        counts = np.stack([np.bincount(row, minlength=n) for row in rng.integers(0, n, size=(r, n))])  # (r, n)
        acc_a = counts @ ra.T / n  # (r, seeds): each seed's accuracy on each resample's images
        acc_b = counts @ rb.T / n
        pick_a = rng.integers(0, ra.shape[0], size=(r, ra.shape[0]))
        pick_b = pick_a if matched else rng.integers(0, rb.shape[0], size=(r, rb.shape[0]))
        rows = np.arange(r)[:, None]
        diffs[chunk:chunk + r] = acc_a[rows, pick_a].mean(axis=1) - acc_b[rows, pick_b].mean(axis=1)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return PairedDifference(difference=float(ra.mean() - rb.mean()), interval=(float(lo), float(hi)), images=n,
                            seeds=(ra.shape[0], rb.shape[0]))


def accuracy_interval(a: Sequence[np.ndarray], *, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The 95% interval of one config's seed-mean accuracy with the same two-level bootstrap (test images and
    seeds resampled): its paired difference to a config robust on no image. Pooling several seeds' images as
    independent trials (a Wilson interval of seeds x images) would be too narrow: the seeds share the images."""
    n = len(np.asarray(a[0])) if a else 0
    return paired_difference(a, [np.zeros(n, dtype=bool)], resamples=resamples, seed=seed).interval


def union_per_image(eval_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(example ids, all_attacks robustness per image) of one evaluation folder's results.parquet."""
    import pyarrow.parquet as pq

    from mat_dist.evaluate.metrics import robust_matrix

    robust, _, _, examples = robust_matrix(pq.read_table(eval_dir / "results.parquet"))
    return examples, robust.all(axis=1)


def aligned_unions(eval_dirs: Sequence[Path]) -> list[np.ndarray]:
    """Every folder's per-image union, checked to cover the same test images."""
    out: list[np.ndarray] = []
    first: Any = None
    for d in eval_dirs:
        ids, union = union_per_image(d)
        if first is None:
            first = ids
        elif not np.array_equal(ids, first):
            raise ValueError(f"{d} was evaluated on other test images than {eval_dirs[0]}")
        out.append(union)
    return out
