"""Typed, validated run configs: YAML in, YAML out.

A config is a tree of frozen dataclasses. ``load_config`` reads YAML with the
safe loader, applies ``key.sub=value`` overrides, and rejects unknown keys,
wrong types and impossible values with one ``UserError`` line naming the key.
``config_to_dict`` gives back plain YAML-able data, so a resolved config can
be written out and read back unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from mat_dist.attacks import GradientMode
from mat_dist.data import DatasetName
from mat_dist.errors import UserError
from mat_dist.fastpath import Precision
from mat_dist.methods import METHODS, OuterLoss
from mat_dist.models import BACKBONES, EnsembleOutput, ModelKind
from mat_dist.threats import Norm, radius_unit_problem
from mat_dist.validation import Selection, ValidationAttack

SHIPPED_CONFIGS = Path(__file__).parent / "configs"


class OptimizerName(str, enum.Enum):
    ADAM = "adam"
    SGD = "sgd"


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    name: DatasetName = DatasetName.MNIST5K
    root: str | None = None           # folder of MNIST IDX files or CIFAR-10 batches
    val_size: int = 500               # images held out of train for the per-epoch check
    limit_train: int | None = None    # keep at most this many training images
    batch_size: int = 128             # global batch, across all workers
    input_repetition: float = 0.0     # MIMO rho: share of rows with one image on every input
    batch_repetition: int = 1         # MIMO: each image appears this many times per epoch


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    backbone: str = "mnist_cnn"
    num_members: int = 3              # M
    ensemble_output: EnsembleOutput = EnsembleOutput.SOFTMAX_MEAN


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    name: str = "mat"
    outer_loss: OuterLoss = OuterLoss.SUM
    loss_weights: list[float] | None = None  # w_m of the outer loss; default 1 each


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """Training attack. PGD methods give sub-model m the m-th threat model;
    MSD methods give every sub-model all of them as candidates."""

    steps: int = 10                   # K
    norms: list[Norm] = field(default_factory=lambda: [Norm.L1, Norm.L2, Norm.LINF])
    eps: list[float] = field(default_factory=lambda: [10.0, 2.0, 0.3])    # pixel units
    alpha: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.01])  # step size per step
    l1_topk: list[int] = field(default_factory=lambda: [5, 20])  # k range of the l1 step
    random_start: bool = True
    warmup: float = 0.0               # share of training over which the radii ramp up from 0
    # Batch b gives slot m the threat model (m + b) mod M: every sub-model trains under every norm,
    # one norm per slot within a batch, so the cost stays MAT's (K+1 / K+1).
    rotate_norms: bool = False
    # Rows of input repetition (data.input_repetition) carry one image in every slot; with this on they
    # also share one perturbation, as the deployed ensemble does, in norm (b mod M) for batch b.
    tie_repeated: bool = False


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    name: OptimizerName = OptimizerName.ADAM
    lr: float = 1e-3                  # peak learning rate
    momentum: float = 0.9             # SGD only
    weight_decay: float = 0.0
    nesterov: bool = False
    # Piecewise-linear learning-rate multiplier over training: [share of steps, factor] points.
    schedule: list[list[float]] = field(default_factory=lambda: [[0.0, 0.0], [0.4, 1.0], [1.0, 0.0]])


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 15
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    threads: int | None = None        # torch CPU threads; default: the CPUs this process may use
    checkpoints_kept: int = 2         # whole checkpoints kept on disk (the newest ones)
    diagnostics: bool = False         # per epoch, on the first batch: cross-gradient ratio and step
                                      # disagreement of MAT's ensemble gradient (paper Figs. 1, 4)
    # The fast path (mat_dist.fastpath): each switch alone is timed by ``bench_switches``.
    precision: Precision = Precision.FP32  # bf16: autocast around the training forwards; weights stay fp32
    channels_last: bool = False       # conv weights, hence activations, in NHWC
    compile: bool = False             # torch.compile the network training calls (first batch compiles)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """The per-epoch check on the validation slice: clean and robust accuracy per norm (mat_dist.validation)."""

    examples: int = 200
    steps: int = 20                   # PGD steps, or APGD iterations per sub-attack
    eps: dict[Norm, float] = field(default_factory=lambda: {Norm.LINF: 0.3, Norm.L2: 2.0, Norm.L1: 10.0})
    attack: ValidationAttack = ValidationAttack.PGD  # apgd: APGD-CE + APGD-T, the check to select on
    targets: int = 3                  # APGD-T target classes
    select: Selection = Selection.LAST  # best: the final model is the epoch with the best val/robust_all


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None            # default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "mat-dist"


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        validate(self)


# ---------------------------------------------------------------- validation

def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _check_radius(norm: Norm, eps: float, key: str) -> None:
    _require(eps > 0, f"{key}: {norm.value} radius {eps} must be positive")
    problem = radius_unit_problem(norm, eps)
    _require(problem is None, f"{key}: {problem}")


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that a single field's type cannot express."""
    d, m, a, o = cfg.data, cfg.model, cfg.attack, cfg.optim
    _require(d.batch_size >= 1, f"data.batch_size={d.batch_size} must be at least 1")
    _require(d.val_size >= 0, f"data.val_size={d.val_size} must be >= 0")
    _require(0.0 <= d.input_repetition <= 1.0, "data.input_repetition must be in [0, 1]")
    _require(d.batch_repetition >= 1, "data.batch_repetition must be at least 1")
    _require(m.backbone in BACKBONES, f"model.backbone {m.backbone!r} is unknown; use one of {', '.join(BACKBONES)}")
    _require(m.num_members >= 1, f"model.num_members={m.num_members} must be at least 1")
    _require(cfg.method.name in METHODS,
             f"method.name {cfg.method.name!r} is unknown; use one of {', '.join(METHODS)}")
    method = METHODS[cfg.method.name]
    if cfg.method.loss_weights is not None:
        _require(len(cfg.method.loss_weights) == m.num_members,
                 f"method.loss_weights has {len(cfg.method.loss_weights)} values; give one per sub-model ({m.num_members})")
        _require(all(w >= 0 for w in cfg.method.loss_weights) and sum(cfg.method.loss_weights) > 0,
                 "method.loss_weights must be non-negative and not all zero")
    _require(a.steps >= 1 or not method.attacks, f"attack.steps={a.steps} must be at least 1")
    _require(len(a.eps) == len(a.norms) and len(a.alpha) == len(a.norms),
             f"attack.norms, attack.eps and attack.alpha need the same length "
             f"(got {len(a.norms)}, {len(a.eps)}, {len(a.alpha)})")
    for i, (norm, eps, alpha) in enumerate(zip(a.norms, a.eps, a.alpha)):
        _check_radius(norm, eps, f"attack.eps[{i}]")
        _require(alpha > 0, f"attack.alpha[{i}]={alpha} must be positive")
    _require(len(a.l1_topk) == 2 and 1 <= a.l1_topk[0] <= a.l1_topk[1],
             "attack.l1_topk must be [k_min, k_max] with 1 <= k_min <= k_max")
    _require(0.0 <= a.warmup < 1.0, f"attack.warmup={a.warmup} must be in [0, 1)")
    method.check(num_members=m.num_members, norms=list(a.norms))
    _require(o.lr > 0, f"optim.lr={o.lr} must be positive")
    _require(o.weight_decay >= 0, "optim.weight_decay must be >= 0")
    points = o.schedule
    _require(len(points) >= 2 and all(len(p) == 2 for p in points)
             and points[0][0] == 0.0 and points[-1][0] == 1.0
             and all(p[0] < q[0] for p, q in zip(points, points[1:])) and all(p[1] >= 0 for p in points),
             "optim.schedule must be [share, factor] points with shares rising from 0 to 1 and factors >= 0")
    _require(cfg.train.epochs >= 1, f"train.epochs={cfg.train.epochs} must be at least 1")
    _require(cfg.train.threads is None or cfg.train.threads >= 1, "train.threads must be at least 1")
    _require(cfg.train.checkpoints_kept >= 1, "train.checkpoints_kept must be at least 1")
    _require(cfg.train.precision in tuple(Precision),  # == compares values: a plain "bf16" passes
             f"train.precision={cfg.train.precision!r} is unknown; use one of {', '.join(p.value for p in Precision)}")
    _require(cfg.eval.examples >= 1 and cfg.eval.steps >= 1, "eval.examples and eval.steps must be at least 1")
    _require(1 <= cfg.eval.targets <= 9, f"eval.targets={cfg.eval.targets} must be in 1..9 (APGD-T target classes)")
    _require(cfg.eval.select is not Selection.BEST or cfg.eval.attack is ValidationAttack.APGD,
             "eval.select=best picks a checkpoint by its validation union: set eval.attack=apgd, since PGD "
             "overstates robustness at large radii and would select what it cannot break")
    _require(not a.rotate_norms or (method.attacks and not method.msd),
             f"attack.rotate_norms needs a method with one norm per sub-model (not {cfg.method.name})")
    _require(not a.tie_repeated or (method.attacks and not method.msd and method.gradient is GradientMode.ENSEMBLE
                                    and method.model_kind is ModelKind.MIMO),
             f"attack.tie_repeated needs a MIMO method with the ensemble gradient (mat, mat_same_norm), "
             f"not {cfg.method.name}")
    _require(not a.tie_repeated or d.input_repetition > 0,
             "attack.tie_repeated acts on input-repeated rows: set data.input_repetition > 0")
    for norm, eps in cfg.eval.eps.items():
        _check_radius(norm, eps, f"eval.eps.{norm.value}")


