"""The study: union robustness against training cost, for whatever methods of a study preset are finished.

Reads a reproduction folder (``runs/<label>/metrics.jsonl``, ``evals/<label>/summary.json`` and
``results.parquet``; the weights are not needed, so committed results are enough) and writes:

    study.md             one row per method (seeds pooled): clean, union and per-norm robust accuracy with
                         95% intervals, training passes (paper Table 6 counts times the batches trained; a
                         fine-tuned method adds its source's) and training seconds; the Pareto front of union
                         against passes; every difference to MAT (rotated) paired on the test images both have
                         (every seed of each); and the paper's claims, one by one, each with its paired difference and a
                         verdict
    study.json           the same figures as data
    study_cost.png       union against training passes, the Pareto front marked
    study_cost_norms.png the same per norm

A difference counts only when its 95% interval (over images and seeds, a t interval with each side's seed
spread, ``evaluate.paired``) excludes 0; otherwise the report calls it a tie.

A method of the close set with second-stage evaluations (``matd reproduce --close``: ``evals-<N>/``, more
seeds on more images) is reported from those; the others from their first-stage ones (``evals/``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mat_dist.plumbing.atomic import read_jsonl, write_atomic
from mat_dist.plumbing.console import plural
from mat_dist.plumbing.errors import UserError
from mat_dist.evaluate.metrics import wilson_interval
from mat_dist.evaluate.paired import PairedDifference, accuracy_interval, paired_on_shared_images
from mat_dist.reproduce.figure_labels import Box, place_labels
from mat_dist.reproduce.layout import CLOSE_FILE, EVALS, RUNS, close_evals, run_label
from mat_dist.reproduce.presets import Preset

REFERENCE = "mat_rotate"  # every row's paired difference is against MAT with rotated norms
NORMS = ("linf", "l2", "l1")


@dataclass
class Row:
    """One method, its seeds pooled."""

    name: str
    method: str
    seeds: list[int]
    per_image: dict[str, list[np.ndarray]]  # "all" and each norm -> one robustness vector per seed
    clean: list[float]
    passes: float        # mean over seeds, the source's included for a fine-tuned method
    own_passes: float    # this run's alone
    seconds: float       # training wall seconds (fastest epoch x epochs), the source's included
    own_seconds: float   # this run's alone
    images: int
    ids: np.ndarray | None = None  # the test images' ids, the same for every seed (pairing matches them)
    close: bool = False            # from the second stage's evaluations (evals-<N>)
    source: str | None = None
    front: bool = False
    vs_reference: PairedDifference | None = None
    per_norm_fronts: dict[str, bool] = field(default_factory=dict)
    _intervals: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)

    def per_seed(self, key: str = "all") -> list[float]:
        """Each seed's robust accuracy, in the order of ``seeds``."""
        return [float(v.mean()) for v in self.per_image[key]]

    def accuracy(self, key: str = "all") -> float:
        return float(np.mean(self.per_seed(key)))

    def interval(self, key: str = "all") -> tuple[float, float]:
        """95%: one seed's Wilson interval; over several seeds the t interval over images and seeds
        (``evaluate.paired.accuracy_interval``), computed once per key."""
        if key not in self._intervals:
            seeds = self.per_image[key]
            self._intervals[key] = (wilson_interval(int(seeds[0].sum()), seeds[0].size) if len(seeds) == 1
                                    else accuracy_interval(seeds))
        return self._intervals[key]


@dataclass(frozen=True)
class StudyReport:
    report: Path
    figures: list[Path]
    rows: list[Row]


