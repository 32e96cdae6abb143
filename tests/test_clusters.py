"""Cluster files: every shipped one validates, bad ones give one clear line, checks fail fast. No Ray runtime."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from mat_dist.core.run_config import load_config
from mat_dist.cluster.files import (
    SHIPPED_CLUSTERS,
    ClusterConfig,
    LocalConfig,
    WorkersConfig,
    cluster_from_dict,
    cluster_to_dict,
    load_cluster,
)
from mat_dist.training.ray_job import check_job
from mat_dist.cluster.runtime import Runtime, check_resources, check_storage, probe_address
from mat_dist.plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(SHIPPED_CLUSTERS.glob("*.yaml"))


def test_the_four_files_ship() -> None:
    assert {p.name for p in SHIPPED} >= {"local.yaml", "multi-gpu.yaml", "aws.yaml", "kuberay-rayjob.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_cluster_file_validates(path: Path) -> None:
    cluster = load_cluster(path)
    assert isinstance(cluster, ClusterConfig)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") and any(("matd train" in line or "ray up" in line or "kubectl" in line)
                                            for line in lines if line.startswith("#")), \
        f"{path.name} must open with comment lines giving the commands that start it"
    # what it says round-trips
    assert cluster_from_dict(cluster_to_dict(cluster), source=cluster.source) == cluster


def test_local_yaml_is_the_embedded_default() -> None:
    assert dataclasses.replace(load_cluster("local"), source="embedded default") == ClusterConfig()
    assert load_cluster(None) == ClusterConfig()
    assert ClusterConfig().is_local and ClusterConfig().workers.num == 1 and not ClusterConfig().use_gpu


def test_ray_launcher_and_kuberay_files_carry_a_mat_dist_section() -> None:
    aws = load_cluster("aws")
    assert aws.elastic and aws.use_gpu and aws.storage.path.startswith("s3://") and aws.autoscaling
    kube = load_cluster("kuberay-rayjob")
    assert kube.workers.num == 8 and kube.storage.path == "/shared/ray"


BAD = [
    ("malformed", "workers: {num: 2\n", "not valid YAML"),
    ("unknown-top", "adress: 1.2.3.4:6379\n", "unknown key adress"),
    ("unknown-nested", "workers: {num: 2, gpu: 1}\n", "unknown key workers.gpu"),
    ("negative-workers", "workers: {num: -2}\n", "workers.num=-2 must be at least 1"),
    ("zero-cpus", "workers: {cpus: 0}\n", "workers.cpus=0 must be positive"),
    ("min-above-num", "workers: {num: 2, min: 3}\n", "workers.min=3"),
    ("wrong-type", "workers: {num: two}\n", "workers.num must be an integer"),
    ("bool-as-int", "workers: {num: true}\n", "workers.num must be an integer"),
    ("placement", "workers: {placement: EVERYWHERE}\n", "workers.placement must be one of PACK"),
    ("address", "address: not an address\n", "is not HOST:PORT"),
    ("list", "- 1\n- 2\n", "must be a YAML mapping"),
    ("local-with-address", "address: 10.0.0.1:6379\nlocal: {num_cpus: 2}\n", "local section applies only"),
    ("failure-limit", "failure: {controller_failure_limit: -1}\n", "controller_failure_limit=-1 must be >= 0"),
    ("kept", "storage: {checkpoints_kept: 0}\n", "checkpoints_kept=0"),
    ("half-gpus", "workers: {gpus: 1.5}\n", "whole GPUs"),
    ("section-not-mapping", "workers: 4\n", "workers must be a mapping"),
]


@pytest.mark.parametrize("name,text,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_cluster_files_give_one_clear_line(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_cluster(path)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and str(path) in message


def test_missing_cluster_file_names_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist.*local.*'none'"):
        load_cluster(tmp_path / "nope.yaml")


def test_relative_storage_path_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("storage: {path: ckpts}\n")
    assert load_cluster(tmp_path / "c.yaml").storage.path == str(tmp_path / "ckpts")
    assert ClusterConfig().storage_uri(tmp_path / "run") == str(tmp_path / "run" / "ray")


# ------------------------------------------------------------------ fast, clear failures

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends


def test_unreachable_address_fails_in_seconds() -> None:
    start = time.perf_counter()
    with pytest.raises(UserError, match="unreachable"):
        probe_address(f"127.0.0.1:{_closed_port()}")
    assert time.perf_counter() - start < 1


def test_cli_unreachable_cluster_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cluster = tmp_path / "dead.yaml"
    cluster.write_text(f"address: 127.0.0.1:{_closed_port()}\n")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mat_dist.cli.main", "train", "--config", "mnist5k-mat", "--cluster",
                           str(cluster), "--output", str(tmp_path / "run"), "data.name=digits"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and lines[0].startswith("matd: error:")
    assert elapsed < 30  # interpreter + imports; the probe itself takes milliseconds
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing started: a plain re-run works


def _runtime(cpus: float, gpus: float = 0.0, nodes: int = 1) -> Runtime:
    per_node = {"CPU": cpus / nodes, "GPU": gpus / nodes}
    return Runtime(address="test", started=False, resources={"CPU": cpus, "GPU": gpus},
                   node_resources=[dict(per_node) for _ in range(nodes)])


def test_more_gpus_or_cpus_than_the_cluster_has() -> None:
    gpu = ClusterConfig(workers=WorkersConfig(num=2, gpus=1))
    with pytest.raises(UserError, match=r"2 workers x 1 GPU = 2 GPUs asked, the cluster has 0"):
        check_resources(gpu, _runtime(cpus=8))
    with pytest.raises(UserError, match=r"3 workers x 1 CPU = 3 CPUs asked, the cluster has 2"):
        check_resources(ClusterConfig(workers=WorkersConfig(num=3)), _runtime(cpus=2))
    with pytest.raises(UserError, match="largest node has 2"):  # 4 GPUs in all, but 2 per node
        check_resources(ClusterConfig(workers=WorkersConfig(num=1, gpus=4)), _runtime(cpus=8, gpus=4, nodes=2))
    check_resources(gpu, _runtime(cpus=8, gpus=2))  # fits
    elastic = ClusterConfig(workers=WorkersConfig(num=4, min=2))
    check_resources(elastic, _runtime(cpus=2))  # an elastic job starts with its minimum
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_resources(dataclasses.replace(gpu, autoscaling=True), _runtime(cpus=8))
    assert any("autoscal" in str(w.message) for w in caught)


def test_storage_not_writable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="storage path .* is not writable"):
        check_storage(str(tmp_path / "a-file" / "ray"))  # a path below a file: never writable, even as root
    check_storage(str(tmp_path / "ok" / "ray"))
    assert not (tmp_path / "ok").exists()  # probed, not made: a run refused after this leaves no empty folder
    (tmp_path / "there" / "ray").mkdir(parents=True)
    check_storage(str(tmp_path / "there" / "ray"))
    assert not list((tmp_path / "there" / "ray").iterdir())


def test_batch_must_divide_across_workers() -> None:
    cfg = load_config("mnist5k-mat", ["data.batch_size=64"])
    check_job(cfg, ClusterConfig(workers=WorkersConfig(num=4)))
    with pytest.raises(UserError, match="data.batch_size=64 does not divide across 3 workers"):
        check_job(cfg, ClusterConfig(workers=WorkersConfig(num=3)))
    with pytest.raises(UserError, match="every worker count"):  # elastic 2..4 includes 3
        check_job(cfg, ClusterConfig(workers=WorkersConfig(num=4, min=2)))
    with pytest.raises(UserError, match="gives workers no GPU"):
        check_job(load_config("mnist5k-mat", ["train.device=cuda"]), ClusterConfig())


def test_local_runtime_settings() -> None:
    c = ClusterConfig(local=LocalConfig(num_cpus=2), workers=WorkersConfig(num=2, cpus=1))
    assert c.threads_per_worker == 1 and list(c.worker_counts) == [2]