# ------------------------------------------------------------ dict <-> typed

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(e.value) for e in tp)
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    return str(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [t for t in typing.get_args(tp) if t is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key {key or '(top level)'} must be a mapping, got {value!r}")
        return _from_dict(tp, value, key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise UserError(f"config key {key}: {value!r} is not {_type_name(tp)}") from None
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {key}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {_convert(k, kt, f"{key}.{k}"): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key {key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config key {key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")


def _from_dict(cls: type, raw: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise UserError(f"unknown config key {where!r}; known keys here: {', '.join(names)}")
    values = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**values)


def config_from_dict(raw: dict) -> RunConfig:
    """Validate a plain mapping (parsed YAML) into a ``RunConfig``."""
    if not isinstance(raw, dict):
        raise UserError("a config must be a YAML mapping of sections (data, model, method, attack, ...)")
    return _from_dict(RunConfig, raw)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain data (str, numbers, lists, dicts) that ``config_from_dict`` reads back unchanged."""
    return {f.name: _plain(dataclasses.asdict(getattr(cfg, f.name)) if dataclasses.is_dataclass(getattr(cfg, f.name))
                           else getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# ------------------------------------------------------------ files, overrides

def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a parsed config."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"override {item!r}: the value is not valid YAML") from None
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def find_yaml(name_or_path: str | os.PathLike, shipped: Path) -> Path | None:
    """A YAML file given by its path, or by the name of one that ships in folder ``shipped``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = shipped / f"{name_or_path}.yaml"
    return candidate if candidate.is_file() else None


def shipped_names(shipped: Path) -> str:
    """The names of the YAML files in ``shipped``, for error messages."""
    return ", ".join(sorted(p.stem for p in shipped.glob("*.yaml"))) or "none found"


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the name of a config that ships with mat-dist."""
    path = find_yaml(name_or_path, SHIPPED_CONFIGS)
    if path is None:
        raise UserError(f"config {str(name_or_path)!r} is neither a file nor a shipped config "
                        f"({shipped_names(SHIPPED_CONFIGS)})")
    return path


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise UserError(f"{path} is malformed YAML{where}: {problem}") from None


def load_config(name_or_path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    path = resolve_config_path(name_or_path)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a YAML mapping of sections (data, model, method, ...)")
    return config_from_dict(apply_overrides(raw, list(overrides or [])))