def _per_image(eval_dir: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import pyarrow.parquet as pq

    from mat_dist.evaluate.metrics import robust_matrix

    robust, attacks, norms, examples = robust_matrix(pq.read_table(eval_dir / "results.parquet"))
    out = {"all": robust.all(axis=1)}
    for norm in NORMS:
        cols = [i for i, a in enumerate(attacks) if norms[a] == norm]
        out[norm] = robust[:, cols].all(axis=1) if cols else np.zeros(len(examples), dtype=bool)
    return examples, out


def _training(run_dir: Path) -> tuple[float, float] | None:
    """(training passes, training seconds) of a finished run folder, from its metrics.

    The seconds are the fastest full-radius epoch's times the epochs: an estimate of the idle machine's time.
    Not the sum nor the median: a study shares its machine for hours, and an epoch that ran while the process
    was stopped (SIGSTOP while something else was timed) read 1,245 s for 30 s of work, and standard training,
    crowded out for 17 of its 30 epochs, had a median of 76 s an epoch against 6 s idle. Only epochs at the
    full radii (``radius_scale`` 1) count when there are any: the training work of every epoch is the same,
    but the per-epoch check's APGD-T attacks only the images APGD-CE left robust, so the ramp's epochs, not
    yet robust at the full radii, check faster (at_linf 17 s against 20 s). A run whose every epoch was
    crowded still reads high: the estimate never falls below the idle time, only the crowding lifts it."""
    lines = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    if not lines:
        return None
    timed = [r for r in lines if r.get("epoch_time_s") is not None]
    full = [r for r in timed if float(r.get("radius_scale", 1.0)) >= 1.0] or timed
    seconds = min(float(r["epoch_time_s"]) for r in full) * len(timed) if timed else 0.0
    return float(lines[-1].get("train/passes", 0.0)), seconds


def _evaluated_seeds(preset: Preset, output: Path, name: str, seeds: int) -> tuple[Path, list[int], bool]:
    """(evaluations folder, seeds evaluated there, second stage?) of one method: the second stage's when it has
    evaluated any seed of it, else the first stage's."""
    candidates = [(output / EVALS, seeds, False)]
    if preset.close_examples is not None and preset.close_seeds is not None:
        candidates.insert(0, (output / close_evals(preset.close_examples), preset.close_seeds, True))
    for folder, count, second in candidates:
        done = [seed for seed in range(count) if (folder / run_label(name, seed) / "results.parquet").is_file()
                and _training(output / RUNS / run_label(name, seed)) is not None]
        if done:
            return folder, done, second
    return output / EVALS, [], False


def _cost(preset: Preset, output: Path, name: str, seed: int) -> tuple[float, float, float, float]:
    """(passes, seconds, own passes, own seconds) of one run; fine-tuning costs its source's training too."""
    label = run_label(name, seed)
    own_passes, own_seconds = _training(output / RUNS / label)
    passes, seconds = own_passes, own_seconds
    for source in preset.sources(name):
        source_cost = _training(output / RUNS / run_label(source, seed))
        if source_cost is None:
            raise UserError(f"{output / RUNS / label} was fine-tuned from {source}, whose run folder "
                            f"{output / RUNS / run_label(source, seed)} has no metrics: its cost is unknown")
        passes, seconds = passes + source_cost[0], seconds + source_cost[1]
    return passes, seconds, own_passes, own_seconds


def collect_rows(preset: Preset, output: Path, seeds: int) -> list[Row]:
    """Every method with at least one seed trained and evaluated, in the preset's order; a method with
    second-stage evaluations from those."""
    rows: list[Row] = []
    for spec in preset.methods:
        folder, done, second = _evaluated_seeds(preset, output, spec.name, seeds)
        per_image: dict[str, list[np.ndarray]] = {k: [] for k in ("all", *NORMS)}
        ids: np.ndarray | None = None
        clean, costs = [], []
        for seed in done:
            eval_dir = folder / run_label(spec.name, seed)
            examples, robust = _per_image(eval_dir)
            if ids is None:
                ids = examples
            elif not np.array_equal(ids, examples):
                raise UserError(f"{eval_dir} was evaluated on other test images than seed {done[0]} of {spec.name}")
            for key, values in robust.items():
                per_image[key].append(values)
            clean.append(float(json.loads((eval_dir / "summary.json").read_text())["clean"]))
            costs.append(_cost(preset, output, spec.name, seed))
        if done:
            passes, seconds, own, own_seconds = (float(np.mean(column)) for column in zip(*costs))
            rows.append(Row(name=spec.name, method=spec.method, seeds=done, per_image=per_image, clean=clean,
                            passes=passes, own_passes=own, seconds=seconds, own_seconds=own_seconds,
                            images=len(per_image["all"][0]), ids=ids, close=second, source=spec.init_from))
    return rows


def cost_front(points: list[tuple[float, float]]) -> list[bool]:
    """Which (cost, accuracy) points no other point beats: as cheap or cheaper and at least as accurate, one of
    the two strictly."""
    return [not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for c2, a2 in points) for c, a in points]


