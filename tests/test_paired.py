"""The paired difference of two configs' union accuracy on the same test images, and the verdict that reads it."""

import numpy as np
import pytest

from mat_dist.evaluate.metrics import union_summary, wilson_interval
from mat_dist.evaluate.paired import aligned_unions, paired_difference, union_per_image


def _robust(n: int, held: range | list[int]) -> np.ndarray:
    v = np.zeros(n, dtype=bool)
    v[list(held)] = True
    return v


def test_identical_configs_differ_by_exactly_nothing():
    a = _robust(300, range(0, 60))
    d = paired_difference([a, a], [a])
    assert d.difference == 0.0 and d.interval == (0.0, 0.0) and not d.separated


def test_one_seed_matches_the_normal_interval_of_the_per_image_differences():
    rng = np.random.default_rng(3)
    n = 4000
    a = rng.random(n) < 0.30
    b = np.where(rng.random(n) < 0.8, a, rng.random(n) < 0.25)  # correlated with a, as two models on one image set
    per_image = a.astype(float) - b.astype(float)
    half = 1.959963984540054 * per_image.std() / np.sqrt(n)
    d = paired_difference([a], [b])
    assert d.difference == pytest.approx(per_image.mean())
    assert d.interval[0] == pytest.approx(per_image.mean() - half, abs=0.002)
    assert d.interval[1] == pytest.approx(per_image.mean() + half, abs=0.002)


def test_swapping_the_configs_mirrors_the_interval():
    a, b = _robust(300, range(0, 75)), _robust(300, range(10, 70))
    ab, ba = paired_difference([a], [b]), paired_difference([b], [a])
    assert ba.difference == pytest.approx(-ab.difference)
    assert ba.interval == pytest.approx((-ab.interval[1], -ab.interval[0]))


def test_pairing_separates_what_overlapping_wilson_intervals_call_a_tie():
    # a holds every image b holds, and 15 more: 25% against 20% of 300 images.
    a, b = _robust(300, range(0, 75)), _robust(300, range(0, 60))
    wa, wb = wilson_interval(75, 300), wilson_interval(60, 300)
    assert wa[0] < wb[1]  # the per-config intervals overlap
    d = paired_difference([a], [b])
    assert d.difference == pytest.approx(0.05) and d.separated and d.interval[0] > 0.02


def test_spread_over_seeds_widens_the_interval():
    b = _robust(300, range(0, 60))
    steady = [_robust(300, range(0, 75))] * 3  # three seeds at 25%
    spread = [_robust(300, range(0, 45)), _robust(300, range(0, 75)), _robust(300, range(0, 105))]  # 15, 25, 35%
    s, w = paired_difference(steady, [b]), paired_difference(spread, [b])
    assert s.difference == pytest.approx(w.difference)
    assert (w.interval[1] - w.interval[0]) > 2 * (s.interval[1] - s.interval[0])
    assert s.separated and not w.separated  # a seed below the reference makes it a tie


def test_matched_seeds_keep_a_fine_tuned_seed_beside_its_source_seed():
    # Fine-tuned seed s started from source seed s: both swing together from seed to seed (15, 25, 35%), and the
    # fine-tuning adds the same 5 points to each. Matched, the seed swing cancels; drawn apart, it does not.
    source = [_robust(300, range(0, 45)), _robust(300, range(0, 75)), _robust(300, range(0, 105))]
    tuned = [_robust(300, range(0, 60)), _robust(300, range(0, 90)), _robust(300, range(0, 120))]
    m, apart = paired_difference(tuned, source, matched=True), paired_difference(tuned, source)
    assert m.difference == apart.difference == pytest.approx(0.05)
    assert m.separated and not apart.separated
    assert m.interval[1] - m.interval[0] < 0.5 * (apart.interval[1] - apart.interval[0])
    with pytest.raises(ValueError, match="as many seeds on each side"):
        paired_difference(tuned, source[:1], matched=True)


def _held_once(n: int, splits: list[int]) -> list[np.ndarray]:
    """Seeds that each hold one block of the images, every image held by exactly one seed: the seed-mean is the
    same on every image (no image term), while the seeds' accuracies differ (splits: block ends)."""
    edges = [0, *splits, n]
    return [_robust(n, range(lo, hi)) for lo, hi in zip(edges, edges[1:])]


