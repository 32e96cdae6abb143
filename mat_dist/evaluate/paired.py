"""The difference in robust accuracy between two configs evaluated on the same test images, with its interval.

Two configs' union accuracies each carry a 95% Wilson interval, but asking whether those intervals overlap
throws away the pairing: both were attacked on the same images, and most images are broken (or held) by
both, so the difference is known far better than either figure. And with several training seeds a config's
figure also varies with the seed. The interval adds the two sources of noise (the images drawn for the
test set, and the seeds drawn for training) and reads a t quantile:

    difference  D = mean over a's seeds and the images - the same for b
    image term  v_img = var over images of (a's seed-mean - b's seed-mean on that image) / images
    seed terms  v_a = var over a's seeds of a's accuracy / a's seeds (0 for one seed), v_b the same
    interval    D +- t(0.975, df) sqrt(v_img + v_a + v_b), df by Welch-Satterthwaite (each seed term
                has seeds - 1 degrees of freedom, the image term images - 1)

Why not a bootstrap over seeds (this module's former interval): with three seeds it resamples three values,
so it sees about two thirds of their variance and reads normal quantiles where the seed term has 2 degrees
of freedom (t = 4.3, not 1.96). In simulated studies (scripts/interval_coverage.py, 1,000 each) its 95%
interval covered the true difference 88% of the time where the seed dominates and 93% where one side's seeds
spread as MAT (rotated)'s do in the study; this one covers 96% in both, and 97-100% where seeds matter less.
The seed terms count each seed's image-level noise a second time (it is in v_img too), which errs wide: with
no seed effect the interval is about 1.5x the width one knowing the true variance would have. Subtracting that
noise (an ANOVA estimate of the seed variance) was tried: it covered 91-93% where the seed dominates, because
Welch-Satterthwaite then trusts a small, poorly known seed term with too many degrees of freedom.
A row of one seed has no seed term: its interval is that one model's, its seed-to-seed spread unknown (and seeds
that happen to score exactly alike lose theirs: a variance from three values can come out 0).

The point estimate is the plain difference of the two seed-means. A difference counts when its interval
excludes 0; otherwise it is a tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class PairedDifference:
    difference: float            # mean_seeds acc(a) - mean_seeds acc(b), a fraction in [-1, 1]
    interval: tuple[float, float]  # its 95% interval over images and seeds
    images: int
    seeds: tuple[int, int]       # (a's, b's)
    matched: bool = False        # seed i of a paired with seed i of b (the seed term: their differences' spread)

    @property
    def separated(self) -> bool:
        """True when the interval excludes 0: the difference counts."""
        return self.interval[0] > 0 or self.interval[1] < 0

    def text(self) -> str:
        lo, hi = self.interval
        return f"{100 * self.difference:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _seed_term(accuracies: np.ndarray) -> tuple[float, int]:
    """(variance of the seed-mean from training randomness, its degrees of freedom): the per-seed accuracies'
    sample variance over their count; (0, 0) for one seed, whose spread is unknown."""
    k = accuracies.size
    return (float(accuracies.var(ddof=1)) / k, k - 1) if k > 1 else (0.0, 0)


def _t_interval(difference: float, terms: list[tuple[float, int]]) -> tuple[float, float]:
    """difference +- t sqrt(sum of the variance terms), df by Welch-Satterthwaite."""
    variance = sum(v for v, _ in terms)
    if variance <= 0:  # no image differs and no seed varies: the difference is exact
        return difference, difference
    df = variance ** 2 / sum(v ** 2 / d for v, d in terms if v > 0)
    half = float(stats.t.ppf(0.5 + LEVEL / 2, df)) * variance ** 0.5
    return difference - half, difference + half


def paired_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray], *,
                      matched: bool = False) -> PairedDifference:
    """``a`` and ``b``: each seed's per-image robustness (bool, one entry per test image, the same images in the
    same order for every seed of both). Returns acc(a) - acc(b) with its 95% interval over images and seeds.
    ``matched``: a's seed i belongs with b's seed i (a model fine-tuned from that seed of b), so the seed term is
    that of the per-seed differences (a paired t over seeds), in which a swing both sides share cancels; else
    each side's seeds count on their own. One image has no image term (its variance is unknown, not 0: give
    more)."""
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
    per_image = ra.mean(axis=0) - rb.mean(axis=0)  # seed-mean difference on each image
    image_term = (float(per_image.var(ddof=1)) / n if n > 1 else 0.0, n - 1)
    if matched:
        seed_terms = [_seed_term(ra.mean(axis=1) - rb.mean(axis=1))]
    else:
        seed_terms = [_seed_term(ra.mean(axis=1)), _seed_term(rb.mean(axis=1))]
    difference = float(ra.mean() - rb.mean())
    lo, hi = _t_interval(difference, [image_term, *seed_terms])
    return PairedDifference(difference=difference, interval=(max(lo, -1.0), min(hi, 1.0)), images=n,
                            seeds=(ra.shape[0], rb.shape[0]), matched=matched)


def accuracy_interval(a: Sequence[np.ndarray]) -> tuple[float, float]:
    """The 95% interval of one config's seed-mean accuracy over images and seeds: its paired difference to a
    config robust on no image. Pooling several seeds' images as independent trials (a Wilson interval of
    seeds x images) would be too narrow: the seeds share the images."""
    n = len(np.asarray(a[0])) if a else 0
    lo, hi = paired_difference(a, [np.zeros(n, dtype=bool)]).interval
    return max(lo, 0.0), min(hi, 1.0)  # an accuracy's interval stays in [0, 1]


SeedUnions = tuple[np.ndarray, list[np.ndarray]]  # (example ids, each seed's robustness per image, in that order)


def paired_on_shared_images(a: SeedUnions, b: SeedUnions, *, matched: bool = False) -> PairedDifference | None:
    """``paired_difference`` on the test images both sides were attacked on (matched by example id); None when
    they share none."""
    _, in_a, in_b = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    if in_a.size == 0:
        return None
    return paired_difference([u[in_a] for u in a[1]], [u[in_b] for u in b[1]], matched=matched)


def read_seed_unions(eval_dirs: Sequence[Path]) -> SeedUnions | None:
    """(example ids, each folder's all_attacks per image) from the folders' results.parquet, one folder per seed;
    None when a folder's per-image results cannot be read or the seeds were attacked on other images (callers
    then fall back to comparing intervals)."""
    try:
        read = [union_per_image(d) for d in eval_dirs]
    except (OSError, ValueError, KeyError):  # missing, corrupt or not an evaluation's results.parquet
        return None
    if not read or any(not np.array_equal(ids, read[0][0]) for ids, _ in read):
        return None
    return read[0][0], [u for _, u in read]


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
