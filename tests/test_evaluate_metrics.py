"""Union math, transferability and the gate, on hand-made tables and tensors (no trained model)."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from mat_dist.evaluate.gate import gate
from mat_dist.evaluate.metrics import robust_matrix, transfer_tables, union_summary


def table(rows):
    """rows: (example_id, attack, norm, success, clean_correct) -> the column dict the metrics read."""
    cols = ["example_id", "attack", "norm", "success", "clean_correct"]
    return {c: [r[i] for r in rows] for i, c in enumerate(cols)}


ATTACKS = [("pgd_linf", "linf"), ("aa_linf", "linf"), ("pgd_l2", "l2"), ("cw_l2", "l2"), ("pgd_l1", "l1")]


def test_union_on_a_hand_made_table():
    # example 0: robust to all; 1: broken by aa_linf only; 2: broken by pgd_l2 and pgd_l1;
    # 3: clean-wrong (the gate reports success=True for it); 4: broken only by cw_l2.
    broken = {0: set(), 1: {"aa_linf"}, 2: {"pgd_l2", "pgd_l1"}, 3: set(), 4: {"cw_l2"}}
    clean = {0: True, 1: True, 2: True, 3: False, 4: True}
    rows = [(e, a, n, (a in broken[e]) or not clean[e], clean[e]) for e in broken for a, n in ATTACKS]
    s = union_summary(table(rows))
    assert s["clean"] == pytest.approx(4 / 5)
    assert s["attacks"] == pytest.approx({"pgd_linf": 4 / 5, "aa_linf": 3 / 5, "pgd_l2": 3 / 5, "cw_l2": 3 / 5,
                                          "pgd_l1": 3 / 5})
    assert s["all_linf"] == pytest.approx(3 / 5)        # 0, 2, 4
    assert s["all_l2"] == pytest.approx(2 / 5)          # 0, 1
    assert s["all_l1"] == pytest.approx(3 / 5)          # 0, 1, 4
    assert s["all_attacks"] == pytest.approx(1 / 5)     # 0 only


def test_clean_wrong_examples_are_never_robust_even_if_a_row_says_no_success():
    # A sloppy adapter row: clean-wrong but success=False. The union must still count it as broken.
    rows = [(0, "pgd_linf", "linf", False, False), (1, "pgd_linf", "linf", False, True)]
    s = union_summary(table(rows))
    assert s["attacks"]["pgd_linf"] == pytest.approx(0.5)
    assert s["all_linf"] == pytest.approx(0.5)
    assert s["all_attacks"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_union_inequalities_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    n = 40
    clean = rng.random(n) < 0.8
    rows = []
    for e, (a, norm) in itertools.product(range(n), ATTACKS):
        success = bool(rng.random() < 0.3) or not clean[e]
        rows.append((e, a, norm, success, bool(clean[e])))
    s = union_summary(table(rows))
    for a, norm in ATTACKS:
        assert s[f"all_{norm}"] <= s["attacks"][a] + 1e-12
    for norm in ("linf", "l2", "l1"):
        assert s["all_attacks"] <= s[f"all_{norm}"] + 1e-12
    for a in s["attacks"]:
        assert s["attacks"][a] <= s["clean"] + 1e-12
    robust, *_ = robust_matrix(table(rows))
    assert not robust[~clean].any()
    # the exact union, computed by hand here
    expected = np.mean([clean[e] and not any(r[3] for r in rows if r[0] == e) for e in range(n)])
    assert s["all_attacks"] == pytest.approx(expected)


def test_missing_or_repeated_cells_are_refused():
    rows = [(0, "pgd_linf", "linf", False, True), (0, "pgd_l2", "l2", False, True), (1, "pgd_linf", "linf", True, True)]
    with pytest.raises(ValueError, match="example 1 has 0 rows for attack pgd_l2"):
        union_summary(table(rows))
    with pytest.raises(ValueError, match="2 rows"):
        union_summary(table(rows + [(1, "pgd_l2", "l2", False, True), (1, "pgd_l2", "l2", True, True)]))


def test_transfer_counts_and_ratios():
    # models ensemble (E), m0, m1; 4 examples, all clean-correct except example 3 on m1.
    fooled = {  # source -> target -> examples fooled by the source's adversarial
        "ensemble": {"ensemble": {0, 1}, "m0": {0, 1, 2}, "m1": {0}},
        "m0": {"ensemble": {1}, "m0": {0, 1, 2}, "m1": {2}},
        "m1": {"ensemble": set(), "m0": set(), "m1": {1, 3}},
    }
    clean = {"ensemble": {0, 1, 2, 3}, "m0": {0, 1, 2, 3}, "m1": {0, 1, 2}}
    cols = {k: [] for k in ["attack", "source", "target", "success", "clean_correct", "source_success",
                            "source_clean_correct"]}
    for s, t, e in itertools.product(fooled, fooled, range(4)):
        t_clean, s_clean = e in clean[t], e in clean[s]
        for k, v in [("attack", "pgd"), ("source", s), ("target", t),
                     ("success", (e in fooled[s][t]) or not t_clean), ("clean_correct", t_clean),
                     ("source_success", (e in fooled[s][s]) or not s_clean), ("source_clean_correct", s_clean)]:
            cols[k].append(v)
    out = transfer_tables(cols)["pgd"]
    assert out["models"] == ["ensemble", "m0", "m1"]
    # n_ij over examples clean on both, where i's attack succeeded on i and also fools j
    assert out["counts"] == [[2, 2, 1], [1, 3, 1], [0, 0, 1]]
    assert np.allclose(np.diag(out["ratios"]), 1.0)
    assert out["ratios"][0][2] == pytest.approx(1 / 2)   # E succeeded on {0, 1}; both clean on m1; m1 fooled by 0
    assert out["ratios"][1][2] == pytest.approx(1 / 3)   # m0 succeeded on {0, 1, 2}; m1 fooled by 2
    # robust = clean on the model and not broken by the attack generated on itself
    assert out["robustness"] == pytest.approx({"ensemble": 0.5, "m0": 0.25, "m1": 0.5})


class Constant(nn.Module):
    """Predicts class 0 when the mean pixel is below 0.5, else class 1."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        m = x.reshape(len(x), -1).mean(1)
        return torch.stack([0.5 - m, m - 0.5], dim=1) * 10 + self.w


