"""Cluster files: where a Ray job runs, how wide, where its checkpoints go, how it survives failures.

A cluster file is YAML read with the safe loader into a frozen ``ClusterConfig``,
a pydantic dataclass of the one schema (``mat_dist.plumbing.schema``): an empty file,
unknown keys, wrong types and impossible values are refused with one
``UserError`` line that names the file and the key. ``ClusterConfig()`` (all
defaults) *is* the embedded default, ``clusters/local.yaml``: a local Ray
runtime started for the job, one worker with all of the machine's CPUs,
checkpoints inside the run folder.

    address: null            # null: start a local runtime; "auto"; "HOST:PORT" (GCS); "ray://HOST:10001"
    autoscaling: false       # true: the cluster adds nodes on demand; a resource shortfall only warns
    workers:
      num: 1                 # DDP ranks; the config's global batch is split across them
      min: null              # elastic: run with any count in [min, num] (Ray resizes after a node loss)
      cpus: null             # CPUs per worker, also its torch threads (null: the local CPUs / num)
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

Every part of mat-dist that uses Ray (training, evaluator, tune, bench) reads
the same files through ``load_cluster`` and connects with
``mat_dist.cluster.runtime.connect``.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from dataclasses import field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from annotated_types import Ge, Gt
from pydantic import BeforeValidator
from pydantic.dataclasses import dataclass

from mat_dist.plumbing import schema
from mat_dist.plumbing.errors import UserError
from mat_dist.plumbing.paths import find_yaml, resolve_yaml, shipped_names
from mat_dist.plumbing.schema import FORBID, INTERNAL, Bool, Count, Hint, Int, NonNegInt, Num, Positive, Str, must

# The cluster files that ship with mat-dist: the repository's clusters/ folder, installed as the
# package mat_dist.clusters (pyproject.toml), so a wheel finds them as an editable install does.
SHIPPED_CLUSTERS = Path(resources.files("mat_dist.clusters"))
IN_PROCESS = "none"  # ``--cluster none``: the in-process loop, no Ray


class Placement(str, enum.Enum):
    PACK = "PACK"
    SPREAD = "SPREAD"
    STRICT_PACK = "STRICT_PACK"
    STRICT_SPREAD = "STRICT_SPREAD"


def _text(value: Any) -> Any:
    """A number where a string is meant (a port, a path of digits) is read as its digits."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _is_address(address: str) -> bool:
    return address == "auto" or address.startswith("ray://") or re.fullmatch(r"[^\s:/]+:\d+", address) is not None


Text = Annotated[Str, BeforeValidator(_text)]


@dataclass(frozen=True, kw_only=True, config=FORBID)
class WorkersConfig:
    num: Count = 1
    min: Count | None = None
    # null: a local runtime's CPUs shared evenly among the workers
    cpus: Annotated[Num, Gt(0), Hint("a worker needs a CPU to run on")] | None = None
    gpus: Annotated[Num, Ge(0), must(lambda g: g == int(g) or g < 1,
                                     "{key}={value:g}: a worker gets a fraction of one GPU or whole GPUs")] = 0.0
    placement: Annotated[Placement, BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)] = \
        Placement.PACK


@dataclass(frozen=True, kw_only=True, config=FORBID)
class LocalConfig:
    num_cpus: Annotated[NonNegInt, Hint("or null for all")] | None = None
    num_gpus: Annotated[NonNegInt, Hint("or null for all")] | None = None


@dataclass(frozen=True, kw_only=True, config=FORBID)
class StorageConfig:
    path: Annotated[Text, must(lambda p: p.strip() != "", "{key} is empty; use null for the run folder")] | None = None
    checkpoints_kept: Count = 2


@dataclass(frozen=True, kw_only=True, config=FORBID)
class FailureConfig:
    max_failures: Annotated[Int, Ge(-1), Hint("-1: unlimited")] = 3
    controller_failure_limit: Annotated[NonNegInt, Hint("a bound is what stops a run whose lost node never "
                                                        "comes back")] = 2
    worker_start_timeout_s: Positive = 60.0


