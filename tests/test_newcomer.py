"""A newcomer's first hour (issue 24): flags that mean one thing, advice that agrees with itself, reports that
cannot mislead. The mistakes themselves, run as commands, are rows of tests/test_reliability_inputs.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from mat_dist.plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def matd(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from mat_dist.cli.main import main

    monkeypatch.setattr(sys, "argv", ["matd", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def _commands():
    import typer

    from mat_dist.cli.main import app

    return typer.main.get_command(app).commands


# ---------------------------------------------------------------- flags and exits

def test_matd_version_prints_the_installed_version(monkeypatch, capsys):
    from importlib.metadata import version

    code, out, _ = matd(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"matd (mat-dist) {version('mat-dist')}"


def test_each_short_flag_means_one_long_option_on_every_command():
    meaning: dict[str, set[str]] = {}
    for command in _commands().values():
        for param in command.params:
            longs = [o for o in param.opts if o.startswith("--")]
            for short in (o for o in param.opts if re.fullmatch(r"-[A-Za-z]", o)):
                meaning.setdefault(short, set()).update(longs)
    clashes = {short: longs for short, longs in meaning.items() if len(longs) > 1}
    assert not clashes, clashes
    assert meaning["-n"] == {"--examples"} and meaning["-m"] == {"--model"} and meaning["-k"] == {"--kind"}


@pytest.mark.parametrize("name", ["train", "evaluate", "tune", "reproduce"])
def test_every_command_that_tracks_has_no_tracking(name):
    params = _commands()[name].params
    assert any("--no-tracking" in p.secondary_opts for p in params), name


def test_flags_show_no_bool_type_in_help(monkeypatch, capsys):
    for name in ("train", "evaluate", "tune", "reproduce"):
        code, out, _ = matd(monkeypatch, capsys, name, "--help")
        assert code == 0 and "--help" in out, out
        assert "<bool>" not in out, out


def test_train_no_tracking_is_the_override_tracking_enabled_false(monkeypatch):
    import mat_dist.cli.train_cmd as train_cmd

    seen = {}
    monkeypatch.setattr(train_cmd, "run_train", lambda **kw: seen.update(kw))
    from typer.testing import CliRunner

    from mat_dist.cli.main import app

    result = CliRunner().invoke(app, ["train", "-c", "mnist5k-mat", "--no-tracking", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    assert seen["overrides"] == ["train.epochs=1", "tracking.enabled=false"]


def test_a_usage_mistake_is_one_line_and_exit_2(monkeypatch, capsys):
    code, out, err = matd(monkeypatch, capsys, "evaluate", "--exemples", "3")
    assert code == 2 and not out
    assert err.strip().splitlines() == [err.strip()] and err.startswith("matd: error: no such option: --exemples")


# ---------------------------------------------------------------- advice that agrees with itself

def test_resume_of_an_empty_folder_says_drop_resume_with_or_without_config(tmp_path):
    from mat_dist.cli.train_cmd import resolve_run_config

    messages = []
    for config in (None, "mnist5k-mat"):
        with pytest.raises(UserError) as err:
            resolve_run_config(config, tmp_path / "empty", True, [])
        messages.append(str(err.value))
    assert all("drop --resume" in m for m in messages), messages
    assert "give --config" in messages[0] and "give --config" not in messages[1]


def test_cluster_none_means_in_process_for_evaluate_too():
    from mat_dist.cli.evaluate_cmd import check_options

    assert check_options(examples=None, workers=None, cluster="none") == (0, None)
    assert check_options(examples=5, workers=2, cluster=None) == (2, None)
    with pytest.raises(UserError, match="--examples 0 must be at least 1"):
        check_options(examples=0, workers=None, cluster=None)


def test_a_bare_address_is_a_cluster_not_a_file_name():
    from mat_dist.cluster import load_cluster

    cluster = load_cluster("127.0.0.1:9")
    assert cluster.address == "127.0.0.1:9" and not cluster.is_local and cluster.workers.num == 1
    assert load_cluster("ray://head:10001").address == "ray://head:10001"
    with pytest.raises(UserError, match="does not exist.*HOST:PORT.*'none'"):
        load_cluster("my-clustr.yaml")


def test_an_unknown_key_suggests_the_near_one():
    from mat_dist.cluster import cluster_from_dict
    from mat_dist.core.run_config import config_from_dict

    with pytest.raises(UserError, match=r"did you mean train\.epochs\?"):
        config_from_dict({"train": {"epoch": 3}})
    with pytest.raises(UserError, match=r"did you mean workers\.cpus\?"):
        cluster_from_dict({"workers": {"cpu": 1}})
    with pytest.raises(UserError) as err:
        config_from_dict({"train": {"colour": 3}})
    assert "did you mean" not in str(err.value)  # nothing near: no guess


# ---------------------------------------------------------------- checks before side effects

def test_a_refused_write_probe_creates_no_folder(tmp_path):
    from mat_dist.plumbing.atomic import probe_writable
    from mat_dist.cluster.runtime import check_storage
    from mat_dist.core.run_folder import check_writable

    check_writable(tmp_path / "run" / "deep")
    check_storage(str(tmp_path / "run" / "ray"))
    assert list(tmp_path.iterdir()) == []  # probed, nothing made
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        probe_writable(tmp_path / "file" / "sub")


def test_evaluate_with_zero_examples_is_refused_through_the_api_too(tmp_path):
    import torch

    import mat_dist

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(UserError, match="--examples 0 must be at least 1"):
        mat_dist.evaluate_model(net, data="digits", suite="quick", examples=0, workers=0, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_validate_refuses_a_config_whose_data_folder_is_missing(tmp_path):
    from mat_dist.file_kinds import validate_file

    path = tmp_path / "cfg.yaml"
    path.write_text("data: {name: mnist, root: /no/such/mnist}\n")
    with pytest.raises(UserError, match="/no/such/mnist does not exist"):
        validate_file(str(path))
    path.write_text("data: {name: mnist}\n")
    assert "data.root unset: pass data.root=FOLDER when you train" in validate_file(str(path))


# ---------------------------------------------------------------- reports that cannot mislead

def _summary(clean: float, n: int = 20) -> dict:
    from mat_dist.evaluate.metrics import wilson_interval

    k = round(clean * n)
    return {"examples": n, "clean": clean, "attacks": {"pgd_linf": 0.1, "pgd_l2": 0.1}, "all_linf": 0.1,
            "all_l2": 0.1, "all_attacks": 0.05,
            "intervals": {key: list(wilson_interval(k if key == "clean" else 1, n))
                          for key in ("clean", "pgd_linf", "pgd_l2", "all_linf", "all_l2", "all_attacks")}}


def _meta(**extra) -> dict:
    return {"suite": "quick", "model": "../model.safetensors", "dataset": "mnist5k", "num_members": 3,
            "ensemble_output": "softmax_mean", "workers": 1, "wall_time_s": 1.0, "machine": "test",
            "versions": {"torch": "t", "foolbox": "f", "pyautoattack": "a", "ray": "r"}, "trained_as": "mat", **extra}


def _info(linf: float = 0.3, l2: float = 2.0) -> dict:
    return {"pgd_linf": {"attack": "pgd", "norm": "linf", "eps": linf, "library": "own"},
            "pgd_l2": {"attack": "pgd", "norm": "l2", "eps": l2, "library": "own"}}


def test_a_model_at_chance_is_not_reported_free_of_gradient_masking():
    from mat_dist.evaluate import eval_report as report, sanity

    found = sanity.chance_warnings({"clean": 0.15}, num_classes=10)
    assert len(found) == 1 and "near chance" in found[0] and "15.0%" in found[0]
    assert sanity.chance_warnings({"clean": 0.6}, num_classes=10) == []
    assert sanity.chance_warnings({"clean": 0.6}, num_classes=2) != []  # 60% of 2 classes is near chance
    text = report.render(summary=_summary(0.15), attack_info=_info(), meta=_meta(), transfer={}, curves=[],
                         warnings=found)
    assert "no sign of gradient masking" not in text and "near chance" in text


def test_the_paper_column_appears_only_at_the_papers_radii():
    from mat_dist.evaluate import eval_report as report

    at_paper = report.render(summary=_summary(0.9), attack_info=_info(), meta=_meta(), transfer={}, curves=[],
                             warnings=[])
    assert "paper MAT (%)" in at_paper
    elsewhere = report.render(summary=_summary(0.9), attack_info=_info(linf=0.1), meta=_meta(), transfer={},
                              curves=[], warnings=[])
    assert "paper MAT (%)" not in elsewhere
    assert "No paper column" in elsewhere and "pgd_linf at 0.1 (the paper's 0.3)" in elsewhere


def test_the_strength_explanation_is_written_once_for_all_norms():
    from mat_dist.evaluate import eval_report as report

    text = report.render(summary=_summary(0.9), attack_info=_info(), meta=_meta(), transfer={}, curves=[],
                         warnings=[])
    assert text.count("overstated robustness") == 1 and text.count("no full-strength AutoAttack") == 2


def test_the_consoles_final_table_carries_intervals():
    from mat_dist.cli.evaluate_cmd import summary_table

    table = summary_table(_summary(0.15))
    assert "(95% interval)" in table.splitlines()[0]
    assert re.search(r"clean\s+15\.0%\s+\[\s*5\.2,\s*36\.0\]", table), table


def test_curves_share_one_relative_radius_axis_with_bands_and_the_runs_name(tmp_path):
    import matplotlib.pyplot as plt

    from mat_dist.evaluate.curves import plot_curves

    points = [{"curve": "radius", "attack": a, "norm": n, "x": eps * s, "robust_accuracy": r, "examples": 20}
              for a, n, eps in (("pgd_linf", "linf", 0.3), ("pgd_l1", "l1", 10.0))
              for s, r in ((0.5, 0.6), (1.0, 0.4), (2.0, 0.1))]
    fig = plot_curves(points, tmp_path / "c.png", radii={"pgd_linf": 0.3, "pgd_l1": 10.0}, title="my-run",
                      subtitle="mnist5k, suite field")
    ax = fig.axes[0]
    xs = [list(line.get_xdata()) for line in ax.get_lines()]
    assert xs == [pytest.approx([0.5, 1.0, 2.0])] * 2  # l_inf and l_1 on one axis, 1 = the suite's radius
    assert len(ax.collections) == 2  # a 95% band per curve
    assert fig._suptitle.get_text().startswith("my-run")
    assert (tmp_path / "c.png").stat().st_size > 0
    plt.close(fig)


def test_reports_name_models_relative_to_where_the_command_ran(tmp_path, monkeypatch):
    from mat_dist.evaluate.eval_report import shown_location

    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    assert shown_location(str(here / "runs" / "x" / "model.safetensors")) == "runs/x/model.safetensors"
    assert shown_location(str(here / "nets" / "f.py") + ":build") == "nets/f.py:build"
    elsewhere = str(tmp_path / "other" / "net.ts")  # not under the current folder: as given
    assert shown_location(elsewhere) == elsewhere
    assert shown_location(elsewhere.replace("net.ts", "f.py:build")) == elsewhere.replace("net.ts", "f.py:build")
    assert shown_location("runs/x/model.safetensors") == "runs/x/model.safetensors"
    assert shown_location("mymodels:resnet18") == "mymodels:resnet18"
    assert shown_location("<Sequential>") == "<Sequential>"


def test_an_evaluation_folder_of_other_values_names_them(tmp_path):
    from mat_dist.evaluate.evaluator import fingerprint_mismatch

    old = {"model": "m", "examples": 1000, "suite": {"eps": {"linf": 0.3}}}
    line = fingerprint_mismatch(tmp_path, old, {**old, "examples": 20})
    assert "examples 1000 there, 20 now" in line and "rerun with -n 1000" in line
    line = fingerprint_mismatch(tmp_path, old, {**old, "suite": {"eps": {"linf": 0.1}}})
    assert "suite.eps.linf 0.3 there, 0.1 now" in line and "rerun with" not in line


# ---------------------------------------------------------------- the README

README = (ROOT / "README.md").read_text()


def test_the_readme_names_and_links_the_paper():
    head = " ".join(README.split("\n## ", 1)[0].split())
    assert "MIMO adversarial training" in head and "https://openreview.net/forum?id=ArY-zkyHI_l" in head
    assert "https://github.com/RuqiBai/MIMO_Adversarial_Training" in head


def test_the_readme_reads_in_the_order_of_a_first_hour():
    headings = re.findall(r"^## (.+)$", README, flags=re.M)
    order = ["The two commands", "Set-up", "Train", "Evaluate your model", "Run on a cluster", "Search",
             "Reproduce the paper"]
    assert [h for h in headings if h in order] == order, headings
    assert "bash scripts/main.sh" in README and "bash scripts/test.sh" in README
    methods = README.split("### Methods\n", 1)[1].split("\n#", 1)[0]
    assert "| name |" in methods and "| `mat` |" in methods  # the Methods table stays a table


def test_the_readme_shows_your_own_data_in_three_lines():
    block = README.split("### Your own data", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 3 and "np.savez" in block and "data.name=arrays" in block


def test_the_readme_writes_radii_in_one_order():
    # l_inf, l_2, l_1 everywhere: (0.3, 2, 10), never (10, 2, 0.3)
    assert not re.search(r"\(10, 2(\.0)?, 0\.3\)", README)
    assert not re.search(r"\(12, 0\.5, 0\.03\)", README)
