"""Start or attach a Ray runtime for a cluster file, and fail fast with one clear line.

``connect(cluster)`` is a context manager, and the only ``ray.init`` of
mat-dist: training, the evaluator's shards, the sweep and the benchmarks all
connect through it.

    with connect(load_cluster("clusters/multi-gpu.yaml")) as runtime:
        ...  # ray is initialised; runtime.resources holds the cluster's totals

Checks done before anything slow starts (seconds, not a hang):
- the address is probed with a plain TCP connect and a short timeout, because
  ``ray.init`` to a dead address retries for a long time;
- the workers' CPUs and GPUs are compared with what the cluster has, in total
  and per node (a worker must fit on one node);
- the storage path is probed with a real write (``check_storage``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mat_dist.plumbing.atomic import probe_writable
from mat_dist.plumbing.console import plural, route_worker_lines
from mat_dist.cluster.files import ClusterConfig, is_uri
from mat_dist.plumbing.errors import UserError

PROBE_TIMEOUT_S = 3.0          # TCP connect to the Ray head
STORAGE_PROBE_TIMEOUT_S = 20.0  # one small write to s3:// or another remote filesystem
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001

log = logging.getLogger(__name__)


def quiet_ray_env() -> None:
    """Environment for runtimes mat-dist starts: no usage reporting, no token auth prompt.

    Set only where the user has not chosen otherwise; must run before ``ray.init``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@dataclass(frozen=True)
class Runtime:
    address: str                     # what ray.init connected to ("local" for a runtime it started)
    started: bool                    # True: mat-dist started it and stops it on exit
    resources: dict[str, float]      # ray.cluster_resources() at connect time
    node_resources: list[dict[str, float]]  # per alive node


def _host_port(address: str) -> tuple[str, int]:
    plain = address.split("://", 1)[-1]
    host, _, port = plain.rpartition(":")
    if not host:
        default = DEFAULT_CLIENT_PORT if address.startswith("ray://") else DEFAULT_GCS_PORT
        return plain, default
    return host, int(port)


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """UserError within ``timeout`` seconds when nothing listens at ``address`` (HOST:PORT or ray://HOST:PORT)."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.timeout:
        reason = f"no answer in {timeout:g} s"
    except OSError as err:
        reason = err.strerror or type(err).__name__
    raise UserError(f"Ray cluster at {address} is unreachable ({reason}); start it (ray start --head) or fix "
                    f"the address, or use a local runtime (no --cluster, or address: null in a cluster file)")


def check_reachable(cluster: ClusterConfig) -> None:
    """UserError in seconds when the cluster file's address does not answer (a local runtime always does)."""
    if not cluster.is_local and cluster.address != "auto":
        probe_address(cluster.address)