@dataclass(frozen=True)
class FrontCheck:
    """One row against its rival at no more cost: is it on the front once the uncertainty counts?"""

    name: str
    rival: str | None                    # of the other rows with no more passes, the one it falls furthest below
    difference: PairedDifference | None  # name - rival, paired

    @property
    def standing(self) -> str:
        if self.difference is None:  # no other row at no more passes
            return "on the front (the cheapest)"
        return {"above": "on the front", "tie": "on the front within its interval (a tie)",
                "below": "off the front"}[verdict(self.difference)]


def front_checks(rows: list[Row]) -> list[FrontCheck]:
    """Each row paired against its rival: of the other rows that cost no more passes, the one it falls
    furthest below (or rises least above) on the test images the two share (every seed of each), so that rows
    evaluated on different images and seeds (the second stage's) are compared as their paired difference says. The
    point-estimate front (``cost_front``) can hinge on a point of difference; a row tied with its rival is on
    the front as far as the images and seeds can tell, a row separated below it is not."""
    checks = []
    for r in rows:
        paired = [(o, paired_rows(r, o)) for o in rows if o is not r and o.passes <= r.passes]
        paired = [(o, d) for o, d in paired if d is not None]
        if not paired:
            checks.append(FrontCheck(r.name, None, None))
            continue
        rival, d = min(paired, key=lambda od: (od[1].difference, od[1].interval[1]))
        checks.append(FrontCheck(r.name, rival.name, d))
    return checks


# ---------------------------------------------------------------- claims

@dataclass(frozen=True)
class Claim:
    text: str                      # the paper's (or the field's) claim
    better: str                    # the method the claim says is more robust (or as robust)
    other: str
    expect: str = "above"          # above: better > other; tie: comparable; reach: better >= other;
    #                                compare: no claim either way, the verdict is the answer


def claims() -> list[Claim]:
    return [
        *[Claim(f"MAT is more robust to the union than AT in {n}", "mat", f"at_{n}") for n in NORMS],
        *[Claim(f"MAT (rotated) is more robust to the union than AT in {n}", REFERENCE, f"at_{n}") for n in NORMS],
        Claim("MAT is more robust to the union than the vanilla ensemble (ensemble AT)", "mat", "ensemble_at"),
        Claim("MAT is comparable to MSD on the union", "mat", "msd", expect="tie"),
        Claim("MAT (rotated) against E-AT, at the same passes per batch (K+1)", REFERENCE, "e_at", expect="tie"),
        Claim("rotating the norms over the slots beats the paper's fixed assignment", REFERENCE, "mat"),
        Claim("MAT with E-AT's sampling against MAT (rotated)", "mat_eat", REFERENCE, expect="compare"),
        Claim("MAT with E-AT's sampling against E-AT, at the same passes", "mat_eat", "e_at", expect="compare"),
        Claim("MAT (rotated) against SAT, at the same passes", REFERENCE, "sat", expect="compare"),
        *[Claim(f"MAT (rotated) against {name.upper()}, at a third of its passes (every image attacked in one "
                f"norm, not in all three)", REFERENCE, name, expect="compare") for name in ("avg", "max")],
        Claim("MAT+MSD (the worst norm per step, on three sub-models) against MSD, at the same passes", "mat_msd",
              "msd", expect="compare"),
        Claim("MAT+MSD against MAT (rotated)", "mat_msd", REFERENCE, expect="compare"),
        Claim("E-AT fine-tuning of l_inf-AT reaches E-AT from scratch", "ft_e_at", "e_at", expect="reach"),
        Claim("MAT fine-tuned from l_inf-AT reaches MAT (rotated) from scratch", "ft_mat_rotate", REFERENCE,
              expect="reach"),
        Claim("MAT fine-tuned from l_inf-AT, half the rows repeated, reaches MAT (rotated) from scratch",
              "ft_mat_rotate_rep", REFERENCE, expect="reach"),
        Claim("fine-tuning l_inf-AT: MAT (half the rows repeated) against E-AT, at the same passes",
              "ft_mat_rotate_rep", "ft_e_at"),
    ]