SIXTEEN = {"linf": 1.0, "l2": 4.0, "l1": 16.0}  # ||c * ones(4, 4)||_p / c


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_gate_accepts_on_the_sphere_and_rejects_over_radius(norm):
    model = Constant()
    x = torch.full((1, 1, 4, 4), 0.4)         # class 0; adding 0.15 everywhere flips it to class 1
    y = torch.zeros(1, dtype=torch.long)
    x_adv = x + 0.15
    radius = 0.15 * SIXTEEN[norm]
    assert gate(model, x, y, x_adv, norm=norm, eps=radius).success.all()
    over = gate(model, x, y, x_adv, norm=norm, eps=radius / 1.01)
    assert not over.success.any()
    assert over.flipped.all() and not over.within_radius.any()   # only the radius check rejects it
    assert over.perturbation_norm.item() == pytest.approx(radius, rel=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_gate_rejects_out_of_box_and_non_finite_successes(norm):
    model = Constant()
    x = torch.full((3, 1, 4, 4), 0.4)
    y = torch.zeros(3, dtype=torch.long)
    x_adv = x + 0.15
    x_adv[0, 0, 0, 0] = 1.0 + 1e-3            # one pixel above 1
    x_adv[1, 0, 0, 0] = -1e-3                 # one pixel below 0
    x_adv[2, 0, 0, 0] = float("nan")
    v = gate(model, x, y, x_adv, norm=norm, eps=100.0)
    assert v.flipped[:2].all()                # they do flip: only the box check rejects them
    assert not v.in_box.any()
    assert not v.success.any()
    tiny = x + 0.15
    tiny[0, 0, 0, 0] = 1.0 + 1e-7             # within the stated tolerance (BOX_TOL = 1e-6)
    assert gate(model, x[:1], y[:1], tiny[:1], norm=norm, eps=100.0).success.all()


def test_gate_counts_clean_wrong_examples_as_broken_with_norm_zero():
    model = Constant()
    x = torch.full((2, 1, 4, 4), 0.4)
    y = torch.tensor([0, 1])                  # example 1 is clean-wrong
    v = gate(model, x, y, x.clone(), norm="linf", eps=0.1)
    assert v.success.tolist() == [False, True]
    assert v.clean_correct.tolist() == [True, False]
    assert v.perturbation_norm.tolist() == [0.0, 0.0]


# ------------------------------------------------------------------ the paper column follows the training method

def _meta(trained_as):
    return {"suite": "quick", "model": "m.safetensors", "dataset": "mnist5k", "num_members": 3,
            "ensemble_output": "softmax_mean", "workers": 1, "wall_time_s": 1.0, "machine": "test",
            "versions": {"torch": "t", "foolbox": "f", "pyautoattack": "a", "ray": "r"}, "trained_as": trained_as}


@pytest.mark.parametrize("trained_as, label, method", [
    ("standard", "standard training", "standard"), ("at_linf", "AT l_inf", "at_linf"), ("mat", "MAT", "mat"),
    (None, "MAT", "mat")])
def test_paper_column_is_the_row_of_the_method_the_model_was_trained_with(trained_as, label, method) -> None:
    from mat_dist.evaluate import eval_report as report

    from mat_dist.evaluate.metrics import wilson_interval

    summary = {"examples": 10, "clean": 0.9, "attacks": {"pgd_linf": 0.5}, "all_linf": 0.5, "all_attacks": 0.5,
               "intervals": {"clean": list(wilson_interval(9, 10)), "all_attacks": list(wilson_interval(5, 10))}}
    info = {"pgd_linf": {"attack": "pgd", "norm": "linf", "eps": 0.3, "library": "own"}}
    text = report.render(summary=summary, attack_info=info, meta=_meta(trained_as), transfer={}, curves=[],
                         warnings=[])
    published = report.paper_values("mnist", method)
    assert f"paper {label} (%)" in text and f"Paper column: {label} in the paper" in text
    lo, hi = wilson_interval(9, 10)
    assert f"| Clean |  | 90.0 | [{100 * lo:.1f}, {100 * hi:.1f}] | {published['clean']:.1f} |" in text
    lo, hi = wilson_interval(5, 10)
    assert f"| **All attacks** |  | 50.0 | [{100 * lo:.1f}, {100 * hi:.1f}] | {published['all_attacks']:.1f} |" in text
    assert "no full-strength AutoAttack" in text  # PGD alone: the report says its figures are upper bounds
    # one model's figures share their images: the report must not read overlapping intervals as ties
    assert "are a tie" not in text and "overlapping intervals do not make them a tie" in " ".join(text.split())


def test_a_method_the_paper_did_not_run_gets_no_paper_column() -> None:
    from mat_dist.evaluate import eval_report as report

    summary = {"examples": 10, "clean": 0.9, "attacks": {}, "all_attacks": 0.9}
    text = report.render(summary=summary, attack_info={}, meta=_meta("mat_msd"), transfer={}, curves=[], warnings=[])
    assert "paper" not in text.split("| attack |")[1].splitlines()[0] and "Paper column" not in text


def test_trained_as_reads_the_run_folder_next_to_the_weights(tmp_path) -> None:
    from mat_dist.evaluate.evaluator import trained_as

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: {name: at}\nattack: {norms: [l2]}\n")
    assert trained_as(run / "model.safetensors") == "at_l2"
    (run / "config.yaml").write_text("method: {name: standard}\n")
    assert trained_as(run / "model.safetensors") == "standard"
    assert trained_as(tmp_path / "model.safetensors") is None      # bare weights: no run folder
    (run / "config.yaml").write_text("method: [unclosed\n")
    assert trained_as(run / "model.safetensors") is None            # unreadable config: no paper row, no crash
