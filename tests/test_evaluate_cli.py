"""``matd evaluate``: bad inputs give one clear error line (exit 2); shipped suites load; a small run works."""

import json
import sys

import pytest
from safetensors.torch import load_file, save_file

from evaluate_helpers import tiny_model_path, workdir
from mat_dist.checkpoint import SPEC_KEY
from mat_dist.evaluate.suite import load_suite, shipped_suites


def matd(monkeypatch, capsys, *args):
    from mat_dist.cli.main import main

    monkeypatch.setattr(sys, "argv", ["matd", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def one_error_line(code, err):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("matd: error: "), err
    return lines[0]


@pytest.mark.parametrize("name", ["quick", "paper", "full"])
def test_every_shipped_suite_loads_and_says_how_to_run_it(name):
    suite = load_suite(name)
    assert suite.attacks and {a.norm.value for a in suite.attacks} == {"linf", "l2", "l1"}
    text = (suite.source and open(suite.source).read()) or ""
    assert f"--suite {name}" in text.splitlines()[1]
    assert set(shipped_suites()) >= {"quick", "paper", "full"}


def test_paper_suite_matches_appendix_c2():
    suite = load_suite("paper")
    kinds = {(a.attack, a.norm.value) for a in suite.attacks}
    assert kinds == {("pgd", "linf"), ("pgd", "l2"), ("pgd", "l1"), ("cw", "l2"), ("autoattack", "linf"),
                     ("autoattack", "l2"), ("autoattack", "l1"), ("hsj", "linf"), ("boundary", "l2"),
                     ("saltpepper", "l1")}
    assert all(a.params["steps"] == 200 for a in suite.attacks if a.attack == "pgd")
    assert {n.value: e for n, e in suite.eps.items()} == {"linf": 0.3, "l2": 2.0, "l1": 10.0}


def test_unknown_suite(monkeypatch, capsys):
    line = one_error_line(*matd(monkeypatch, capsys, "evaluate", "--checkpoint", tiny_model_path(), "--data",
                                "digits", "--suite", "nosuch")[::2])
    assert "nosuch" in line and "quick" in line


@pytest.mark.parametrize("body,expected", [
    ("attacks: {a: {attack: deepfool, norm: l2}}", "unknown attack 'deepfool'"),
    ("attacks: {a: {attack: pgd, norm: l3}}", "unknown norm 'l3'"),
    ("attacks: {a: {attack: cw, norm: linf}}", "cw does not attack in linf"),
    ("attacks: {a: {attack: pgd, norm: linf, params: {stepz: 3}}}", "no parameter 'stepz'"),
    ("attacks: {a: {attack: pgd, norm: linf, eps: 8}}", "above 1"),
    ("atacks: {}", "unknown key 'atacks'"),
])
def test_bad_suite_files(monkeypatch, capsys, body, expected):
    path = workdir() / "bad-suite.yaml"
    path.write_text("eps: {linf: 0.1}\n" + body + "\n")
    code, _, err = matd(monkeypatch, capsys, "evaluate", "--checkpoint", tiny_model_path(), "--data", "digits",
                        "--suite", path)
    assert expected in one_error_line(code, err)


def test_checkpoint_of_another_architecture(monkeypatch, capsys):
    # The weights of an M=2 model under a description that says M=3: the tensors do not fit.
    src = tiny_model_path()
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    spec = json.loads(meta[SPEC_KEY])
    spec["num_members"] = 3
    meta[SPEC_KEY] = json.dumps(spec)
    other = workdir() / "other-arch.safetensors"
    save_file(load_file(str(src)), str(other), metadata=meta)
    line = one_error_line(*matd(monkeypatch, capsys, "evaluate", "--checkpoint", other, "--data", "digits",
                                "--workers", "0")[::2])
    assert "does not load" in line and "other-arch" in line


def test_checkpoint_for_other_images(monkeypatch, capsys):
    line = one_error_line(*matd(monkeypatch, capsys, "evaluate", "--checkpoint", tiny_model_path(), "--data",
                                "mnist5k", "--workers", "0")[::2])
    assert "takes 1x8x8 images but mnist5k has 1x28x28" in line


def test_truncated_checkpoint(monkeypatch, capsys):
    data = tiny_model_path().read_bytes()
    cut = workdir() / "truncated.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    line = one_error_line(*matd(monkeypatch, capsys, "evaluate", "--checkpoint", cut, "--data", "digits")[::2])
    assert "truncated.safetensors" in line and ("damaged" in line or "does not load" in line)


@pytest.mark.parametrize("args,expected", [
    ([], "exactly one of --run"),
    (["--run", "/nonexistent/run"], "is not a folder"),
    (["--checkpoint", "/nonexistent/model.safetensors"], "does not exist"),
])
def test_bad_model_options(monkeypatch, capsys, args, expected):
    assert expected in one_error_line(*matd(monkeypatch, capsys, "evaluate", *args)[::2])


def test_too_many_examples(monkeypatch, capsys):
    line = one_error_line(*matd(monkeypatch, capsys, "evaluate", "--checkpoint", tiny_model_path(), "--data",
                                "digits", "-n", "100000", "-o", workdir() / "too-many")[::2])
    assert "more than the 500 test images" in line


def test_a_small_evaluation_from_the_command_line_logs_to_mlflow(monkeypatch, capsys, tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("# s\n# Run: matd evaluate --suite s.yaml\nexamples: 20\nshard_size: 10\n"
                     "eps: {linf: 0.1, l1: 5.0}\n"
                     "attacks:\n  pgd_linf: {attack: pgd, norm: linf, params: {steps: 3}}\n"
                     "  pgd_l1: {attack: pgd, norm: l1, params: {steps: 3}}\n")
    from mat_dist.cli.main import app
    from typer.testing import CliRunner

    db = tmp_path / "mlflow.db"
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tiny_model_path()), "--data", "digits",
                                      "--suite", str(suite), "--workers", "0", "-o", str(tmp_path / "out"),
                                      "--tracking-uri", f"sqlite:///{db}"])
    assert result.exit_code == 0, result.output
    assert "all_attacks" in result.output and "MLflow run" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    run_id = result.output.rsplit("MLflow run ", 1)[1].split()[0]
    run = client.get_run(run_id)
    assert run.data.metrics["all_attacks"] == pytest.approx(summary["all_attacks"])
    assert run.data.metrics["acc/pgd_l1"] == pytest.approx(summary["attacks"]["pgd_l1"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"results.parquet", "summary.json", "report.md"} <= artifacts