def _holds(c: Claim, v: str) -> str:
    if c.expect == "above":
        return {"above": "yes", "below": "no: reversed", "tie": "not shown (a tie)"}[v]
    if c.expect == "compare":
        return {"above": f"{c.better} above", "tie": "a tie", "below": f"{c.better} below"}[v]
    if c.expect == "reach":
        return {"above": "yes (above)", "tie": "yes (a tie)", "below": "no: below"}[v]
    return {"tie": "yes (a tie)", "above": f"no: {c.better} is above", "below": f"no: {c.better} is below"}[v]


def verdict(d: PairedDifference) -> str:
    if not d.separated:
        return "tie"
    return "above" if d.difference > 0 else "below"


def seed_matched(a: Row, b: Row) -> bool:
    """True when seed s of a and seed s of b started from the same weights, for every seed of both: two
    fine-tunings of one source (seed s of each from the source's seed s), or a fine-tuned row and its source.
    Their seeds then swing together (a low source seed pulls both down), and pairing them seed by seed takes
    that shared swing out of the difference instead of counting it on each side."""
    related = (a.source is not None and a.source == b.source) or a.source == b.name or b.source == a.name
    return related and a.seeds == b.seeds


def paired_rows(a: Row, b: Row, key: str = "all", *, matched: bool | None = None) -> PairedDifference | None:
    """a - b on the test images both have, every seed of each (a second-stage row against a first-stage one: its
    three seeds against the one, on the first stage's images); each side's seeds spread on their own.
    ``matched``: a's seed s started from the same weights as b's seed s (a fine-tuned row and its source), so
    only the seeds both have count, and the seed term is the spread of their per-seed differences; by default
    (None) whenever ``seed_matched`` says so. None without a common image (or, matched, a common seed)."""
    if matched is None:
        matched = seed_matched(a, b)
    seeds_a, seeds_b = a.seeds, b.seeds
    if matched:
        seeds_a = seeds_b = sorted(set(a.seeds) & set(b.seeds))
        if not seeds_a:
            return None
    ids_a = a.ids if a.ids is not None else np.arange(a.images)
    ids_b = b.ids if b.ids is not None else np.arange(b.images)
    return paired_on_shared_images((ids_a, [a.per_image[key][a.seeds.index(s)] for s in seeds_a]),
                                   (ids_b, [b.per_image[key][b.seeds.index(s)] for s in seeds_b]), matched=matched)


def _paired(rows: dict[str, Row], a: str, b: str, key: str = "all") -> PairedDifference | None:
    if a not in rows or b not in rows:
        return None
    return paired_rows(rows[a], rows[b], key)


# ---------------------------------------------------------------- writing

