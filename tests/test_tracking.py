"""Tests of mat_dist.plumbing.tracking against real (temporary) sqlite MLflow stores."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from mat_dist.plumbing.errors import UserError
from mat_dist.plumbing.tracking import (
    DEFAULT_TRACKING_URI,
    NullTracker,
    Tracker,
    git_commit,
    redact,
    resolve_tracking_uri,
)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run in tmp_path with no MLflow env vars; undo MLflow's global tracking URI afterwards."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(var, raising=False)
    yield
    if "mlflow" in sys.modules:  # Tracker.start sets it globally (and in os.environ)
        import mlflow

        mlflow.set_tracking_uri(None)


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/m.db"


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_round_trip(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    tracker = Tracker.start(uri=uri, experiment="exp-a", run_name="run-1", tags={"team": "robust"})
    tracker.log_params({
        "method": {"eps": 0.3, "norms": ["linf", "l2"]},
        "lr": 1e-3,
        "aws_secret_access_key": "AKIA-secret",
        "storage": {"api_key": "k-123"},
        "long": "x" * 10_000,
    })
    for step in range(3):
        tracker.log_metrics({"train/loss": 1.0 / (step + 1), "bad": math.nan, "text": "n/a"}, step=step)
    note = tmp_path / "note.txt"
    note.write_text("hello")
    tracker.log_artifact(note, "notes")
    tracker.end()
    tracker.end()  # idempotent
    assert tracker.failures == 0

    client = _client(uri)
    run = client.get_run(tracker.run_id)
    params = run.data.params
    assert params["method.eps"] == "0.3"
    assert params["method.norms"] == "['linf', 'l2']"
    assert params["lr"] == "0.001"
    assert params["aws_secret_access_key"] == "***"
    assert params["storage.api_key"] == "***"
    assert len(params["long"]) == 6000
    assert "k-123" not in str(params) and "AKIA" not in str(params)
    assert _history(client, tracker.run_id, "train/loss") == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert "bad" not in run.data.metrics and "text" not in run.data.metrics
    assert [f.path for f in client.list_artifacts(tracker.run_id, "notes")] == ["notes/note.txt"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run-1"
    assert run.data.tags["team"] == "robust"
    assert client.get_experiment(run.info.experiment_id).name == "exp-a"
    # Artifacts live next to the database, by absolute path (Ray workers chdir elsewhere).
    assert run.info.artifact_uri.startswith(str(tmp_path / "mlruns"))


def test_context_manager_marks_failed_and_killed(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    with pytest.raises(ValueError):
        with Tracker.start(uri=uri, experiment="e", run_name="boom") as failed:
            raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt):
        with Tracker.start(uri=uri, experiment="e", run_name="ctrl-c") as killed:
            raise KeyboardInterrupt
    client = _client(uri)
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert client.get_run(killed.run_id).info.status == "KILLED"


def test_resume_appends_to_same_run(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    first = Tracker.start(uri=uri, experiment="e", run_name="r")
    first.log_params({"lr": 0.1})
    first.log_metrics({"acc": 0.5}, step=0)
    first.end("KILLED")

    again = Tracker.start(uri=uri, experiment="e", run_name="r", run_id=first.run_id)
    assert again.run_id == first.run_id
    again.log_params({"lr": 0.1})  # same config logged again on resume: no failure
    again.log_metrics({"acc": 0.7}, step=1)
    again.end()
    assert again.failures == 0

    client = _client(uri)
    assert _history(client, first.run_id, "acc") == [(0, 0.5), (1, 0.7)]
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert len(client.search_runs([again.experiment_id])) == 1


def test_resume_unknown_run_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="0123456789abcdef"):
        Tracker.start(uri=_uri(tmp_path), experiment="e", run_name="r", run_id="0123456789abcdef")


def test_nested_run_and_two_trackers_in_one_process(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    parent = Tracker.start(uri=uri, experiment="sweep", run_name="parent")
    child = Tracker.start(uri=uri, experiment="sweep", run_name="trial-0", parent_run_id=parent.run_id)
    parent.log_metrics({"best": 1.0}, step=0)
    child.log_metrics({"loss": 2.0}, step=0)
    child.end()
    parent.end()

    client = _client(uri)
    child_run, parent_run = client.get_run(child.run_id), client.get_run(parent.run_id)
    assert child_run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert "mlflow.parentRunId" not in parent_run.data.tags
    assert set(parent_run.data.metrics) == {"best"}
    assert set(child_run.data.metrics) == {"loss"}


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    assert resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path}/sub/x.db"
    assert resolve_tracking_uri("sqlite:////abs/y.db") == "sqlite:////abs/y.db"
    assert resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/from-env.db"
    assert resolve_tracking_uri("http://explicit:5000") == "http://explicit:5000"

    with pytest.raises(UserError, match="sqlite"):
        resolve_tracking_uri("file:///tmp/mlruns")
    with pytest.raises(UserError, match="sqlite"):
        resolve_tracking_uri("./mlruns")


def test_default_store_in_cwd_and_no_experiment_id_in_env(tmp_path: Path) -> None:
    tracker = Tracker.start(uri=None, experiment="e", run_name="r")
    tracker.end()
    assert tracker.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert (tmp_path / "mlflow.db").is_file()
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ
    # Workers inherit the absolute URI, not a relative one.
    assert os.environ["MLFLOW_TRACKING_URI"] == tracker.tracking_uri


def test_unreachable_server_is_quick_user_error() -> None:
    uri = "http://127.0.0.1:9"  # discard port: nothing listens
    before = dict(os.environ)
    t0 = time.monotonic()
    with pytest.raises(UserError) as info:
        Tracker.start(uri=uri, experiment="e", run_name="r")
    assert time.monotonic() - t0 < 15  # hang guard, not a speed test
    message = str(info.value)
    assert uri in message and "unreachable" in message and "\n" not in message
    # Probe settings restored, and the bad URI not left for Ray workers to inherit.
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_TRACKING_URI"):
        assert os.environ.get(var) == before.get(var)


def test_failures_mid_run_warn_once_and_are_counted(tmp_path: Path, monkeypatch) -> None:
    from mlflow.exceptions import MlflowException

    uri = _uri(tmp_path)
    tracker = Tracker.start(uri=uri, experiment="e", run_name="r")

    def gone(*args, **kwargs):
        raise MlflowException("API request failed: [Errno 111] Connection refused")

    def disk_gone(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracker._client, "log_batch", gone)
    monkeypatch.setattr(tracker._client, "log_artifact", disk_gone)
    (tmp_path / "a.txt").write_text("a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_metrics({"loss": 0.9}, step=1)
        tracker.log_params({"lr": 0.1})
        tracker.log_artifact(tmp_path / "a.txt")
        tracker.set_tags({"k": "v"})
    ours = [w for w in caught if "MLflow logging failed" in str(w.message)]
    assert len(ours) == 1
    assert "loss" in str(ours[0].message) and "Connection refused" in str(ours[0].message)
    assert tracker.failures == 5

    monkeypatch.undo()  # the server is back: the run still ends properly
    tracker.end()
    assert _client(uri).get_run(tracker.run_id).info.status == "FINISHED"


def test_log_figure(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uri = _uri(tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with Tracker.start(uri=uri, experiment="e", run_name="r") as tracker:
        tracker.log_figure(fig, "plots/line.png")
    plt.close(fig)
    listed = [f.path for f in _client(uri).list_artifacts(tracker.run_id, "plots")]
    assert listed == ["plots/line.png"]
    assert tracker.failures == 0


def test_redact() -> None:
    params = {
        "MLFLOW_TRACKING_TOKEN": "t",
        "Password": "p",
        "lr": 0.1,
        "cloud": {"aws_secret_access_key": "s", "region": "eu"},
    }
    assert redact(params) == {
        "MLFLOW_TRACKING_TOKEN": "***",
        "Password": "***",
        "lr": 0.1,
        "cloud": {"aws_secret_access_key": "***", "region": "eu"},
    }
    assert params["Password"] == "p"  # the input is not modified


def test_null_tracker_does_nothing(tmp_path: Path) -> None:
    with NullTracker() as tracker:
        tracker.log_params({"a": 1})
        tracker.log_metrics({"m": 1.0}, step=0)
        tracker.log_artifact(tmp_path / "missing.txt")
        tracker.log_figure(object(), "x.png")
        tracker.set_tags({"k": "v"})
    tracker.end()
    assert tracker.run_id is None
    assert list(tmp_path.iterdir()) == []  # no store created


def test_git_commit_outside_repo_is_none(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(tmp_path) is None
    assert git_commit(tmp_path / "no" / "such" / "dir") is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_in_repo_marks_dirty(tmp_path: Path, monkeypatch) -> None:
    # A throwaway repository inside tmp_path; the project's repository is never touched.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "f.txt").write_text("1")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()

    assert git_commit(repo) == head
    (repo / "f.txt").write_text("2")
    assert git_commit(repo / "f.txt") == head + "+dirty"
