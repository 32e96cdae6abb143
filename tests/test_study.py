"""The study (``matd reproduce --preset tiny-study``): fine-tuned rows read their source's model, ``--only``
runs a subset, committed results (no weights) are skipped on a fresh machine, and the report pairs, ranks and
marks the Pareto front of what is finished."""

import json
import shutil

import numpy as np
import pytest

from mat_dist.core.run_config import read_yaml
from mat_dist.plumbing.errors import UserError
from mat_dist.reproduce.pipeline import reproduce
from mat_dist.reproduce.presets import PRESETS
from mat_dist.reproduce import study
from mat_dist.reproduce.study import Row, cost_front

PRESET = PRESETS["tiny-study"]


def test_a_comparison_without_a_claim_answers_with_its_verdict():
    c = study.Claim("MAT+MSD against MSD", "mat_msd", "msd", expect="compare")
    assert [study._holds(c, v) for v in ("above", "tie", "below")] == ["mat_msd above", "a tie", "mat_msd below"]
    paper = study.Claim("MAT is more robust than AT", "mat", "at_linf")
    assert [study._holds(paper, v) for v in ("above", "tie", "below")] == ["yes", "not shown (a tie)", "no: reversed"]


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(1, 0.1), (2, 0.3), (3, 0.2), (4, 0.5), (4, 0.4), (2, 0.3)]
    assert cost_front(points) == [True, True, False, True, False, True]


def test_each_row_stands_on_the_front_or_off_it_against_its_best_rival_at_no_more_cost():
    def row(name, passes, robust_images):
        robust = np.zeros(500, dtype=bool)
        robust[list(robust_images)] = True
        return Row(name=name, method=name, seeds=[0], per_image={"all": [robust]}, clean=[0.98], passes=passes,
                   own_passes=passes, seconds=1.0, own_seconds=1.0, images=500)

    rows = [row("cheap", 10, []), row("strong", 100, range(0, 200)), row("twin", 100, range(10, 206)),
            row("weak", 200, range(0, 100)), row("best", 300, range(0, 300))]
    checks = {c.name: c for c in study.front_checks(rows)}
    assert {n: c.rival for n, c in checks.items()} == {"cheap": None, "strong": "twin", "twin": "strong",
                                                        "weak": "strong", "best": "strong"}
    assert {n: c.standing for n, c in checks.items()} == {
        "cheap": "on the front (the cheapest)",
        "strong": "on the front within its interval (a tie)",  # +0.8: 10 images one way, 6 the other
        "twin": "on the front within its interval (a tie)",    # off the point-estimate front, tied with strong
        "weak": "off the front", "best": "on the front"}
    assert cost_front([(r.passes, r.accuracy()) for r in rows]) == [True, True, False, False, True]
    assert checks["weak"].difference.difference == pytest.approx(-0.2)


def test_the_rival_is_chosen_on_the_images_both_rows_share():
    """After the second stage some rows rest on 1,000 images and others on 500: a row's own accuracy is no
    guide to the rival, the paired difference on the shared images is."""
    def row(name, passes, ids, robust_ids):
        return Row(name=name, method=name, seeds=[0], per_image={"all": [np.isin(ids, list(robust_ids))]},
                   clean=[0.98], passes=passes, own_passes=passes, seconds=1.0, own_seconds=1.0, images=len(ids),
                   ids=ids)

    first, second = np.arange(500), np.arange(1000)
    rows = [row("a", 10, first, range(0, 200)),                        # 40% on the first 500
            row("b", 10, second, [*range(0, 150), *range(500, 1000)]),  # 65% overall, 30% on the first 500
            row("c", 20, first, range(0, 180))]                         # 36%
    check = {c.name: c for c in study.front_checks(rows)}["c"]
    assert check.rival == "a" and check.standing == "off the front"  # c - a = -4.0 on the shared images
    assert check.difference.difference == pytest.approx(-0.04)