def read_close_set(output: Path) -> dict[str, Any] | None:
    """The close set the second stage recorded (``close.json``: margin, members, first-seed unions), if any."""
    path = output / CLOSE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def seed_span(seeds: list[int]) -> str:
    """``0-2`` for consecutive seeds, else the list (``0,2``); one seed as itself."""
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def evaluated_on(rows: list[Row], close: dict[str, Any] | None) -> str:
    """The sentence on what each row rests on: which methods on how many images and seeds; with a second
    stage, the close set and its margin."""
    groups: dict[tuple[int, int], list[str]] = {}
    for r in rows:
        groups.setdefault((r.images, len(r.seeds)), []).append(r.name)
    if close is None and len(groups) == 1:
        return f"Test images per method: {rows[0].images}."
    parts = [f"{images:,} test images x {plural(n, 'seed')}: {', '.join(names)}"
             for (images, n), names in sorted(groups.items(), reverse=True)]
    text = "Evaluated on " + "; on ".join(parts) + "."
    if close is not None:
        unions = close["unions"]
        best = max(unions, key=unions.get)
        text += (f" The close set (second stage, `--close`): the methods whose first-seed union on "
                 f"{close['examples']:,} images is within {close['margin']:g} points of the best ({best}, "
                 f"{_pct(unions[best])}%), and {REFERENCE} always: {', '.join(close['members'])}.")
        if close.get("unfinished"):
            text += (f" A provisional set (`--provisional`), drawn before the first seed of "
                     f"{', '.join(close['unfinished'])} was finished.")
    return text


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(lo_hi: tuple[float, float]) -> str:
    return f"[{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]"


MARKER_SIZE, CAP_SIZE = 6.0, 3.0  # points (1/72 inch): matplotlib's default marker, the error bars' caps


