"""Cluster files: where a Ray job runs, how wide, where its checkpoints go, how it survives failures.

A cluster file is YAML read with the safe loader into a frozen ``ClusterConfig``;
unknown keys, wrong types and impossible values are refused with one
``UserError`` line that names the file and the key. ``ClusterConfig()`` (all
defaults) *is* the embedded default, ``clusters/local.yaml``: a local Ray
runtime started for the job, one worker with one CPU, checkpoints inside the
run folder.

    address: null            # null: start a local runtime; "auto"; "HOST:PORT" (GCS); "ray://HOST:10001"
    autoscaling: false       # true: the cluster adds nodes on demand; a resource shortfall only warns
    workers:
      num: 1                 # DDP ranks; the config's global batch is split across them
      min: null              # elastic: run with any count in [min, num] (Ray resizes after a node loss)
      cpus: 1                # CPUs per worker; also its torch threads
      gpus: 0                # GPUs per worker (> 0: nccl, else gloo)
      placement: PACK        # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    local:                   # only used when address is null
      num_cpus: null         # CPUs the local runtime may use (null: all)
      num_gpus: null
    storage:
      path: null             # checkpoints: null = <run folder>/ray; a local/NFS path or s3://bucket/prefix
      checkpoints_kept: 2
    failure:
      max_failures: 3        # worker-group restarts from the latest checkpoint
      controller_failure_limit: 2   # failed attempts to (re)start the worker group, e.g. a lost node never replaced
      worker_start_timeout_s: 60    # each such attempt waits this long for resources
    env: {}                  # environment variables for the workers (e.g. NCCL_SOCKET_IFNAME)

Other parts of mat-dist (evaluator, tune) read the same files through
``load_cluster`` and connect with ``mat_dist.distributed.launch.connect``.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mat_dist.config import find_yaml, shipped_names
from mat_dist.errors import UserError

# The cluster files that ship with mat-dist: the repository's clusters/ folder, installed as the
# package mat_dist.clusters (pyproject.toml), so a wheel finds them as an editable install does.
SHIPPED_CLUSTERS = Path(resources.files("mat_dist.clusters"))
IN_PROCESS = "none"  # ``--cluster none``: the in-process loop, no Ray


class Placement(str, enum.Enum):
    PACK = "PACK"
    SPREAD = "SPREAD"
    STRICT_PACK = "STRICT_PACK"
    STRICT_SPREAD = "STRICT_SPREAD"


@dataclass(frozen=True, kw_only=True)
class WorkersConfig:
    num: int = 1
    min: int | None = None
    cpus: float | None = None  # null: a local runtime's CPUs shared evenly among the workers
    gpus: float = 0.0
    placement: Placement = Placement.PACK


@dataclass(frozen=True, kw_only=True)
class LocalConfig:
    num_cpus: int | None = None
    num_gpus: int | None = None


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    path: str | None = None
    checkpoints_kept: int = 2


@dataclass(frozen=True, kw_only=True)
class FailureConfig:
    max_failures: int = 3
    controller_failure_limit: int = 2
    worker_start_timeout_s: float = 60.0


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    address: str | None = None
    autoscaling: bool = False
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)
    env: dict[str, str] = field(default_factory=dict)
    source: str = "embedded default"  # where it was read from; not a YAML key

    def __post_init__(self) -> None:
        if self.workers.cpus is None and self.address is None and self.workers.num >= 1:
            # null: the local runtime's CPUs (local.num_cpus, else this process's) shared evenly.
            total = self.local.num_cpus or len(os.sched_getaffinity(0))
            share = float(max(1, total // self.workers.num))
            object.__setattr__(self, "workers", dataclasses.replace(self.workers, cpus=share))
        _validate(self)

    # ------------------------------------------------------------ derived

    @property
    def is_local(self) -> bool:
        """True when mat-dist starts (and stops) a Ray runtime for the job."""
        return self.address is None

    @property
    def elastic(self) -> bool:
        return self.workers.min is not None and self.workers.min < self.workers.num

    @property
    def use_gpu(self) -> bool:
        return self.workers.gpus > 0

    @property
    def worker_counts(self) -> range:
        """Every world size the job may run with (one value unless elastic)."""
        return range(self.workers.min if self.elastic else self.workers.num, self.workers.num + 1)

    @property
    def threads_per_worker(self) -> int:
        """torch intra-op threads of a worker: the CPUs it was given (at least 1)."""
        return max(1, int(self.workers.cpus))

    def storage_uri(self, run_folder: Path) -> str:
        """Absolute storage path (or URI) for checkpoints; default ``<run folder>/ray``."""
        path = self.storage.path
        if path is None:
            return str((run_folder / "ray").resolve())
        if is_uri(path):
            return path
        return str(Path(path).expanduser().resolve())


def is_uri(path: str) -> bool:
    """``s3://...``, ``gs://...``: a pyarrow filesystem URI rather than a local (or NFS) path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None and not path.startswith("file://")