def test_a_fine_tuned_row_is_paired_with_its_source_seed_by_seed():
    def row(name, seeds, robust):  # robust: each seed's robust images of 200
        per_image = [np.arange(200) < k for k in robust]
        return Row(name=name, method=name, seeds=seeds, per_image={"all": per_image}, clean=[0.97] * len(seeds),
                   passes=1.0, own_passes=1.0, seconds=1.0, own_seconds=1.0, images=200)

    tuned, source = row("ft", [0, 1, 2], [60, 20, 160]), row("src", [0], [40])  # 30, 10 and 80% against 20%
    matched = study.paired_rows(tuned, source, matched=True)  # seed 0 started from seed 0: the seeds both have
    assert matched.seeds == (1, 1) and matched.difference == pytest.approx(0.10)
    apart = study.paired_rows(tuned, source)  # two methods: every seed of each
    assert apart.seeds == (3, 1) and apart.difference == pytest.approx(0.40 - 0.20)
    assert study.paired_rows(tuned, row("src", [5], [40]), matched=True) is None  # no seed in common


def test_two_fine_tunings_of_the_same_source_seeds_are_paired_seed_by_seed():
    """Seed s of two fine-tunings both start from the source's seed s: a weak source seed pulls both down. Counted
    on each side on its own, that shared swing hides a steady lead; paired seed by seed it cancels."""
    def row(name, robust, source="at_linf", seeds=(0, 1, 2)):  # robust: each seed's robust images of 400
        per_image = [np.arange(400) < k for k in robust]
        return Row(name=name, method=name, seeds=list(seeds), per_image={"all": per_image},
                   clean=[0.97] * len(seeds), passes=1.0, own_passes=1.0, seconds=1.0, own_seconds=1.0, images=400,
                   source=source)

    a, b = row("ft_a", [160, 150, 100]), row("ft_b", [128, 120, 72])  # a leads by 8.0, 7.5 and 7.0 points
    assert study.seed_matched(a, b)
    together = study.paired_rows(a, b)
    apart = study.paired_rows(a, b, matched=False)
    assert together.matched and not apart.matched
    assert together.difference == pytest.approx(apart.difference) == pytest.approx(0.075)
    assert together.separated and not apart.separated  # the source's 15-point swing counted twice: a tie
    # another source, or other seeds, and the seeds are not the same weights: each side counts its own
    assert not study.seed_matched(a, row("ft_c", [128, 120, 72], source="at_l2"))
    assert not study.seed_matched(a, row("ft_d", [128, 120], seeds=(0, 1)))
    assert not study.paired_rows(a, row("e_at", [128, 120, 72], source=None)).matched
    assert study.seed_matched(a, row("at_linf", [80, 70, 30], source=None))  # a fine-tuned row and its source


def test_a_method_at_zero_union_is_plotted(tmp_path, monkeypatch):
    """A row at 0% (AT in l_2 is at 0.0 union at the field's radii): its interval's lower end may come out a hair
    above 0 in floating point (the closed-form Wilson bound gave 4e-19), which made matplotlib refuse the error bar."""
    rows = [Row(name=name, method=name, seeds=[0], per_image={"all": [np.full(500, robust)]}, clean=[0.98],
                passes=passes, own_passes=passes, seconds=1.0, own_seconds=1.0, images=500)
            for name, robust, passes in (("at_l2", False, 35_640), ("mat", True, 35_640))]
    monkeypatch.setattr(Row, "interval", lambda self, key="all": (self.accuracy(key) + 4e-19, self.accuracy(key) + 0.01))
    study._plot(rows, tmp_path / "cost.png", ("all",), "zero")
    assert (tmp_path / "cost.png").stat().st_size > 1000