def ray_init_args(cluster: ClusterConfig, *, tasks_only: bool = False) -> dict[str, Any]:
    """``ray.init`` arguments for ``cluster``: a private local runtime, or the cluster file's address.

    ``tasks_only``: a local runtime that runs plain Ray tasks (the evaluator's shards), no Ray Train
    placement groups, so no dashboard (its cleaner is what needs one): seconds and memory saved.
    """
    if cluster.is_local and tasks_only:
        return {"address": "local", "num_cpus": cluster.local.num_cpus, "num_gpus": cluster.local.num_gpus,
                "include_dashboard": False}
    if cluster.is_local:
        # address "local": always a private runtime; without it ray.init attaches to any
        # cluster already running on this machine (another job's, a test's). Ray Train's
        # placement-group cleaner finds the dashboard by auto-detection, which fails when
        # several Ray instances run on one machine: tell every actor of the job where ours is.
        port = _free_port()
        return {"address": "local", "num_cpus": cluster.local.num_cpus, "num_gpus": cluster.local.num_gpus,
                "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
                "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}}
    return {"address": cluster.address}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def connect(cluster: ClusterConfig, *, check: bool = True, tasks_only: bool = False) -> Iterator[Runtime]:
    """Start a local Ray runtime (address null) or attach to the cluster's; check its resources.

    A driver that is already connected (tests, notebooks) is reused as it is
    and left running. A runtime started here is shut down on exit. ``check``:
    compare the cluster file's workers with the resources (the evaluator asks
    per-shard resources instead). ``tasks_only``: see ``ray_init_args``; the
    tasks' own output is not printed either.
    """
    import ray

    if ray.is_initialized():
        runtime = _runtime("existing", started=False)
        if check:
            check_resources(cluster, runtime)
        yield runtime
        return
    quiet_ray_env()
    check_reachable(cluster)
    try:
        ray.init(**ray_init_args(cluster, tasks_only=tasks_only), logging_level=logging.WARNING,
                 log_to_driver=not tasks_only)
    except ConnectionError as err:
        raise UserError(f"could not connect to the Ray cluster {cluster.address} ({str(err).splitlines()[0]}); "
                        f"check address in {cluster.source}") from None
    # Rank 0's epoch lines without Ray's "(RayTrainWorker pid=...)" prefix, Ray's known-harmless lines dropped.
    route_worker_lines()
    try:
        runtime = _runtime(cluster.address or "local", started=True)
        if check:
            check_resources(cluster, runtime)
        yield runtime
    finally:
        ray.shutdown()


def _runtime(address: str, *, started: bool) -> Runtime:
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return Runtime(address=address, started=started, resources=dict(ray.cluster_resources()), node_resources=nodes)


def check_resources(cluster: ClusterConfig, runtime: Runtime) -> None:
    """UserError when the workers cannot be placed: too few CPUs/GPUs in all, or a worker bigger than any node.

    With ``autoscaling: true`` a shortfall only warns: the autoscaler may add nodes.
    """
    w = cluster.workers
    needed = min(cluster.worker_counts)  # elastic runs start with what they can get, at least min
    problems = []
    for key, per_worker, field in (("GPU", w.gpus, "workers.gpus"), ("CPU", w.cpus, "workers.cpus")):
        if per_worker <= 0:
            continue
        have = runtime.resources.get(key, 0.0)
        if needed * per_worker > have + 1e-9:
            problems.append(f"{plural(needed, 'worker')} x {per_worker:g} {key} = "
                            f"{plural(needed * per_worker, key)} asked, the cluster has {have:g}")
        elif runtime.node_resources and per_worker > max(n.get(key, 0.0) for n in runtime.node_resources) + 1e-9:
            biggest = max(n.get(key, 0.0) for n in runtime.node_resources)
            problems.append(f"a worker asks {plural(per_worker, key)} ({field}) but the largest node has {biggest:g}")
    if not problems:
        return
    message = (f"{cluster.source}: " + "; ".join(problems)
               + "; lower workers.num / workers.cpus / workers.gpus or add nodes")
    if cluster.autoscaling:
        warnings.warn(message + " (autoscaling: waiting for the autoscaler)", RuntimeWarning, stacklevel=2)
        return
    raise UserError(message)


# ---------------------------------------------------------------- storage

def check_storage(uri: str, *, timeout: float = STORAGE_PROBE_TIMEOUT_S) -> None:
    """Write and delete a small file under ``uri`` (local path, NFS path or s3://...); UserError if that fails."""
    if not is_uri(uri):
        try:
            probe_writable(Path(uri))  # creates nothing: a run refused later leaves no empty ray/ folder
        except OSError as err:
            raise UserError(f"storage path {uri} is not writable ({err.strerror}); fix storage.path in the "
                            f"cluster file (a shared folder or s3:// URI)") from None
        return
    outcome: dict[str, BaseException | None] = {}

    def probe() -> None:
        try:
            import pyarrow.fs

            fs, base = pyarrow.fs.FileSystem.from_uri(uri)
            fs.create_dir(base, recursive=True)
            name = f"{base.rstrip('/')}/.mat-dist-write-test-{uuid.uuid4().hex}"
            with fs.open_output_stream(name) as f:
                f.write(b"ok")
            fs.delete_file(name)
            outcome["error"] = None
        except BaseException as err:  # noqa: BLE001 - reported to the caller below
            outcome["error"] = err

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" not in outcome:
        raise UserError(f"storage path {uri} did not answer a test write in {timeout:g} s; check the URI, network "
                        f"and credentials, or use a local/NFS path")
    if outcome["error"] is not None:
        first = str(outcome["error"]).splitlines()[0] if str(outcome["error"]) else type(outcome["error"]).__name__
        raise UserError(f"storage path {uri} is not writable ({first}); fix storage.path or the credentials")