# ---------------------------------------------------------------- validation

def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _validate(c: ClusterConfig) -> None:
    w, f, s = c.workers, c.failure, c.storage
    where = f"cluster file {c.source}"
    if c.address is not None:
        _require(c.address == "auto" or c.address.startswith("ray://") or re.fullmatch(r"[^\s:/]+:\d+", c.address),
                 f"{where}: address {c.address!r} is not HOST:PORT, ray://HOST:PORT or auto; "
                 f"use null for a local runtime")
    _require(w.num >= 1, f"{where}: workers.num={w.num} must be at least 1")
    _require(w.min is None or 1 <= w.min <= w.num,
             f"{where}: workers.min={w.min} must be between 1 and workers.num={w.num} (or null)")
    if c.address is not None and (c.local.num_cpus is not None or c.local.num_gpus is not None):
        raise UserError(f"{where}: the local section applies only to a local runtime (address: null); "
                        f"remove it or set address to null")
    _require(w.cpus is not None, f"{where}: workers.cpus must be set for a remote cluster "
                                 f"(null shares this machine's CPUs, for a local runtime only)")
    _require(w.cpus > 0, f"{where}: workers.cpus={w.cpus:g} must be positive (a worker needs a CPU to run on)")
    _require(w.gpus >= 0, f"{where}: workers.gpus={w.gpus:g} must be >= 0")
    _require(w.gpus == int(w.gpus) or w.gpus < 1,
             f"{where}: workers.gpus={w.gpus:g}: a worker gets a fraction of one GPU or whole GPUs")
    for key, value in (("local.num_cpus", c.local.num_cpus), ("local.num_gpus", c.local.num_gpus)):
        _require(value is None or value >= 0, f"{where}: {key}={value} must be >= 0 (or null for all)")
    if c.address is not None and (c.local.num_cpus is not None or c.local.num_gpus is not None):
        raise UserError(f"{where}: the local section applies only to a local runtime (address: null); "
                        f"remove it or set address to null")
    _require(s.checkpoints_kept >= 1, f"{where}: storage.checkpoints_kept={s.checkpoints_kept} must be at least 1")
    _require(s.path is None or s.path.strip() != "", f"{where}: storage.path is empty; use null for the run folder")
    _require(f.max_failures >= -1, f"{where}: failure.max_failures={f.max_failures} must be >= 0 (-1: unlimited)")
    _require(f.controller_failure_limit >= 0,
             f"{where}: failure.controller_failure_limit={f.controller_failure_limit} must be >= 0; a bound is "
             f"what stops a run whose lost node never comes back")
    _require(f.worker_start_timeout_s > 0,
             f"{where}: failure.worker_start_timeout_s={f.worker_start_timeout_s:g} must be positive")


# ---------------------------------------------------------------- YAML -> typed

def _describe(tp: Any) -> str:
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(e.value for e in tp)
    return "a mapping"


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [t for t in typing.get_args(tp) if t is not type(None)]
        return _convert(value, inner, key, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: {key} must be a mapping, got {value!r}")
        return _fields(tp, value, f"{key}.", where)
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise UserError(f"{where}: {key} must be a mapping of names to values, got {value!r}")
        return {k: str(v) for k, v in value.items()}
    bad = f"{where}: {key} must be {_describe(tp)}, got {value!r}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(str(value).upper())
        except ValueError:
            raise UserError(bad) from None
    if tp is bool:
        _require(isinstance(value, bool), bad)
        return value
    if tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), bad)
        return value
    if tp is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), bad)
        return float(value)
    if tp is str:
        _require(isinstance(value, (str, int, float)) and not isinstance(value, bool), bad)
        return str(value)
    raise TypeError(f"unsupported cluster config type {tp!r}")