def test_with_no_image_term_the_interval_is_welch_over_the_seeds():
    from scipy import stats

    a = _held_once(1000, [200, 600])        # seeds at 20, 40, 40%
    b = _held_once(1000, [100, 250, 500])   # four seeds at 10, 15, 25, 50%
    acc_a, acc_b = [v.mean() for v in a], [v.mean() for v in b]
    welch = stats.ttest_ind(acc_a, acc_b, equal_var=False).confidence_interval()
    d = paired_difference(a, b)
    assert d.interval == pytest.approx((welch.low, welch.high), abs=1e-12)
    one = stats.ttest_1samp(acc_a, 0.0).confidence_interval()  # one config: a one-sample t over its seeds
    from mat_dist.evaluate.paired import accuracy_interval
    assert accuracy_interval(a) == pytest.approx((one.low, one.high), abs=1e-12)
    c = _held_once(1000, [300, 500])        # matched to a seed by seed: a paired t over the seeds
    paired_t = stats.ttest_rel(acc_a, [v.mean() for v in c]).confidence_interval()
    assert paired_difference(a, c, matched=True).interval == pytest.approx((paired_t.low, paired_t.high), abs=1e-12)


def test_image_and_seed_terms_add_worked_by_hand():
    from scipy import stats

    a = [np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool)]  # 50% and 25%: per image 1, .5, 0, 0
    b = [np.array([1, 0, 0, 1], bool)]                                # 50%
    # per-image differences 0, .5, 0, -1: mean -1/8, sample variance 19/48, over 4 images 19/192 (df 3);
    # a's seeds .5 and .25: sample variance 1/32, over 2 seeds 1/64 (df 1); b has one seed: no term.
    v_img, v_a = 19 / 192, 1 / 64
    df = (v_img + v_a) ** 2 / (v_img ** 2 / 3 + v_a ** 2 / 1)
    half = stats.t.ppf(0.975, df) * (v_img + v_a) ** 0.5
    d = paired_difference(a, b)
    assert d.difference == pytest.approx(-1 / 8)
    assert d.interval[1] == pytest.approx(-1 / 8 + half, abs=1e-12)
    assert -1 / 8 - half < -1 and d.interval[0] == -1.0  # four images: so wide that it is cut at -100 points


def test_an_accuracy_interval_stays_in_the_unit_range():
    from mat_dist.evaluate.paired import accuracy_interval

    low = [_robust(100, []), _robust(100, []), _robust(100, range(3))]  # 0, 0 and 3%: the t interval dips below 0
    lo, hi = accuracy_interval(low)
    assert lo == 0.0 and 0.01 < hi < 1.0


def test_the_interval_covers_the_truth_when_the_seed_dominates():
    """Simulated studies of known truth (scripts/interval_coverage.py's model, its seed-dominated row): three
    seeds a side, each model's seed shifting its accuracy by about 4 points. The 95% interval must hold the true
    difference in at least 90% of 300 studies; the former bootstrap over seeds held it in 86%."""
    from scipy.special import expit

    rng = np.random.default_rng(5)
    skill, seed_sd, noise_sd, n = (-0.9, -1.1), 0.3, 0.1, 1000
    m = 1_000_000
    truth = np.subtract(*[expit(rng.normal(0, 2, m) + s + rng.normal(0, seed_sd, m) + rng.normal(0, noise_sd, m))
                          .mean() for s in skill])
    hits = 0
    for _ in range(300):
        difficulty = rng.normal(0, 2, n)
        a, b = ([rng.random(n) < expit(difficulty + s + rng.normal(0, seed_sd) + rng.normal(0, noise_sd, n))
                 for _ in range(3)] for s in skill)
        lo, hi = paired_difference(a, b).interval
        hits += lo <= truth <= hi
    assert hits / 300 >= 0.90


def test_different_image_counts_are_refused():
    with pytest.raises(ValueError, match="different numbers of images"):
        paired_difference([_robust(300, [1])], [_robust(200, [1])])


def _eval_dir(tmp_path, name, ids, held):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"example_id": [], "attack": [], "norm": [], "success": [], "clean_correct": []}
    for e in ids:
        for attack, norm in (("pgd_linf", "linf"), ("apgd_l1", "l1")):
            rows["example_id"].append(e)
            rows["attack"].append(attack)
            rows["norm"].append(norm)
            rows["clean_correct"].append(True)
            rows["success"].append(not (e in held or (attack == "apgd_l1" and e % 2 == 0)))
    folder = tmp_path / name
    folder.mkdir()
    pq.write_table(pa.table(rows), folder / "results.parquet")
    return folder, rows


def test_the_union_per_image_is_the_one_the_summary_counts(tmp_path):
    folder, rows = _eval_dir(tmp_path, "a", range(10), held={0, 1, 2, 3})
    ids, union = union_per_image(folder)
    assert ids.tolist() == list(range(10))
    assert union.tolist() == [True, True, True, True] + [False] * 6  # held under pgd_linf; apgd_l1 breaks odd ids too
    assert union.mean() == pytest.approx(union_summary(rows)["all_attacks"])