def test_a_study_runs_in_pieces_and_continues_from_committed_results(tmp_path):
    out = tmp_path / "study"
    first = reproduce(PRESET, output=out, tracking=False, workers=0, only=["ft_mat_rotate"])
    assert [o.label for o in first.methods] == ["at_linf", "ft_mat_rotate"]  # the source comes along
    cfg = read_yaml(out / "runs" / "ft_mat_rotate" / "config.yaml")
    assert cfg["train"]["init_from"] == str(out / "runs" / "at_linf") and cfg["train"]["epochs"] == 1
    study = json.loads((out / "study.json").read_text())
    rows = {r["name"]: r for r in study["rows"]}
    assert set(rows) == {"at_linf", "ft_mat_rotate"}
    # a fine-tuned model costs its source's training too
    assert rows["ft_mat_rotate"]["passes"] == rows["ft_mat_rotate"]["own_passes"] + rows["at_linf"]["passes"]
    assert rows["ft_mat_rotate"]["seconds"] == pytest.approx(rows["ft_mat_rotate"]["own_seconds"]
                                                            + rows["at_linf"]["seconds"])
    assert rows["at_linf"]["passes"] == 2 * 10 * (3 + 3)  # 2 epochs x 10 batches x ((K+1) fwd + (K+1) bwd), K=2
    assert "mat_rotate" in study["missing"]
    # A fresh clone holds the committed files only: no weights, no checkpoints, no evaluation shards.
    for pattern in ("*.safetensors", "checkpoints", "shards"):
        for path in out.rglob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    second = reproduce(PRESET, output=out, tracking=False, workers=0)
    status = {o.label: (o.training, o.evaluation) for o in second.methods}
    assert status["at_linf"] == status["ft_mat_rotate"] == ("skipped", "skipped")
    assert status["mat_rotate"] == status["e_at"] == status["avg"] == ("trained", "evaluated")
    study = json.loads((out / "study.json").read_text())
    assert not study["missing"] and len(study["rows"]) == 5
    reference = {r["name"]: r for r in study["rows"]}["mat_rotate"]
    assert reference["paired_vs_reference"] is None
    assert all(r["paired_vs_reference"] is not None for r in study["rows"] if r["name"] != "mat_rotate")
    assert any(r["pareto"] for r in study["rows"])
    text = (out / "study.md").read_text()
    assert "| ft_mat_rotate (from at_linf) |" in text and "MAT (rotated) against E-AT" in text
    assert "## Fine-tuning against its source" in text and "| ft_mat_rotate | at_linf |" in text
    assert (out / "study_cost.png").is_file() and (out / "study_cost_norms.png").is_file()
    assert (out / "report.md").is_file()  # every method finished: the paper-shaped report too


def test_only_names_the_preset_methods(tmp_path):
    with pytest.raises(UserError, match="preset tiny-study has no method 'mat_x'"):
        reproduce(PRESET, output=tmp_path / "s", tracking=False, workers=0, only=["mat_x"])
    assert not (tmp_path / "s" / "runs").exists()


def test_a_study_folder_takes_methods_the_preset_gained_but_not_changed_ones(tmp_path):
    from dataclasses import replace

    out = tmp_path / "study"
    reproduce(PRESET, output=out, tracking=False, workers=0, only=["at_linf"])
    extra = replace(PRESET.method("e_at"), name="e_at_2", overrides=(*PRESET.method("e_at").overrides, "seed=2"))
    grown = replace(PRESET, methods=(*PRESET.methods, extra), description="the same study and one more row")
    again = reproduce(grown, output=out, tracking=False, workers=0, only=["at_linf"])
    assert [(o.training, o.evaluation) for o in again.methods] == [("skipped", "skipped")]
    assert json.loads((out / "preset.json").read_text())["preset"]["methods"][-1]["name"] == "e_at_2"
    changed = replace(grown, methods=tuple(replace(m, overrides=(*m.overrides, "optim.lr=0.01"))
                                           if m.name == "at_linf" else m for m in grown.methods))
    with pytest.raises(UserError, match="with other settings"):
        reproduce(changed, output=out, tracking=False, workers=0, only=["at_linf"])


def test_training_seconds_ignore_epochs_that_ran_paused_or_crowded_out(tmp_path):
    """A study shares its machine for hours: a paused epoch (1,000 s for a 10 s epoch) and a stretch crowded
    out by other work (more than half the epochs, which moves the median) must not be its cost; nor may the
    ramp's epochs, whose check is cheaper (APGD-T attacks only what APGD-CE left robust)."""
    times, scales = [7.0, 8.0, 10.0, 30.0, 1000.0, 31.0, 9.0], [0.3, 0.6, 1.0, 1.0, 1.0, 1.0, 1.0]
    lines = [{"epoch": e, "epoch_time_s": t, "radius_scale": k, "train/passes": 100.0 * e} for e, (t, k) in
             enumerate(zip(times, scales), start=1)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    passes, seconds = study._training(tmp_path)
    assert passes == 700.0
    assert seconds == pytest.approx(9.0 * 7)  # the fastest full-radius epoch times the 7 epochs: not 7 s x 7,
    #                                          the median's 10 s x 7, nor the sum 1,095
    no_ramp = tmp_path / "no_ramp"  # a fine-tuning at the full radii from its first epoch, or an older metrics file
    no_ramp.mkdir()
    (no_ramp / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "epoch_time_s": t, "train/passes": 1.0})
                                                   + "\n" for e, t in ((1, 12.0), (2, 11.0), (3, 40.0))))
    assert study._training(no_ramp)[1] == pytest.approx(11.0 * 3)
    assert study._training(tmp_path / "nowhere") is None
