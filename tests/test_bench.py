"""The benchmark runs, and its pass counts equal Table 6 (no assertion on time)."""

import json

import pytest

from mat_dist.bench.method_costs import AT_OTHER_NORMS, BENCH_METHODS, BenchSettings, bench_methods


def test_bench_smoke_pass_counts_equal_table_6():
    s = BenchSettings(image_shape=(1, 8, 8), batch_size=4, num_members=3, steps=2, repeats=1, warmup=0)
    result = bench_methods(s)
    assert set(result["methods"]) == set(BENCH_METHODS) | set(AT_OTHER_NORMS)  # AT in l_2 and l_1 beside l_inf
    for name, row in result["methods"].items():
        assert (row["forward_passes"], row["backward_passes"]) == (row["table6_forward"], row["table6_backward"]), name
        assert row["median_s"] > 0
    ratios = result["ratios"]
    assert {"mat_over_at", "mat_over_msd", "mat_over_mimo_at", "mat_over_floor", "mimo_over_single_fwd_bwd",
            "at_over_its_floor"} <= set(ratios)
    # The ratios are what their names say, of the medians reported beside them.
    med = {name: row["median_s"] for name, row in result["methods"].items()}
    floor = result["floor"]
    assert ratios["mat_over_at"] == med["mat"] / med["at"]
    assert ratios["mat_over_floor"] == med["mat"] / floor["floor_s"] and floor["floor_s"] == 3 * floor["fwd_bwd_s"]
    assert ratios["mimo_over_single_fwd_bwd"] == floor["fwd_bwd_s"] / floor["fwd_bwd_single_s"]
    assert ratios["mat_over_at_l1"] == med["mat"] / med["at_l1"]
    assert ratios["mat_over_at_norm_mean"] == pytest.approx(med["mat"] / ((med["at"] + med["at_l2"] + med["at_l1"]) / 3))
    # The field's every-norm methods (AVG, MAX): N(K+1) passes, timed against MAT and against AT in all three norms.
    assert (result["methods"]["avg"]["forward_passes"], result["methods"]["max"]["backward_passes"]) == (9, 9)
    assert ratios["mat_over_max"] == med["mat"] / med["max"]
    assert ratios["avg_over_at_norm_sum"] == pytest.approx(med["avg"] / (med["at"] + med["at_l2"] + med["at_l1"]))
    json.dumps(result)  # the CLI writes it as JSON


def test_projection_bench_times_both_projections_and_both_steps_on_the_same_points():
    from mat_dist.bench.projection import bench_l1_projection

    s = BenchSettings(batch_size=4, num_members=3, repeats=1, warmup=0)
    result = bench_l1_projection(s)
    assert set(result["cases"]) == {"projection_sort", "projection_fixed_point", "step_dense", "step_sparse"}
    assert all(row["median_s"] > 0 and row["n"] == 15 for row in result["cases"].values())
    assert result["settings"]["rows"] == 12 and result["settings"]["coordinates"] == 784
    assert result["max_abs_difference"] < 1e-5  # both exact: they differ by float rounding only
    assert 0 < result["rows_outside_share"] <= 1  # the points are the ones PGD projects, not all inside
    med = {name: row["median_s"] for name, row in result["cases"].items()}
    assert result["ratios"] == {"l1_projection_fixed_point_over_sort": med["projection_fixed_point"] / med["projection_sort"],
                                "l1_step_sparse_over_dense": med["step_sparse"] / med["step_dense"]}
    json.dumps(result)


def test_bench_methods_option_takes_a_subset_and_refuses_unknown_names():
    from mat_dist.cli.bench_cmd import parse_methods
    from mat_dist.plumbing.errors import UserError

    assert parse_methods(None) == BENCH_METHODS
    assert parse_methods("mat, at,msd") == ("mat", "at", "msd")
    for bad in ("mat,sgd", " , "):
        with pytest.raises(UserError, match="--methods: unknown method"):
            parse_methods(bad)
