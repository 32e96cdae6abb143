"""95% intervals on robust accuracies: the Wilson interval against published values, unions from their own rows."""

import math

import pytest

from mat_dist.evaluate.metrics import union_summary, wilson_interval


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (Wilson score).
@pytest.mark.parametrize("k, n, lo, hi", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                          (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_interval_matches_newcombes_table(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def _closed_form(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson (1927) written out: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 97.5% quantile."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 40), (40, 40), (7, 40), (0, 1000), (412, 1000), (1000, 1000)])
def test_scipys_wilson_interval_is_the_closed_form(k, n):
    assert wilson_interval(k, n) == pytest.approx(_closed_form(k, n), abs=1e-12)


def test_wilson_interval_stays_in_the_unit_interval_and_narrows_with_n():
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(10, 10)[0] < 0.75
    assert wilson_interval(0, 0) == (0.0, 1.0)
    wide, narrow = wilson_interval(50, 100), wilson_interval(500, 1000)
    assert narrow[0] > wide[0] and narrow[1] < wide[1]


def _rows(broken, clean, attacks):
    rows = [(e, a, n, (a in broken[e]) or not clean[e], clean[e]) for e in broken for a, n in attacks]
    cols = ["example_id", "attack", "norm", "success", "clean_correct"]
    return {c: [r[i] for r in rows] for i, c in enumerate(cols)}


def test_every_summary_figure_has_its_interval_and_a_union_uses_its_own_rows():
    # 20 images, two l_inf attacks that break disjoint halves of 10 images: each attack alone leaves 15
    # robust, the union 10; a union interval built from the per-attack ones would be centred at 15.
    attacks = [("a", "linf"), ("b", "linf"), ("c", "l2")]
    broken = {e: ({"a"} if e < 5 else {"b"} if e < 10 else set()) for e in range(20)}
    clean = {e: True for e in range(20)}
    s = union_summary(_rows(broken, clean, attacks))
    assert s["attacks"]["a"] == s["attacks"]["b"] == 0.75 and s["all_linf"] == 0.5
    assert s["intervals"]["a"] == pytest.approx(list(wilson_interval(15, 20)))
    assert s["intervals"]["all_linf"] == pytest.approx(list(wilson_interval(10, 20)))
    assert s["intervals"]["all_attacks"] == pytest.approx(list(wilson_interval(10, 20)))
    assert s["intervals"]["clean"] == pytest.approx(list(wilson_interval(20, 20)))
    assert set(s["intervals"]) == {"clean", "a", "b", "c", "all_linf", "all_l2", "all_attacks"}