def _plot(rows: list[Row], path: Path, keys: tuple[str, ...], title: str) -> None:
    import matplotlib.pyplot as plt

    fig = study_figure(rows, keys, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def study_figure(rows: list[Row], keys: tuple[str, ...], title: str, dpi: float = 120) -> Any:
    """One panel per accuracy key: each row's accuracy (with its interval) against its training passes, the
    Pareto front, and the labels placed (``_label_points``) for a figure saved at ``dpi``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(6.2 * len(keys), 4.6), squeeze=False, dpi=dpi)
    lines = []  # each panel's front, for its labels to keep off
    for ax, key in zip(axes[0], keys):
        points = [(r.passes, r.accuracy(key)) for r in rows]
        front = cost_front(points)
        for r, on_front in zip(rows, front):
            lo, hi = r.interval(key)
            acc = r.accuracy(key)
            ax.errorbar(r.passes, 100 * acc, yerr=[[100 * max(acc - lo, 0.0)], [100 * max(hi - acc, 0.0)]], fmt="o",
                        color="tab:red" if on_front else "tab:blue", capsize=CAP_SIZE, markersize=MARKER_SIZE,
                        alpha=0.9)
        line = sorted((p, 100 * a) for (p, a), f in zip(points, front) if f)
        ax.step([p for p, _ in line], [a for _, a in line], where="post", color="tab:red", lw=1,
                label="Pareto front")
        lines.append(line)
        ax.set_xscale("log")
        ax.set_xlabel("training passes (forward + backward, log scale)")
        ax.set_ylabel(f"robust accuracy, {'union of all norms' if key == 'all' else key} (%)")
        ax.set_title(f"{title}: {'union' if key == 'all' else key}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        ax.margins(x=0.12, y=0.06)  # room beside the outermost points for their labels
    fig.tight_layout()
    for ax, key, line in zip(axes[0], keys, lines):
        _label_points(fig, ax, rows, key, line)
    return fig


def _label_points(fig: Any, ax: Any, rows: list[Row], key: str, front: list[tuple[float, float]]) -> None:
    """Each method's name beside its point, on no other label, marker, error bar, the front's line (``front``:
    its corners in data units, % accuracy) or the legend (figure_labels)."""
    ax.set_xlim(ax.get_xlim())  # freeze the limits: the labels are placed in pixels of these axes
    ax.set_ylim(ax.get_ylim())
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    texts = [ax.text(0.5, 0.5, r.name, fontsize=7, va="center", transform=ax.transAxes) for r in rows]
    sizes = [(box.width, box.height) for box in (t.get_window_extent(renderer) for t in texts)]
    for t in texts:
        t.remove()
    px_per_pt = fig.dpi / 72
    marker, cap = px_per_pt * MARKER_SIZE / 2, px_per_pt * CAP_SIZE  # half-widths in pixels
    points, obstacles = [], []
    for r in rows:
        x, y = to_px((r.passes, 100 * r.accuracy(key)))
        lo, hi = r.interval(key)
        _, y_lo = to_px((r.passes, 100 * lo))
        _, y_hi = to_px((r.passes, 100 * hi))
        points.append((x, y))
        obstacles += [Box(x - marker, y - marker, x + marker, y + marker),  # the marker
                      Box(x - cap, y_lo, x + cap, y_hi)]                    # the error bar and its caps
    corners = [to_px(p) for p in front]
    for (x0, y0), (x1, y1) in zip(corners, corners[1:]):  # the step line: along, then up
        obstacles += [Box(x0, y0 - 1, x1, y0 + 1), Box(x1 - 1, min(y0, y1), x1 + 1, max(y0, y1))]
    legend = ax.get_legend()
    if legend is not None:
        extent = legend.get_window_extent(renderer)
        obstacles.append(Box(extent.x0, extent.y0, extent.x1, extent.y1))
    frame = ax.get_window_extent(renderer)
    bounds = Box(frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)
    to_data = ax.transData.inverted().transform
    spots = place_labels(points, sizes, obstacles, bounds)
    crowded = [r.name for r, spot in zip(rows, spots) if not spot.free]
    if crowded:  # drawn anyway, overlapping the least: say so rather than hand over a figure that hides it
        print(f"study figure ({key}): no free spot for the labels of {', '.join(crowded)}; they overlap other "
              f"marks", file=sys.stderr)
    for r, spot in zip(rows, spots):
        ax.annotate(r.name, (r.passes, 100 * r.accuracy(key)), xytext=tuple(to_data((spot.x, spot.y))),
                    textcoords="data", fontsize=7, ha="left" if spot.side > 0 else "right", va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.6", "shrinkA": 0, "shrinkB": 3})


def write_study(preset: Preset, output: Path, target: Path, *, seeds: int = 1,
                machine: str | None = None) -> StudyReport:
    """Write study.md, study.json and the two figures for the finished methods of ``output`` into ``target``."""
    rows = collect_rows(preset, output, seeds)
    close = read_close_set(output)
    by_name = {r.name: r for r in rows}
    for r, on_front in zip(rows, cost_front([(r.passes, r.accuracy()) for r in rows])):
        r.front = on_front
        r.vs_reference = _paired(by_name, r.name, REFERENCE) if r.name != REFERENCE else None
    target.mkdir(parents=True, exist_ok=True)
    figures = []
    if rows:
        figures = [target / "study_cost.png", target / "study_cost_norms.png"]
        _plot(rows, figures[0], ("all",), preset.name)
        _plot(rows, figures[1], NORMS, preset.name)
    missing = [m.name for m in preset.methods if m.name not in by_name]
    lines = [f"# Study {preset.name}: union robustness against training cost", "",
             f"{preset.data_note}.", "",
             f"Machine: {machine or _machine()}. Seeds per method: as listed. Robust accuracy is the per-image "
             f"worst case over the suite's attacks (all norms for the union), in % with its 95% interval: "
             f"Wilson for one seed; for several a t interval over images and seeds (the image-to-image and the "
             f"seed-to-seed variance added, a t quantile with the seeds' degrees of freedom: three seeds give "
             f"wide intervals; the seeds share the images, so pooling them as independent trials would be "
             f"too narrow). Passes: forward + backward passes of the network "
             f"(paper Table 6 per batch, times the batches trained; a fine-tuned method adds its source's). "
             f"Seconds: training wall time, the fastest epoch at the full radii (per-epoch check included) times "
             f"the epochs, an estimate of the idle machine's time: the training work of every epoch is the same, "
             f"so a slower epoch mostly measures other work on the shared machine, and a run crowded in every "
             f"epoch (a 3-epoch fine-tuning can be) reads high; seconds compare roughly and passes are the cost "
             f"axis. Paired: the difference to {REFERENCE} on the test images both have (every seed of each), "
             f"95% interval over images and each side's seeds (a row of one seed counts as that one model: its "
             f"seed-to-seed spread is not in the interval); a difference whose "
             f"interval holds 0 is a tie.", ""]
    if not rows:
        lines += ["No method is finished yet."]
    else:
        lines += ["| method | seeds | clean | union [95%] | l_inf | l_2 | l_1 | passes | seconds | Pareto | "
                  f"paired vs {REFERENCE} |", "|---|---|---:|---:|---:|---:|---:|---:|---:|:-:|---:|"]
        for r in rows:
            name = r.name + (f" (from {r.source})" if r.source else "")
            paired = r.vs_reference.text() + f" {verdict(r.vs_reference)}" if r.vs_reference else "-"
            lines.append(f"| {name} | {seed_span(r.seeds)} | {_pct(np.mean(r.clean))} | "
                         f"{_pct(r.accuracy())} {_ci(r.interval())} | " +
                         " | ".join(_pct(r.accuracy(n)) for n in NORMS) +
                         f" | {r.passes:,.0f} | {r.seconds:,.0f} | {'yes' if r.front else ''} | {paired} |")
        lines += ["", evaluated_on(rows, close), ""]
    lines += seed_to_seed(rows)
    tuned = [r for r in rows if r.source in by_name]
    if tuned:
        lines += ["## Fine-tuning against its source", "",
                  "Each fine-tuned model beside the model it started from, paired on the test images and seeds "
                  "both have (a fine-tuned seed s started from its source's seed s, so the seed term is the spread of "
                  "the per-seed differences); the extra cost is the fine-tuning's alone.", "",
                  "| method | source | union | source's union | paired difference [95%] | verdict | extra passes | "
                  "extra seconds | share of the source's passes |", "|---|---|---:|---:|---:|---|---:|---:|---:|"]
        for r in tuned:
            src = by_name[r.source]
            d = paired_rows(r, src, matched=True)
            if d is None:  # evaluated on no common test image or seed: nothing to pair
                continue
            lines.append(f"| {r.name} | {src.name} | {_pct(r.accuracy())} {_ci(r.interval())} | "
                         f"{_pct(src.accuracy())} {_ci(src.interval())} | {d.text()} | {verdict(d)} | "
                         f"{r.own_passes:,.0f} | {r.own_seconds:,.0f} | "
                         f"{100 * r.own_passes / max(src.passes, 1.0):.0f}% |")
        lines.append("")
    checks = front_checks(rows)
    if rows:
        lines += ["## The front, with its uncertainty", "",
                  "Each method paired against its rival: of the other methods that cost no more training passes, "
                  "the one it falls furthest below on the test images both have (every seed of each; seed by seed for "
                  "two fine-tunings of the same source seeds). Above it: on the front; a tie: on the front as far as "
                  "these images and seeds can tell; below it: off the front.", "",
                  "| method | passes | union | rival (no more passes) | rival's union | paired difference [95%] | "
                  "standing |", "|---|---:|---:|---|---:|---:|---|"]
        for c in checks:
            r = by_name[c.name]
            rival = by_name[c.rival] if c.rival else None
            lines.append(f"| {c.name} | {r.passes:,.0f} | {_pct(r.accuracy())} | {c.rival or '-'} | "
                         f"{_pct(rival.accuracy()) if rival else '-'} | "
                         f"{c.difference.text() if c.difference else '-'} | {c.standing} |")
        lines.append("")
    lines += ["## The claims, one by one", "",
              "Images: the test images both methods have; seeds: each side's (a side of one seed brings no "
              "seed-to-seed spread into the interval); *seed by seed*: two fine-tunings of the same source seeds, "
              "paired seed s with seed s (the seed term is the spread of their per-seed differences: a source "
              "seed's swing, which both share, cancels).", "",
              "| claim | methods | images, seeds | paired difference [95%] | verdict | holds? |",
              "|---|---|---:|---:|---|---|"]
    claim_data = []
    for c in claims():
        d = _paired(by_name, c.better, c.other)
        if d is None:
            lines.append(f"| {c.text} | {c.better} - {c.other} | - | not yet measured | - | - |")
            claim_data.append({"claim": c.text, "measured": False})
            continue
        v = verdict(d)
        holds = _holds(c, v)
        on = f"{d.images:,}, {d.seeds[0]} v {d.seeds[1]}" + (" seed by seed" if d.matched else "")
        lines.append(f"| {c.text} | {c.better} - {c.other} | {on} | {d.text()} | {v} | {holds} |")
        claim_data.append({"claim": c.text, "measured": True, "difference": d.difference, "interval": d.interval,
                           "verdict": v, "holds": holds, "images": d.images, "seeds": list(d.seeds),
                           "seed_by_seed": d.matched})
    if missing:
        lines += ["", f"Not finished yet ({len(missing)}): {', '.join(missing)}."]
    write_atomic(target / "study.md", "\n".join(lines) + "\n")
    data = {"preset": preset.name, "rows": [{
        "name": r.name, "method": r.method, "seeds": r.seeds, "images": r.images, "close": r.close,
        "clean": float(np.mean(r.clean)),
        "union": r.accuracy(), "union_interval": r.interval(),
        "union_per_seed": r.per_seed(),
        **{f"all_{n}": r.accuracy(n) for n in NORMS}, "passes": r.passes, "own_passes": r.own_passes,
        "seconds": r.seconds, "own_seconds": r.own_seconds, "source": r.source, "pareto": r.front,
        "paired_vs_reference": None if r.vs_reference is None else
        {"difference": r.vs_reference.difference, "interval": r.vs_reference.interval,
         "images": r.vs_reference.images, "seeds": list(r.vs_reference.seeds)}} for r in rows],
        "claims": claim_data, "missing": missing, "close_set": close,
        "front": [{"name": c.name, "rival": c.rival, "standing": c.standing,
                   "difference": None if c.difference is None else c.difference.difference,
                   "interval": None if c.difference is None else c.difference.interval}
                  for c in checks]}
    write_atomic(target / "study.json", json.dumps(data, indent=1))
    return StudyReport(report=target / "study.md", figures=figures, rows=rows)


def seed_to_seed(rows: list[Row]) -> list[str]:
    """The section on how far one seed's union lies from another's, for the rows of several seeds: the noise
    that a comparison resting on one seed cannot see."""
    several = [r for r in rows if len(r.seeds) > 1]
    if not several:
        return []
    lines = ["## Seed to seed", "",
             "The union of each seed on the same test images, for the methods trained with several seeds; the spread "
             "is the largest less the smallest, in points.", "",
             "| method | seeds | union per seed | spread | clean per seed |", "|---|---|---:|---:|---:|"]
    for r in several:
        unions = r.per_seed()
        lines.append(f"| {r.name} | {seed_span(r.seeds)} | {' / '.join(_pct(u) for u in unions)} | "
                     f"{100 * (max(unions) - min(unions)):.1f} | {' / '.join(_pct(c) for c in r.clean)} |")
    return lines + [""]


def _machine() -> str:
    import os
    import platform

    import torch

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux: the CPU's name, which platform.processor() leaves empty there
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    gpu = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPUs ({model}), torch {torch.__version__}, {gpu}"
