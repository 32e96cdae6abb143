"""How often the paired interval (mat_dist.evaluate.paired) covers the true difference, against the two-level
bootstrap it replaced, in simulated studies whose truth is known.

Each simulated method's model of seed s holds test image i with probability
    sigmoid(difficulty_i + skill + seed_s + noise_si)
difficulty ~ N(0, 2) per image (shared by both methods: the pairing), seed_s ~ N(0, seed_sd) per trained model,
noise_si ~ N(0, noise_sd) per model and image (the images one seed happens to hold and another not). The true
difference is that of the two methods' expected accuracies over images and seeds (a Monte Carlo of a million
draws). Each trial draws a test set and the seeds of each method (three, or three against one) and asks whether
the 95% interval holds the truth.

    python scripts/interval_coverage.py [--trials 400] [--report reports/interval-coverage/coverage.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.special import expit

from mat_dist.evaluate.paired import paired_difference

SKILL = (-0.9, -1.1)  # logits of the two methods: about 33% and 30% union, the study's range
SETTINGS = [  # (seed sd of a, seed sd of b, per-image noise sd: logits; seeds of a, seeds of b)
    (0.0, 0.0, 0.3, 3, 3),   # no seed effect
    (0.1, 0.1, 0.3, 3, 3),   # a little of both
    (0.2, 0.03, 0.3, 3, 3),  # one method's seeds spread (as MAT (rotated)'s 4.7 points), the other's do not
    (0.3, 0.3, 0.1, 3, 3),   # the seed dominates
    (0.1, 0.1, 0.3, 3, 1),   # three seeds against one: the one-seed side brings no seed term
    (0.2, 0.2, 0.3, 3, 1),
]


def bootstrap_interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, resamples: int = 2_000):
    """The former interval: resample the images (the same draw for every seed of both) and each method's seeds
    with replacement; the 2.5% and 97.5% quantiles of the seed-mean differences."""
    n = a.shape[1]
    counts = np.stack([np.bincount(r, minlength=n) for r in rng.integers(0, n, size=(resamples, n))])
    acc_a, acc_b = counts @ a.T / n, counts @ b.T / n  # (resamples, seeds)
    rows = np.arange(resamples)[:, None]
    diffs = (acc_a[rows, rng.integers(0, a.shape[0], size=(resamples, a.shape[0]))].mean(axis=1)
             - acc_b[rows, rng.integers(0, b.shape[0], size=(resamples, b.shape[0]))].mean(axis=1))
    return tuple(np.quantile(diffs, [0.025, 0.975]))


def simulate(seed_sd: tuple[float, float], noise_sd: float, *, trials: int, images: int = 1_000,
             seeds: tuple[int, int] = (3, 3), rng: np.random.Generator, bootstrap: bool = True) -> dict[str, float]:
    """Coverage and mean width (points) of the paired interval (and of the bootstrap) over ``trials`` studies."""
    def expected(skill: float, sd: float) -> float:
        m = 1_000_000
        return float(expit(rng.normal(0, 2, m) + skill + rng.normal(0, sd, m) + rng.normal(0, noise_sd, m)).mean())

    truth = expected(SKILL[0], seed_sd[0]) - expected(SKILL[1], seed_sd[1])
    hits = {"paired": 0, "bootstrap": 0}
    width = {"paired": 0.0, "bootstrap": 0.0}
    spread = 0.0  # a's seed-to-seed standard deviation, points, averaged over the trials
    for _ in range(trials):
        difficulty = rng.normal(0, 2, images)
        a, b = (np.stack([rng.random(images) < expit(difficulty + skill + rng.normal(0, sd)
                                                      + rng.normal(0, noise_sd, images)) for _ in range(k)])
                for skill, sd, k in zip(SKILL, seed_sd, seeds))
        spread += 100 * float(a.mean(axis=1).std(ddof=1)) / trials
        intervals = {"paired": paired_difference(list(a), list(b)).interval}
        if bootstrap:
            intervals["bootstrap"] = bootstrap_interval(a.astype(float), b.astype(float), rng)
        for name, (lo, hi) in intervals.items():
            hits[name] += lo <= truth <= hi
            width[name] += 100 * (hi - lo)
    out = {"truth": 100 * truth, "a_seed_sd": spread,
           "paired": hits["paired"] / trials, "paired_width": width["paired"] / trials}
    if bootstrap:
        out |= {"bootstrap": hits["bootstrap"] / trials, "bootstrap_width": width["bootstrap"] / trials}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--report", type=Path, help="write the table there (markdown) as well as to stdout")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lines = [f"Coverage of the true difference by the 95% interval, {args.trials} simulated studies per row "
             "(1,000 test images; widths in points):", "",
             "| seeds a, b | seed sd a, b (logit) | per-image noise sd | a's seed-to-seed sd (points) | "
             "true difference | paired interval: coverage | width | former bootstrap: coverage | width |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for sd_a, sd_b, noise, k_a, k_b in SETTINGS:
        r = simulate((sd_a, sd_b), noise, trials=args.trials, seeds=(k_a, k_b), rng=rng)
        lines.append(f"| {k_a}, {k_b} | {sd_a}, {sd_b} | {noise} | {r['a_seed_sd']:.1f} | {r['truth']:+.2f} | {r['paired']:.3f} | "
                     f"{r['paired_width']:.1f} | {r['bootstrap']:.3f} | {r['bootstrap_width']:.1f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.report.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.report)
    print(text)


if __name__ == "__main__":
    main()
