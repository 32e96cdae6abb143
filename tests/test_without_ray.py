"""mat-dist without Ray and MLflow installed, as on the GPU machine of scripts/gpu_check.sh: the package imports,
the in-process loop trains (--cluster none, tracking off) and the evaluator runs in this process (--workers 0,
--no-tracking); a command that needs Ray or MLflow stops with one line saying what to do instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

# On PYTHONPATH, a sitecustomize that makes `import ray` and `import mlflow` (and their submodules) fail as they
# do where the packages are not installed, and logs every such attempt to $BLOCKED_LOG.
BLOCKER = textwrap.dedent("""
    import os, sys

    class _Missing:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ray", "mlflow"):
                with open(os.environ["BLOCKED_LOG"], "a") as log:
                    log.write(name + "\\n")
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _Missing())
""")

TINY_RUN = """
name: tiny
seed: 0
data: {name: digits, val_size: 60, batch_size: 32, limit_train: 96}
model: {backbone: mnist_cnn, num_members: 3}
method: {name: mat}
attack: {steps: 2, norms: [l1, l2, linf], eps: [3.0, 1.0, 0.1], alpha: [1.0, 0.5, 0.05]}
optim: {name: adam, lr: 0.001}
train: {epochs: 1, threads: 1}
eval: {examples: 20, steps: 2, eps: {linf: 0.1, l2: 1.0, l1: 3.0}}
tracking: {enabled: false}
"""

TINY_SUITE = """
name: tiny-suite
examples: 8
shard_size: 4
seed: 0
eps: {linf: 0.1, l2: 1.0, l1: 3.0}
attacks:
  pgd_l1: {attack: pgd, norm: l1, params: {steps: 2}}
  apgd_linf: {attack: autoattack, norm: linf, params: {version: custom, attacks: [apgd-ce], n_iter: 2}}
"""


@pytest.fixture
def no_ray(tmp_path: Path):
    """Run ``matd ARGS`` in tmp_path with Ray and MLflow missing; returns (run, log of blocked imports)."""
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    log = tmp_path / "blocked.log"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "block"), "BLOCKED_LOG": str(log)}
    env.pop("MLFLOW_TRACKING_URI", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mat_dist.cli.main", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    return run, log


def test_the_blocker_really_hides_ray_and_mlflow(no_ray, tmp_path: Path) -> None:
    run, log = no_ray
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "block"), "BLOCKED_LOG": str(log)}
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'ray'" in probe.stderr
    assert log.read_text() == "ray\n"


def test_train_and_evaluate_in_process_without_ray_and_mlflow(no_ray, tmp_path: Path) -> None:
    run, log = no_ray
    (tmp_path / "tiny.yaml").write_text(TINY_RUN)
    (tmp_path / "suite.yaml").write_text(TINY_SUITE)
    trained = run("train", "--config", "tiny.yaml", "--output", "runs/tiny", "--cluster", "none")
    assert trained.returncode == 0, trained.stderr
    folder = tmp_path / "runs" / "tiny"
    assert (folder / "model.safetensors").is_file()
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1  # one epoch
    assert not (tmp_path / "mlflow.db").exists() and not (folder / "run.json").exists()

    evaluated = run("evaluate", "--run", "runs/tiny", "--suite", "suite.yaml", "--workers", "0", "--no-tracking",
                    "--output", "eval")
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["examples"] == 8 and set(summary["attacks"]) == {"pgd_l1", "apgd_linf"}
    assert (tmp_path / "eval" / "results.parquet").is_file()
    # Nothing on these paths even tried to import Ray or MLflow (an import caught and ignored would show here).
    assert not log.exists() or log.read_text() == ""


@pytest.mark.parametrize("args, hint", [
    (("train", "--config", "tiny.yaml", "--output", "runs/a"), "--cluster none"),  # Ray Train by default
    (("train", "--config", "tiny.yaml", "--output", "runs/b", "--cluster", "none", "tracking.enabled=true"),
     "tracking.enabled=false"),
])
def test_a_command_that_needs_ray_or_mlflow_says_so_in_one_line(no_ray, tmp_path: Path, args, hint) -> None:
    run, _ = no_ray
    (tmp_path / "tiny.yaml").write_text(TINY_RUN)
    result = run(*args)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("matd: error:")]
    assert len(errors) == 1 and hint in errors[0] and "Traceback" not in result.stderr, result.stderr


def test_the_in_process_evaluator_takes_the_gpu_when_the_suite_asks_for_one(monkeypatch) -> None:
    """--workers 0 honours the suite's resources.num_gpus as a Ray shard task does (the GPU check's evaluation)."""
    from mat_dist.evaluate import runner
    from mat_dist.evaluate.suite import Resources

    seen = []
    monkeypatch.setattr(runner, "pending_shards", lambda shards, out_dir: list(shards))
    monkeypatch.setattr(runner, "run_shard", lambda shard, **kw: seen.append(kw["device"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for gpus in (0, 1):
        runner.run_shards(["s"], model=None, images=None, labels=None, out_dir=Path("."), base_seed=0,
                          resources=Resources(num_cpus=1, num_gpus=gpus), workers=0)
    assert seen == ["cpu", "cuda"]


def test_a_study_runs_in_process_without_ray_and_mlflow(no_ray, tmp_path: Path) -> None:
    """The study's path on a machine without Ray or MLflow (the GPU machine): in-process training, the evaluator in
    this process, a fine-tuned row and the study report."""
    run, log = no_ray
    done = run("reproduce", "--preset", "tiny-study", "--output", "study", "--workers", "0", "--no-tracking",
               "--only", "ft_mat_rotate")
    assert done.returncode == 0, done.stderr
    rows = {r["name"] for r in json.loads((tmp_path / "study" / "study.json").read_text())["rows"]}
    assert rows == {"at_linf", "ft_mat_rotate"}
    assert not log.exists() or log.read_text() == ""
