"""``matd reproduce --preset tiny`` end to end: every table with its shape, the union invariants, MLflow nesting,
a re-run that skips finished work, and one clear line for a bad preset.

The tiny preset (8x8 digits, 9 methods, K=2, 3 epochs, PGD per norm on 60
images) runs once per module, in this process, with no cluster: about 1-2
minutes on 2 busy CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mat_dist.bench.method_costs import table6_passes
from mat_dist.reproduce.presets import PRESETS, TINY

REQUIRED = {"standard", "at_linf", "at_l2", "at_l1", "ensemble_at", "msd", "mat", "mat_msd"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from mat_dist.reproduce.pipeline import reproduce

    root = tmp_path_factory.mktemp("reproduce")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    start = time.perf_counter()
    result = reproduce(TINY, output=root / "out", tracking_uri=uri)
    wall = time.perf_counter() - start
    yield {"root": root, "out": root / "out", "uri": uri, "result": result, "wall": wall}
    # MLflow writes the URI into os.environ; leave the environment as we found it.
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _summary(out: Path, method: str) -> dict:
    return json.loads((out / "evals" / method / "summary.json").read_text())


def test_tiny_preset_has_every_method_of_the_paper():
    names = {m.name for m in TINY.methods}
    assert REQUIRED <= names
    assert any(m.method == "mat_same_norm" for m in TINY.methods)
    for preset in PRESETS.values():
        if preset.study:  # a study picks its own methods (test_the_study_preset_has_every_registry_method)
            continue
        assert REQUIRED <= {m.name for m in preset.methods}, preset.name
        assert {"mat_same_linf", "mat_same_l2", "mat_same_l1"} <= {m.name for m in preset.methods} \
            or preset.name.startswith("tiny")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_valid_configs_and_suite(name):
    from mat_dist.reproduce.pipeline import method_config, preset_suite

    preset = PRESETS[name]
    configs = {m.name: method_config(preset, m) for m in preset.methods}
    suite = preset_suite(preset)
    for spec in preset.methods:
        cfg = configs[spec.name]
        assert cfg.method.name == spec.method
        # every method shares the preset's data, backbone, K and epochs (a fine-tuned one: fewer, after its
        # source's): a fair comparison
        first = configs[preset.methods[0].name]
        data = cfg.data if spec.init_from is None else replace(cfg.data, input_repetition=0.0)  # see REPEAT_HALF
        assert (data, cfg.model.backbone, cfg.attack.steps) == (first.data, first.model.backbone, first.attack.steps)
        assert (cfg.train.epochs == first.train.epochs) == (spec.init_from is None)
        for norm, eps in zip(cfg.attack.norms, cfg.attack.eps):
            assert eps == preset.radii[norm]
        assert cfg.train.diagnostics == (spec.method in ("mat", "mat_same_norm", "mimo_at") and not spec.init_from)
        assert cfg.attack.rotate_norms == ("mat_rotate" in spec.name)
        if preset.radii_match_paper():  # at the paper's radii every selection is made under APGD
            assert cfg.eval.attack.value == "apgd" or name.endswith("-paper")
    assert {n: e for n, e in suite.eps.items()} == dict(preset.radii)
    if name.endswith("-paper"):
        assert preset.radii_match_paper() and suite.name == "paper"
    if name.endswith("paper-radii"):
        assert preset.radii_match_paper() and "mat_rotate" in {m.name for m in preset.methods}


def test_report_holds_every_table_with_its_shape(tiny_run):
    out, report = tiny_run["out"], _report(tiny_run["out"])
    tables = report["tables"]
    methods = [m.name for m in TINY.methods]
    summaries = {m: _summary(out, m) for m in methods}
    info = summaries["mat"]["attack_info"]

    # Table 4/5: rows = attacks by norm, each norm's union, all_attacks, clean; columns = methods (+ paper's).
    t4 = tables["table4_5"]
    expected_rows = []
    for norm in ("linf", "l2", "l1"):
        expected_rows += [a for a, i in info.items() if i["norm"] == norm] + [f"all_{norm}"]
    expected_rows += ["all_attacks", "clean"]
    assert [r[0] for r in t4["rows"]] == expected_rows
    ours = [c for c in t4["columns"][2:] if not c.endswith("(paper)")]
    assert ours == methods
    assert {c[:-len(" (paper)")] for c in t4["columns"] if c.endswith("(paper)")} == \
        {m.name for m in TINY.methods if m.paper_name}
    assert all(len(r) == len(t4["columns"]) for r in t4["rows"])
    mat_col, paper_col = t4["columns"].index("mat"), t4["columns"].index("mat (paper)")
    row = {r[0]: r for r in t4["rows"]}
    lo, hi = summaries["mat"]["intervals"]["all_attacks"]
    assert row["all_attacks"][mat_col] == (f"{100 * summaries['mat']['all_attacks']:.1f} "
                                           f"[{100 * lo:.1f}, {100 * hi:.1f}]")  # the union's own interval
    assert row["all_attacks"][paper_col] == "51.7"  # MAT paper Table 4, MNIST

    # Table 8: MAT vs one norm for all sub-models.
    t8 = tables["table8"]
    assert [r[0] for r in t8["rows"]] == ["clean", "all_linf", "all_l2", "all_l1", "all_attacks"]
    assert len(t8["columns"]) == 1 + sum(m.method in ("mat", "mat_same_norm") for m in TINY.methods)

    # Table 3 (sub-models) and Tables 1-2, 9-12 (transferability) for every method with several sub-models.
    multi = [m.name for m in TINY.methods if summaries[m.name]["meta"]["num_members"] > 1]
    transfer_attacks = list(summaries["mat"]["transfer"])
    assert transfer_attacks == ["pgd_linf", "pgd_l2", "pgd_l1"]
    for m in multi:
        members = summaries[m]["meta"]["num_members"]
        t3 = tables[f"table3/{m}"]
        assert [r[0].split()[0] for r in t3["rows"]] == ["ensemble"] + [f"m{j}" for j in range(members)]
        assert len(t3["columns"]) == 1 + len(transfer_attacks) * (2 if m == "mat" else 1)
        for a in transfer_attacks:
            t = tables[f"transfer/{m}/{a}"]
            assert t["columns"] == ["from \\ on", "ensemble"] + [f"m{j}" for j in range(members)]
            assert len(t["rows"]) == members + 1 and all(len(r) == members + 2 for r in t["rows"])

    # Figures 2-3 as numbers: one row per (attack, x), one column per method.
    for key, xs in (("figure2", [1, 2, 5]), ("figure3", None)):
        t = tables[key]
        assert t["columns"][2:] == methods
        assert len(t["rows"]) == 3 * 3
        if xs:
            assert sorted({int(r[1]) for r in t["rows"]}) == xs

    # Figures 1 and 4: one row per epoch, one column per sub-model of each method with diagnostics.
    for key in ("figure1", "figure4"):
        t = tables[key]
        assert [r[0] for r in t["rows"]] == ["1", "2", "3"]
        assert {"mat/m0 (l1)", "mat/m1 (l2)", "mat/m2 (linf)"} <= set(t["columns"])
        assert all(c != "-" for r in t["rows"] for c in r)

    # Tables 6-7: one row per method; passes are the Table 6 formulas; time measured per epoch.
    t6 = tables["table6_7"]
    assert [r[0] for r in t6["rows"]] == methods
    col = {c: i for i, c in enumerate(t6["columns"])}
    for r, spec in zip(t6["rows"], TINY.methods):
        members = summaries[spec.name]["meta"]["num_members"]
        assert (int(r[col["fwd"]]), int(r[col["bwd"]])) == table6_passes(spec.method, 2, members)
        assert int(r[col["epochs"]]) == 3 and float(r[col["training (min)"]]) > 0

    # The page itself and its figures.
    text = (out / "report.md").read_text()
    for heading in ("Tables 4 and 5", "Table 8", "Table 3", "Tables 1, 2 and 9-12", "Figures 2 and 3",
                    "Figures 1 and 4", "Tables 6 and 7", "Where we agree and differ"):
        assert heading in text, heading
    assert "they differ" in text  # tiny's radii are not the paper's, and the report says so
    assert "Of the " in text and "pairs of these methods" in text
    for png in ("fig1_cross_gradient.png", "fig2_steps.png", "fig3_radius.png", "fig4_disagreement.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_union_invariants_hold_for_every_method(tiny_run):
    out = tiny_run["out"]
    for spec in TINY.methods:
        s = _summary(out, spec.name)
        norms = {i["norm"] for i in s["attack_info"].values()}
        assert norms == {"linf", "l2", "l1"}
        for norm in norms:
            attacks = [a for a, i in s["attack_info"].items() if i["norm"] == norm]
            assert len(attacks) >= 2  # so that the union is not a copy of one attack
            for a in attacks:
                assert s[f"all_{norm}"] <= s["attacks"][a] + 1e-12, (spec.name, norm, a)
            assert s["all_attacks"] <= s[f"all_{norm}"] + 1e-12, (spec.name, norm)
    assert all(v == [] for v in _report(out)["invariants"].values())


def test_everything_is_logged_under_one_parent_run(tiny_run):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tiny_run["uri"])
    parent_id = tiny_run["result"].parent_run_id
    parent = client.get_run(parent_id)
    assert parent.data.tags["mat_dist.preset"] == "tiny"
    assert "mat/all_attacks" in parent.data.metrics
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                              max_results=100)
    kinds = sorted((r.data.tags.get("mat_dist.kind"), r.data.tags.get("mat_dist.reproduce_method")) for r in runs)
    names = [m.name for m in TINY.methods]
    assert kinds == sorted([("training", n) for n in names] + [("evaluation", n) for n in names])
    training = [r for r in runs if r.data.tags.get("mat_dist.kind") == "training"]
    assert all("val/clean_acc" in r.data.metrics for r in training)  # the runner logged into the nested run


def test_rerun_skips_finished_work(tiny_run):
    from mat_dist.reproduce.pipeline import reproduce

    out = tiny_run["out"]
    models = {m.name: out / "runs" / m.name / "model.safetensors" for m in TINY.methods}
    before = {n: p.stat().st_mtime_ns for n, p in models.items()}
    results = {n: (out / "evals" / n / "results.parquet").stat().st_mtime_ns for n in models}
    start = time.perf_counter()
    again = reproduce(TINY, output=out, tracking_uri=tiny_run["uri"])
    wall = time.perf_counter() - start
    assert [(o.training, o.evaluation) for o in again.methods] == [("skipped", "skipped")] * len(models)
    assert {n: p.stat().st_mtime_ns for n, p in models.items()} == before
    assert {n: (out / "evals" / n / "results.parquet").stat().st_mtime_ns for n in models} == results
    assert again.parent_run_id == tiny_run["result"].parent_run_id
    # The re-run that only rewrote the report is not an invocation of the reproduction: the report's total
    # wall time stays the first run's.
    invocations = _report(out)["invocations"]
    assert len(invocations) == 1 and invocations[0]["trained"] == invocations[0]["evaluated"] == len(models)
    assert invocations[0]["wall_s"] == pytest.approx(tiny_run["result"].wall_s)
    first = invocations[0]["wall_s"]
    assert (f"the whole reproduction {first:.0f} s of wall time over 1 invocation(s); this one {again.wall_s:.0f} s "
            f"(0 trainings and 0 evaluations run" in (out / "report.md").read_text())
    assert wall < max(0.5 * tiny_run["wall"], 5.0), (wall, tiny_run["wall"])


def test_another_preset_in_the_same_folder_is_refused(tiny_run):
    from dataclasses import replace

    from mat_dist.plumbing.errors import UserError
    from mat_dist.reproduce.pipeline import reproduce

    with pytest.raises(UserError, match="holds a reproduction of preset tiny with other settings"):
        reproduce(replace(TINY, examples=30), output=tiny_run["out"], tracking=False)


def test_bad_preset_name_is_one_clear_line(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "mat_dist.cli.main", "reproduce", "--preset", "mnist-huge"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == ("matd: error: unknown preset 'mnist-huge'; use one of "
                        "tiny, tiny-paper-radii, mnist5k-cpu, mnist5k-paper-radii, mnist5k-study, tiny-study, mnist-paper, "
                        "cifar10-paper")
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_study_preset_has_every_registry_method_and_the_fine_tuned_rows():
    from mat_dist.core.methods import METHODS

    study = PRESETS["mnist5k-study"]
    used = {m.method for m in study.methods}
    assert set(METHODS) - {"mat_same_norm"} <= used  # MAT with one norm is the paper's Table 8, not the study's
    names = {m.name for m in study.methods}
    assert {"at_linf", "at_l2", "at_l1", "mat", "mat_rotate", "mat_eat", "ft_e_at", "ft_mat_rotate",
            "ft_mat_eat"} <= names
    order = [m.name for m in study.methods]
    for spec in study.methods:  # a fine-tuned row runs after its source, whose weights it reads
        if spec.init_from:
            assert order.index(spec.init_from) < order.index(spec.name)


# ---------------------------------------------------------------- committed results and the auto fast path

REPO = Path(__file__).resolve().parents[1]
STUDY = Path("reports") / "mnist5k-study"  # relative, as its run.sh calls matd reproduce (fine-tuning sources too)


def test_the_committed_study_rows_still_count_as_done_under_the_auto_default(monkeypatch):
    """train.precision and train.channels_last default to auto (bf16 and channels_last on a machine with native
    bf16); the study's rows were trained in fp32 without channels_last, so its preset pins those, and matd
    reproduce still finds every committed row done (the whole config, its metrics and its evaluation)."""
    from mat_dist.core.run_config import Precision, config_from_dict, read_yaml
    from mat_dist.reproduce.pipeline import _recorded, evaluation_fingerprint, preset_suite, run_configs

    from mat_dist.reproduce.layout import close_evals, run_label

    monkeypatch.chdir(REPO)
    preset = PRESETS["mnist5k-study"]
    committed = sorted(p.name for p in (STUDY / "runs").iterdir() if (p / "config.yaml").is_file())
    assert {"at_linf", "mat_rotate"} <= set(committed)

    def method_and_seed(label: str) -> tuple[str, int]:  # run_label's inverse: mat_rotate-seed1 -> (mat_rotate, 1)
        name, _, seed = label.partition("-seed")
        assert run_label(name, int(seed or 0)) == label
        return name, int(seed or 0)

    runs = {label: method_and_seed(label) for label in committed}
    configs = run_configs(preset, [(preset.method(name), seed) for name, seed in runs.values()], output=STUDY,
                          overrides=[], tracking=False)
    suite = preset_suite(preset)
    first_stage = evaluation_fingerprint(configs, suite, preset.examples)
    second_stage = evaluation_fingerprint(configs, suite, preset.close_examples)  # seeds 1.. of the close set
    second_evals = STUDY / close_evals(preset.close_examples)
    for label, (_, seed) in runs.items():
        on_disk = config_from_dict(read_yaml(STUDY / "runs" / label / "config.yaml"))
        assert (on_disk.train.precision, on_disk.train.channels_last) == (Precision.FP32, False), label
        assert configs[label] == on_disk, label  # every key, the switches included
        if seed == 0:
            assert _recorded(configs[label], STUDY / "runs" / label, STUDY / "evals" / label, first_stage), label
        elif (second_evals / label).is_dir():  # a fine-tuned method's source seed is trained, not evaluated
            assert _recorded(configs[label], STUDY / "runs" / label, second_evals / label, second_stage), label


def test_a_folder_begun_before_the_auto_default_goes_on_only_where_the_preset_pins_fp32(tmp_path):
    from mat_dist.plumbing.errors import UserError
    from mat_dist.reproduce.pipeline import PRESET_FILE, _check_preset_file
    from mat_dist.reproduce.presets import FP32_SWITCHES

    study = PRESETS["mnist5k-study"]
    assert study.switches == FP32_SWITCHES
    assert all(PRESETS[name].switches == FP32_SWITCHES for name in ("mnist5k-cpu", "mnist5k-paper-radii"))
    old = json.loads((REPO / STUDY / PRESET_FILE).read_text())
    # as the study's folder was written when every run trained in fp32, before the preset named its switches
    # (the committed file has them since a later run rewrote it)
    old["preset"].pop("switches", None)
    (tmp_path / PRESET_FILE).write_text(json.dumps(old))
    _check_preset_file(tmp_path, study, [], partial=True)  # accepted, and now says what it pins
    assert json.loads((tmp_path / PRESET_FILE).read_text())["preset"]["switches"] == list(FP32_SWITCHES)
    # The same old folder under a preset that leaves the switches to the machine: other settings.
    unpinned = replace(study, switches=())
    other = tmp_path / "other"
    other.mkdir()
    (other / PRESET_FILE).write_text(json.dumps(old))
    with pytest.raises(UserError, match="with other settings"):
        _check_preset_file(other, unpinned, [], partial=True)


def test_training_minutes_keep_their_digits_when_a_run_takes_seconds():
    from mat_dist.reproduce.reproduction_report import _minutes

    assert [_minutes(m) for m in (12.345, 0.25, 0.003, 0.0)] == ["12.35", "0.25", "0.003", "0"]