@dataclass(frozen=True, kw_only=True, config=FORBID)
class ClusterConfig:
    address: Annotated[Text, must(_is_address, "{key} {value!r} is not HOST:PORT, ray://HOST:PORT or auto; "
                                               "use null for a local runtime")] | None = None
    autoscaling: Bool = False
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)
    env: dict[Str, Annotated[str, BeforeValidator(str)]] = field(default_factory=dict)
    source: Annotated[str, INTERNAL] = "embedded default"  # where it was read from; not a YAML key

    def __post_init__(self) -> None:
        if self.workers.cpus is None and self.address is None:
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


# ---------------------------------------------------------------- rules across fields

def _validate(c: ClusterConfig) -> None:
    """The rules across fields; each field's own type and bounds are the schema's (the dataclasses above)."""
    w = c.workers
    if w.min is not None and w.min > w.num:
        raise UserError(f"workers.min={w.min} must be between 1 and workers.num={w.num} (or null)")
    if c.address is not None and (c.local.num_cpus is not None or c.local.num_gpus is not None):
        raise UserError("the local section applies only to a local runtime (address: null); "
                        "remove it or set address to null")
    if w.cpus is None:
        raise UserError("workers.cpus must be set for a remote cluster "
                        "(null shares this machine's CPUs, for a local runtime only)")


# ---------------------------------------------------------------- YAML -> typed

def cluster_from_dict(raw: Any, *, source: str = "(mapping)") -> ClusterConfig:
    """Validate parsed YAML (a mapping) into a ``ClusterConfig``; errors name ``source``."""
    return schema.parse(ClusterConfig, raw, voice=schema.CLUSTER, where=f"cluster file {source}",
                        internal={"source": source})


def cluster_to_dict(c: ClusterConfig) -> dict[str, Any]:
    """Plain YAML-able data that ``cluster_from_dict`` reads back unchanged."""
    data = schema.plain(dataclasses.asdict(c))
    data.pop("source")
    return data


def resolve_cluster_path(name: str | os.PathLike) -> Path:
    """A cluster file path, or the name of a shipped one (``local``, ``multi-gpu``)."""
    return resolve_yaml(name, SHIPPED_CLUSTERS, kind="cluster file", missing=(
        "cluster file {name} does not exist; give a YAML path, a shipped name ({names}), a running cluster's "
        f"HOST:PORT or ray://HOST:PORT, or '{IN_PROCESS}' to run in this process without Ray"))


SECTION = schema.CLUSTER_SECTION  # the cluster settings inside a Ray launcher file or a KubeRay manifest


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

    ``path`` is a YAML file, the name of a shipped one, or the address of a running cluster (``HOST:PORT``,
    ``ray://HOST:PORT``, ``auto``: one worker of one CPU there). The settings are the
    whole file, or its ``mat_dist:`` section (Ray launcher files, KubeRay
    manifests: see ``_mat_dist_section``).

    Raises UserError (one line naming the file and the key) for malformed
    YAML, unknown keys, wrong types and impossible values.
    """
    if path is None:
        return ClusterConfig()
    if find_yaml(path, SHIPPED_CLUSTERS) is None and _is_address(str(path)):
        # A bare address: that cluster, one worker of one CPU (a cluster file says more).
        return ClusterConfig(address=str(path), workers=WorkersConfig(cpus=1.0), source=f"address {path}")
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
    if raw is None:  # an empty file, or an empty mat_dist: section
        raise schema.empty_file(f"cluster file {file}", "cluster file", ClusterConfig, shipped_names(SHIPPED_CLUSTERS))
    cluster = cluster_from_dict(raw, source=str(file))
    if cluster.storage.path is not None and not is_uri(cluster.storage.path) \
            and not Path(cluster.storage.path).expanduser().is_absolute():
        # Relative storage paths are relative to the cluster file, so that the file means the same from any cwd.
        cluster = dataclasses.replace(cluster, storage=dataclasses.replace(
            cluster.storage, path=str((file.parent / cluster.storage.path).resolve())))
    return cluster
