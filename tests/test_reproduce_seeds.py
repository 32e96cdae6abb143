"""``matd reproduce --seeds N`` and the paper-radii smoke preset, end to end on tiny data."""

import json
import statistics
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from mat_dist.reproduce.presets import TINY, TINY_PAPER_RADII, TINY_SUITE


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    from mat_dist.reproduce.pipeline import reproduce

    suite = {**TINY_SUITE, "examples": 30, "shard_size": 30,
             "attacks": {k: v for k, v in TINY_SUITE["attacks"].items() if k.startswith("pgd_")},
             "transfer": {"attacks": [], "examples": 30}, "curves": {"attacks": [], "steps": [], "eps_scale": []}}
    preset = replace(TINY, name="tiny-seeds", methods=tuple(m for m in TINY.methods if m.name in ("standard", "mat")),
                     suite=suite, base_overrides=(*TINY.base_overrides, "train.epochs=1"), workers=0)
    out = tmp_path_factory.mktemp("seeds") / "out"
    result = reproduce(preset, output=out, tracking=False, seeds=2)
    return out, result, preset


def test_two_seeds_train_two_different_models(two_seeds):
    out, result, _ = two_seeds
    assert sorted(o.label for o in result.methods) == ["mat", "mat-seed1", "standard", "standard-seed1"]
    for method in ("standard", "mat"):
        a = load_file(str(out / "runs" / method / "model.safetensors"))
        b = load_file(str(out / "runs" / f"{method}-seed1" / "model.safetensors"))
        assert any(not torch.equal(a[k], b[k]) for k in a), method
        assert "seed: 1" in (out / "runs" / f"{method}-seed1" / "config.yaml").read_text()


def test_report_gives_the_mean_and_spread_of_the_seeds_summaries(two_seeds):
    out, _, _ = two_seeds
    report = json.loads((out / "report.json").read_text())
    table = report["tables"]["table4_5"]
    col = table["columns"].index("mat")
    row = next(r for r in table["rows"] if r[0] == "all_attacks")
    values = [json.loads((out / "evals" / d / "summary.json").read_text()) for d in ("mat", "mat-seed1")]
    union = [v["all_attacks"] for v in values]
    lo = min(v["intervals"]["all_attacks"][0] for v in values)
    hi = max(v["intervals"]["all_attacks"][1] for v in values)
    assert row[col] == (f"{100 * statistics.fmean(union):.1f} ± {100 * statistics.stdev(union):.1f} "
                        f"[{100 * lo:.1f}, {100 * hi:.1f}]")
    text = (out / "report.md").read_text()
    assert "--seeds 2" in text and "mean ± standard deviation over 2 seeds" in text


def test_fewer_seeds_are_refused_and_more_seeds_extend_the_reproduction(two_seeds, tmp_path):
    import shutil

    from mat_dist.plumbing.errors import UserError
    from mat_dist.reproduce.pipeline import _check_preset_file, reproduce

    out, result, preset = two_seeds
    assert json.loads((out / "preset.json").read_text())["seeds"] == 2
    with pytest.raises(UserError, match="it has 2 seeds; --seeds 1 would report only some of them"):
        reproduce(preset, output=out, tracking=False, seeds=1)
    with pytest.raises(UserError, match="other settings; choose another --output"):  # another preset: refused
        _check_preset_file(out, replace(preset, name="other"), [], seeds=3)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    _check_preset_file(copy, preset, [], seeds=3)  # the same preset with one more seed: accepted, recorded
    assert json.loads((copy / "preset.json").read_text())["seeds"] == 3
    with pytest.raises(UserError, match="it has 3 seeds"):
        _check_preset_file(copy, preset, [], seeds=2)


@pytest.mark.slow  # about 40 s: every method of the preset trained and evaluated
def test_tiny_preset_at_the_paper_radii_runs_end_to_end(tmp_path):
    from mat_dist.reproduce.pipeline import reproduce

    result = reproduce(TINY_PAPER_RADII, output=tmp_path / "out", tracking=False)
    text = result.report.read_text()
    assert "l_inf 0.3, l_2 2, l_1 10); the paper's (l_inf 0.3, l_2 2, l_1 10): the same." in text
    for o in result.methods:
        summary = json.loads((o.eval_dir / "summary.json").read_text())
        assert {a["eps"] for a in summary["attack_info"].values()} == {0.3, 2.0, 10.0}
        assert set(summary["intervals"]) >= {"clean", "all_linf", "all_l2", "all_l1", "all_attacks"}
        rows = [json.loads(line) for line in (o.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert all("best_epoch" in r for r in rows if r["radius_scale"] == 1.0)  # selected under the APGD check
        assert all(int(rows[-1]["best_epoch"]) >= r["epoch"] for r in rows if r["radius_scale"] < 1.0)
    assert "mat_rotate" in text
