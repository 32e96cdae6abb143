"""``matd evaluate``: bad inputs give one clear error line (exit 2); shipped suites load; a small run works."""

import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from evaluate_helpers import tiny_model_path, workdir
from mat_dist.core.checkpoint import SPEC_KEY
from mat_dist.plumbing.errors import UserError
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
    import shutil

    (tmp_path / "nets").mkdir()
    shutil.copyfile(tiny_model_path(), tmp_path / "nets" / "tiny.safetensors")
    monkeypatch.chdir(tmp_path)  # the report names the model from here, not by this machine's absolute path
    suite = tmp_path / "s.yaml"
    suite.write_text("# s\n# Run: matd evaluate --suite s.yaml\nexamples: 20\nshard_size: 10\n"
                     "eps: {linf: 0.1, l1: 5.0}\n"
                     "attacks:\n  pgd_linf: {attack: pgd, norm: linf, params: {steps: 3}}\n"
                     "  pgd_l1: {attack: pgd, norm: l1, params: {steps: 3}}\n")
    from mat_dist.cli.main import app
    from typer.testing import CliRunner

    db = tmp_path / "mlflow.db"
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", "nets/tiny.safetensors", "--data", "digits",
                                      "--suite", str(suite), "--workers", "0", "-o", str(tmp_path / "out"),
                                      "--tracking-uri", f"sqlite:///{db}"])
    assert result.exit_code == 0, result.output
    assert "all_attacks" in result.output and "MLflow run" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.splitlines()[0] == "# Evaluation: suite `s` on `nets/tiny.safetensors`"
    assert str(tmp_path) not in report
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    run_id = result.output.rsplit("MLflow run ", 1)[1].split()[0]
    run = client.get_run(run_id)
    assert run.data.metrics["all_attacks"] == pytest.approx(summary["all_attacks"])
    assert run.data.metrics["acc/pgd_l1"] == pytest.approx(summary["attacks"]["pgd_l1"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"results.parquet", "summary.json", "report.md"} <= artifacts


# ------------------------------------------------------------------ what to evaluate: run folders, data, models files

def _run_folder(root, data="digits"):
    """A training run folder as matd train leaves it: config.yaml (its data set), run.json, the model."""
    import shutil

    run = root / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: tiny\ndata: {{name: {data}}}\n")
    (run / "run.json").write_text(json.dumps({"run_id": "abc123"}))
    shutil.copyfile(tiny_model_path(), run / "model.safetensors")
    return run


def test_a_run_folder_names_the_data_set_the_output_and_the_parent_run(tmp_path):
    from mat_dist.evaluate.selection import choose

    run = _run_folder(tmp_path)
    chosen = choose(suite_name="quick", run=run)
    [target] = chosen.targets
    assert (chosen.dataset, chosen.leaderboard) == ("digits", None)
    assert target.output == run / "eval-quick" and target.run_folder == run and target.parent_run_id == "abc123"
    # a checkpoint inside it finds the run folder above it; --data wins over the run's
    chosen = choose(suite_name="quick", checkpoint=run / "model.safetensors", data="mnist5k")
    assert chosen.dataset == "mnist5k" and chosen.targets[0].run_folder == run
    # several --model: a mat-dist run says its data set, a foreign model does not
    factory = tmp_path / "f.py"
    factory.write_text("import torch\n\ndef make():\n    return torch.nn.Linear(64, 10)\n")
    assert choose(suite_name="quick", models=[str(run)]).dataset == "digits"
    with pytest.raises(UserError, match="pass --data NAME"):
        choose(suite_name="quick", models=[f"a={run}", f"b={factory}:make"])
    with pytest.raises(UserError, match="two models are named 'make'"):
        choose(suite_name="quick", models=[f"{factory}:make", f"{factory}:make"], data="digits")


def test_a_models_file_gives_each_model_its_folder_under_the_leaderboard(tmp_path, monkeypatch):
    from mat_dist.evaluate.selection import choose

    run = _run_folder(tmp_path)
    nets = tmp_path / "nets"
    nets.mkdir()
    (nets / "f.py").write_text("import torch\n\ndef make():\n    return torch.nn.Linear(64, 10)\n")
    (nets / "models.yaml").write_text(f"models:\n  - {{name: mine, model: f.py:make}}\n"
                                      f"  - {{name: mat, model: {run}}}\n")
    monkeypatch.chdir(tmp_path)
    chosen = choose(suite_name="field", models=["nets/models.yaml"], data="digits")
    assert chosen.leaderboard == Path("runs") / "leaderboard-field"
    assert [(t.source.label, t.source.kind, t.output) for t in chosen.targets] == [
        ("mine", "factory", chosen.leaderboard / "mine"), ("mat", "checkpoint", chosen.leaderboard / "mat")]
    assert chosen.targets[0].source.location == f"{nets.resolve() / 'f.py'}:make"  # relative to the file
    assert [t.run_folder for t in chosen.targets] == [None, run]


@pytest.mark.parametrize("body,expected", [
    ("models:\n  - {model: net.ts, wieghts: w.pt}\n", "unknown key 'models.0.wieghts'"),
    ("models:\n  - {model: net.ts}\nboard: x\n", "unknown key 'board'"),
    ("models:\n  - {model: net.ts, input_mean: [0.1], input_std: [-1]}\n", "models.0.input_std.0=-1 must be positive"),
    ("models: []\n", "models must list at least one model"),
])
def test_a_bad_models_file_is_one_line_from_matd_evaluate(monkeypatch, capsys, tmp_path, body, expected):
    path = tmp_path / "models.yaml"
    path.write_text(body)
    out = tmp_path / "out"
    line = one_error_line(*matd(monkeypatch, capsys, "evaluate", "--model", path, "--data", "digits", "-w", "0",
                                "--no-tracking", "-o", out)[::2])
    assert line.startswith(f"matd: error: {path}: ") and expected in line, line
    assert not out.exists()