def _fields(cls: type, raw: dict, prefix: str, where: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    for key in raw:
        if key not in names:
            raise UserError(f"{where}: unknown key {prefix}{key!s}; known keys here: {', '.join(names)}")
    values = {k: _convert(v, hints[k], f"{prefix}{k}", where) for k, v in raw.items()}
    return values if cls is ClusterConfig else cls(**values)


def cluster_from_dict(raw: Any, *, source: str = "(mapping)") -> ClusterConfig:
    """Validate parsed YAML (a mapping; None or empty = all defaults) into a ``ClusterConfig``."""
    where = f"cluster file {source}"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a YAML mapping (address, workers, storage, failure, ...), "
                        f"not a {type(raw).__name__}")
    return ClusterConfig(**_fields(ClusterConfig, raw, "", where), source=source)


def cluster_to_dict(c: ClusterConfig) -> dict[str, Any]:
    """Plain YAML-able data that ``cluster_from_dict`` reads back unchanged."""
    def plain(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    data = {k: plain(v) for k, v in dataclasses.asdict(c).items()}
    data.pop("source")
    return data


def resolve_cluster_path(name: str | os.PathLike) -> Path:
    """A cluster file path, or the name of a shipped one (``local``, ``multi-gpu``)."""
    path = find_yaml(name, SHIPPED_CLUSTERS)
    if path is None:
        raise UserError(f"cluster file {name} does not exist; give a YAML path or a shipped name "
                        f"({shipped_names(SHIPPED_CLUSTERS)}), or '{IN_PROCESS}' to train in-process without Ray")
    return path


SECTION = "mat_dist"  # the cluster settings inside a Ray launcher file or a KubeRay manifest


def _mat_dist_section(docs: list[Any], file: Path) -> Any:
    """The cluster settings in a file: the whole file, or its ``mat_dist:`` section.

    A Ray cluster-launcher file carries them as a top-level ``mat_dist:`` key
    (the launcher ignores it); a KubeRay manifest (several YAML documents) in
    a ConfigMap whose data value is such a file.
    """
    for doc in docs:
        if isinstance(doc, dict) and SECTION in doc:
            return doc[SECTION]
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            for text in (doc.get("data") or {}).values():
                inner = yaml.safe_load(text) if isinstance(text, str) else None
                if isinstance(inner, dict) and SECTION in inner:
                    return inner[SECTION]
    if len(docs) <= 1:
        return docs[0] if docs else None
    raise UserError(f"cluster file {file} holds {len(docs)} YAML documents and none has a {SECTION}: section "
                    f"(directly or in a ConfigMap); add one")


def load_cluster(path: str | os.PathLike | None = None) -> ClusterConfig:
    """Read and validate a cluster file; ``None`` gives the embedded default (``clusters/local.yaml``).

    ``path`` is a YAML file or the name of a shipped one. The settings are the
    whole file, or its ``mat_dist:`` section (Ray launcher files, KubeRay
    manifests: see ``_mat_dist_section``).

    Raises UserError (one line naming the file and the key) for malformed
    YAML, unknown keys, wrong types and impossible values.
    """
    if path is None:
        return ClusterConfig()
    file = resolve_cluster_path(path)
    try:
        raw = _mat_dist_section(list(yaml.safe_load_all(file.read_text())), file)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise UserError(f"cluster file {file} is not valid YAML{at} ({problem}); fix the syntax") from None
    except OSError as err:
        raise UserError(f"cluster file {file} cannot be read ({err.strerror}); check the path") from None
    cluster = cluster_from_dict(raw, source=str(file))
    if cluster.storage.path is not None and not is_uri(cluster.storage.path) \
            and not Path(cluster.storage.path).expanduser().is_absolute():
        # Relative storage paths are relative to the cluster file, so that the file means the same from any cwd.
        cluster = dataclasses.replace(cluster, storage=dataclasses.replace(
            cluster.storage, path=str((file.parent / cluster.storage.path).resolve())))
    return cluster
