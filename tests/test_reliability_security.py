"""Security: YAML never runs code, secrets never reach MLflow or error lines, servers bind to 127.0.0.1.

Pickled code in checkpoints and CIFAR batches is covered by
tests/test_models.py (state.pt) and tests/test_data.py (CIFAR batches).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from mat_dist.plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SECRETS = ("s3cr3t-t0ken", "AKIA-s3cr3t-key", "mlflow-s3cr3t")


@pytest.fixture
def clean_mlflow_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)


# ------------------------------------------------------------------ YAML

PAYLOAD = "!!python/object/apply:os.system ['touch {marker}']\n"


@pytest.mark.parametrize("kind", ["config", "cluster", "suite", "space"])
def test_yaml_with_python_tags_is_refused_and_not_run(tmp_path: Path, kind: str) -> None:
    from mat_dist.core.run_config import load_config
    from mat_dist.cluster.files import load_cluster
    from mat_dist.evaluate.suite import load_suite
    from mat_dist.tune.space import load_space

    marker = tmp_path / "pwned"
    path = tmp_path / f"{kind}.yaml"
    path.write_text(f"name: {PAYLOAD.format(marker=marker)}" if kind != "cluster"
                    else f"address: {PAYLOAD.format(marker=marker)}")
    loader = {"config": load_config, "cluster": load_cluster, "suite": load_suite, "space": load_space}[kind]
    with pytest.raises(UserError) as info:
        loader(str(path))
    assert "\n" not in str(info.value)
    assert not marker.exists()


# ------------------------------------------------------------------ secrets

def test_secrets_never_reach_mlflow_params_tags_or_artifacts(tmp_path: Path, monkeypatch, clean_mlflow_env) -> None:
    """A token in tracking.uri and secret env vars: nothing of them in the MLflow run or the run's reports."""
    import mlflow

    from mat_dist.core.run_config import config_from_dict
    from mat_dist.training.in_process import train_in_process

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "mlflow-s3cr3t")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "AKIA-s3cr3t-key")
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["train"]["epochs"] = 1
    raw["tracking"] = {"enabled": True, "uri": "http://alice:s3cr3t-t0ken@mlflow.example:5000"}
    store = f"sqlite:///{tmp_path}/m.db"
    result = train_in_process(config_from_dict(raw), tmp_path / "run", tracking_uri=store)

    client = mlflow.MlflowClient(tracking_uri=store)
    run = client.get_run(result.tracking_run_id)
    logged = json.dumps({"params": run.data.params, "tags": run.data.tags, "metrics": list(run.data.metrics)})
    assert run.data.params["tracking.uri"] == "http://***@mlflow.example:5000"
    texts = [logged]
    download = Path(client.download_artifacts(result.tracking_run_id, "", str(tmp_path / "artifacts")))
    names = sorted(p.name for p in download.rglob("*") if p.is_file())
    assert "config.yaml" in names and "report.md" in names
    texts += [p.read_text(errors="replace") for p in download.rglob("*") if p.suffix in (".yaml", ".md", ".jsonl")]
    texts += [(tmp_path / "run" / name).read_text() for name in ("report.md", "metrics.jsonl")]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
    # The run folder keeps the user's own config unchanged (it is theirs, and --resume compares with it).
    assert "s3cr3t-t0ken" in (tmp_path / "run" / "config.yaml").read_text()


def test_redact_strips_url_credentials_everywhere() -> None:
    from mat_dist.plumbing.tracking import redact, safe_uri

    assert safe_uri("http://u:p@h:5000/x") == "http://***@h:5000/x"
    assert safe_uri("see https://tok@h and sqlite:////a/b.db") == "see https://***@h and sqlite:////a/b.db"
    assert redact({"tracking": {"uri": "http://u:p@h"}, "hosts": ["s3://k:s@b/x", 3],
                   "storage_key": "v"}) == {"tracking": {"uri": "http://***@h"}, "hosts": ["s3://***@b/x", 3],
                                            "storage_key": "***"}


def test_cluster_env_secrets_reach_only_the_workers() -> None:
    """The cluster file's env goes to Ray's worker runtime_env, and into no MLflow call or printed line."""
    uses = [(path.relative_to(ROOT).as_posix(), line.strip())
            for path in sorted((ROOT / "mat_dist").rglob("*.py"))
            for line in path.read_text().splitlines() if "cluster.env" in line]
    assert uses == [("mat_dist/training/ray_job.py",
                     'worker_runtime_env={"env_vars": dict(cluster.env)} if cluster.env else None,')]


# ------------------------------------------------------------------ servers bind to 127.0.0.1

_PROBE = """
import json, socket, ray
from mat_dist.cluster.files import load_cluster
from mat_dist.cluster.runtime import connect
with connect(load_cluster("local"), check=False):
    node = ray._private.worker._global_node
    host, port = node.webui_url.rsplit(":", 1)
    def answers(ip):
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex((ip, int(port))) == 0
    print(json.dumps({"webui": node.webui_url, "node_ip": node.node_ip_address,
                      "on_localhost": answers("127.0.0.1"), "on_node_ip": answers(node.node_ip_address)}))
"""

def test_local_ray_dashboard_binds_to_localhost_only(tmp_path: Path) -> None:
    """clusters/local.yaml through ``connect``: the dashboard (HTTP UI and job API) answers on 127.0.0.1 only."""
    from mat_dist.cluster.files import load_cluster
    from mat_dist.cluster.runtime import ray_init_args

    assert ray_init_args(load_cluster("local"))["dashboard_host"] == "127.0.0.1"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["webui"].startswith("127.0.0.1:"), info
    assert info["on_localhost"], info
    if info["node_ip"] not in ("127.0.0.1", "localhost"):
        assert not info["on_node_ip"], info  # not reachable through the machine's network address