def test_aligned_unions_refuse_other_test_images(tmp_path):
    a, _ = _eval_dir(tmp_path, "a", range(10), held={0})
    b, _ = _eval_dir(tmp_path, "b", range(1, 11), held={2})
    with pytest.raises(ValueError, match="other test images"):
        aligned_unions([a, b])


def test_the_confirmation_verdict_reads_the_paired_difference():
    from mat_dist.reproduce.reproduction_report import MethodData
    from mat_dist.tune.confirm import confirm_table

    def data(name, vectors):
        summaries = []
        for v in vectors:
            rows = {"example_id": list(range(len(v))), "attack": ["a"] * len(v), "norm": ["linf"] * len(v),
                    "success": (~v).tolist(), "clean_correct": [True] * len(v)}
            summaries.append(union_summary(rows))
        return MethodData(name=name, method="mat", paper_name=None, table7_name=None, num_members=3, steps=10,
                          norms=["linf"], epochs=1, summary=summaries[0], metrics=[], seed_summaries=summaries)

    unions = {"hand-picked": [_robust(300, range(0, 60))] * 2, "search": [_robust(300, range(0, 75))] * 2}
    found = {n: data(n, v) for n, v in unions.items()}
    table, verdict, beats = confirm_table(found, suite_name="field", names=("hand-picked", "search"),
                                          reference="hand-picked", unions=unions)
    assert beats and verdict.startswith("search beats hand-picked on all_attacks by more than the paired interval")
    column = table.columns.index("all_attacks minus hand-picked [95%]")
    assert table.rows[1][column].startswith("+5.0 [+")
    _, plain, plain_beats = confirm_table(found, suite_name="field", names=("hand-picked", "search"),
                                          reference="hand-picked")
    assert not plain_beats and "the intervals overlap" in plain  # the unpaired rule calls the same figures a tie


def test_the_interval_of_several_seeds_on_the_same_images_is_wider_than_pooling_them():
    """Three seeds that agree image by image carry no more information than one: the interval over images and
    seeds keeps one seed's width, where a Wilson interval of the 3 x 300 pooled trials would shrink it."""
    from mat_dist.evaluate.metrics import wilson_interval
    from mat_dist.evaluate.paired import accuracy_interval

    rng = np.random.default_rng(1)
    one = rng.random(300) < 0.3
    lo, hi = accuracy_interval([one, one, one])
    pooled = wilson_interval(int(3 * one.sum()), 3 * one.size)
    single = wilson_interval(int(one.sum()), one.size)
    assert lo < one.mean() < hi
    assert hi - lo > 1.3 * (pooled[1] - pooled[0])
    assert hi - lo == pytest.approx(single[1] - single[0], rel=0.2)
    # seeds that disagree widen it further: the training randomness counts
    other = rng.random(300) < 0.5
    lo2, hi2 = accuracy_interval([one, other, one])
    assert hi2 - lo2 > hi - lo


def test_the_reproduction_commentary_reads_the_paired_difference(tmp_path):
    """MAT holds every image standard training holds and 15 more of 300: the Wilson intervals overlap, the
    paired difference separates them, and the commentary says MAT is above; without per-image results it
    falls back to the overlap and calls the same figures a tie."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mat_dist.reproduce.presets import PRESETS
    from mat_dist.reproduce.reproduction_report import MethodData, commentary

    def data(name, held, keep_results=True):
        v = _robust(300, held)
        rows = {"example_id": list(range(300)), "attack": ["a"] * 300, "norm": ["linf"] * 300,
                "success": (~v).tolist(), "clean_correct": [True] * 300}
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        if keep_results:
            pq.write_table(pa.table(rows), folder / "results.parquet")
        s = union_summary(rows)
        return MethodData(name=name, method=name, paper_name=None, table7_name=None, num_members=1, steps=10,
                          norms=["linf"], epochs=1, summary=s, metrics=[], seed_summaries=[s], eval_dirs=[folder])

    preset = PRESETS["mnist5k-paper-radii"]
    lines, facts = commentary(preset, [data("mat", range(0, 75)), data("standard", range(0, 60))], {})
    assert facts["mat_beats"] == ["standard"] and facts["mat_ties"] == []
    assert any("by more than the paired interval" in line for line in lines)
    (tmp_path / "standard" / "results.parquet").unlink()
    lines, facts = commentary(preset, [data("mat", range(0, 75)), data("standard", range(0, 60), False)], {})
    assert facts["mat_beats"] == [] and facts["mat_ties"] == ["standard"]
