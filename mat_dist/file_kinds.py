"""``matd validate``: the five kinds of YAML a user writes, told apart and checked as their commands would.

    validate_file("my-space.yaml")            # 'my-space.yaml: valid search space (...)', or a UserError line
    validate_file("local", FileKind.CLUSTER)  # a shipped name needs its kind

A file's kind is the one whose top-level keys it uses most (``detect_kind``);
each kind is then loaded through its own loader. This module sits above the
five (``mat_dist.plumbing.schema`` below them knows none of them), and imports each
only when asked: they pull in torch, the attack registry, Ray Tune's spaces.
"""

from __future__ import annotations

import enum
import importlib
from pathlib import Path

import yaml

from mat_dist.plumbing.errors import UserError
from mat_dist.plumbing.schema import CLUSTER_SECTION, keys_of, read_yaml


class FileKind(str, enum.Enum):
    RUN = "run"
    CLUSTER = "cluster"
    SUITE = "suite"
    SPACE = "space"
    MODELS = "models"


KIND_WORDS = {FileKind.RUN: "run config", FileKind.CLUSTER: "cluster file", FileKind.SUITE: "suite",
              FileKind.SPACE: "search space", FileKind.MODELS: "models file"}
# Each kind's model, imported only when asked (they pull in torch, the attack registry, ...).
_MODELS = {FileKind.RUN: ("mat_dist.core.run_config", "RunConfig"),
           FileKind.CLUSTER: ("mat_dist.cluster.files", "ClusterConfig"),
           FileKind.SUITE: ("mat_dist.evaluate.suite", "SuiteFile"),
           FileKind.SPACE: ("mat_dist.tune.space", "SpaceFile"),
           FileKind.MODELS: ("mat_dist.evaluate.models_file", "ModelsFile")}


def model_of(kind: FileKind) -> type:
    module, name = _MODELS[kind]
    return getattr(importlib.import_module(module), name)


def detect_kind(path: Path) -> FileKind:
    """The kind whose top-level keys the file uses most (several YAML documents or a ``mat_dist:``
    section: a cluster file); UserError when none or several fit equally."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError:
        read_yaml(path)  # the one-line message with line and column
        raise
    if not docs:
        raise UserError(f"{path} is empty (nothing but comments or blank lines); there is nothing to validate")
    if len(docs) > 1 or (isinstance(docs[0], dict) and CLUSTER_SECTION in docs[0]):
        return FileKind.CLUSTER
    if not isinstance(docs[0], dict):
        raise UserError(f"{path} must be a YAML mapping, not a {type(docs[0]).__name__}")
    keys = set(docs[0])
    score = {kind: len(keys & set(keys_of(model_of(kind)))) for kind in FileKind}
    best = max(score.values())
    winners = [kind for kind, n in score.items() if n == best]
    if best == 0:
        raise UserError(f"{path}: its keys ({', '.join(map(str, keys))}) belong to no kind of file; "
                        f"give --kind ({', '.join(k.value for k in FileKind)})")
    if len(winners) > 1:
        words = [f"a {KIND_WORDS[k]}" for k in winners]
        raise UserError(f"{path} could be {', '.join(words[:-1])} or {words[-1]} (keys "
                        f"{', '.join(sorted(map(str, keys)))}); give --kind")
    return winners[0]


def _describe_run(name: str) -> str:
    from mat_dist.core.run_config import load_config
    from mat_dist.data import DatasetName, check_data

    cfg = load_config(name)
    note = ""
    if cfg.data.root is not None or cfg.data.name in (DatasetName.MNIST5K, DatasetName.DIGITS):
        check_data(cfg.data.name, cfg.data.root)  # a data.root that is not there is no valid config here
    else:  # a shipped config leaves the folder to the command line
        where = "FILE.npz" if cfg.data.name is DatasetName.ARRAYS else "FOLDER"
        note = f"; data.root unset: pass data.root={where} when you train"
    return (f"{cfg.name}: {cfg.method.name}, M={cfg.model.num_members}, {cfg.data.name.value}, "
            f"{cfg.train.epochs} epoch{'s' if cfg.train.epochs != 1 else ''}{note}")


def _describe_cluster(name: str) -> str:
    from mat_dist.cluster.files import load_cluster

    c = load_cluster(name)
    w = c.workers
    each = f"{w.cpus:g} CPU{'s' if w.cpus != 1 else ''}" + (f" and {w.gpus:g} GPU{'s' if w.gpus != 1 else ''}"
                                                          if w.gpus else "")
    return (f"{'a local Ray runtime' if c.is_local else 'the Ray cluster at ' + c.address}: "
            f"{w.num} worker{'s' if w.num != 1 else ''} with {each}{' each' if w.num != 1 else ''}")


def _describe_suite(name: str) -> str:
    from mat_dist.evaluate.suite import load_suite

    suite = load_suite(name)
    n = len(suite.attacks)
    return f"{suite.name}: {n} attack{'s' if n != 1 else ''} in {', '.join(x.value for x in suite.norms())}"


def _describe_space(name: str) -> str:
    from mat_dist.core.run_config import load_config
    from mat_dist.tune.space import load_space

    space = load_space(name)
    n = f"{len(space.params)} searched key{'s' if len(space.params) != 1 else ''}"
    if space.base is None:
        return f"{n}; no base: config, so the values are checked when --config gives one"
    space.check_against(space.base_raw(load_config(space.base)))
    return f"{n}, every value checked against the base config {space.base}"


def _describe_models(name: str) -> str:
    from mat_dist.evaluate.models_file import load_models_file
    from mat_dist.evaluate.eval_report import KIND_LABEL

    sources = load_models_file(name)
    return f"{len(sources)} model{'s' if len(sources) != 1 else ''}: " + ", ".join(
        f"{s.label} ({KIND_LABEL[s.kind]})" for s in sources)


_DESCRIBE = {FileKind.RUN: _describe_run, FileKind.CLUSTER: _describe_cluster, FileKind.SUITE: _describe_suite,
             FileKind.SPACE: _describe_space, FileKind.MODELS: _describe_models}


def validate_file(file: str, kind: FileKind | None = None) -> str:
    """``matd validate``: load ``file`` as ``kind`` (detected when None) through its loader, as the command
    that uses it would; the line 'FILE: valid <kind> (...)', or a UserError of one line."""
    path = Path(file)
    if kind is None:
        if not path.is_file():
            raise UserError(f"{file} does not exist; give a YAML file (or --kind and a shipped name)")
        kind = detect_kind(path)
    return f"{file}: valid {KIND_WORDS[kind]} ({_DESCRIBE[kind](file)})"
