"""Typed, validated run configs: YAML in, YAML out.

A config is a tree of frozen dataclasses, and they are its schema: pydantic
dataclasses (``mat_dist.plumbing.schema``: unknown keys, wrong types and impossible
values are refused with one ``UserError`` line naming the key), with the
rules across fields in ``check_run_config``. ``load_config`` reads YAML with the safe
loader and applies ``key.sub=value`` overrides (``attack.eps.0=5``: one
element of a list). ``config_to_dict`` gives back plain YAML-able data, so a
resolved config can be written out and read back unchanged.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import asdict, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from annotated_types import Ge, Le, Lt
from pydantic import BeforeValidator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from mat_dist.plumbing import schema
from mat_dist.core.attacks import GradientMode
from mat_dist.data import DatasetName
from mat_dist.plumbing.errors import UserError
from mat_dist.core.methods import METHODS, OuterLoss
from mat_dist.core.models import BACKBONES, EnsembleOutput, ModelKind
from mat_dist.plumbing.paths import resolve_yaml, shipped_names
from mat_dist.plumbing.schema import (FORBID, Bool, Count, Hint, Int, NonNegative, NonNegInt, Num, Positive, Share, Str, must,
                             one_of)
from mat_dist.plumbing.schema import read_yaml  # noqa: F401  (callers read a run folder's config.yaml through mat_dist.core.run_config)
from mat_dist.core.threats import Norm, radius_unit_problem
from mat_dist.core.epoch_check import Selection, ValidationAttack

SHIPPED_CONFIGS = Path(__file__).parent.parent / "configs"


class OptimizerName(str, enum.Enum):
    ADAM = "adam"
    SGD = "sgd"


class Precision(str, enum.Enum):
    """``train.precision``: the fast path's (mat_dist.core.fast_path) forward passes in fp32 or under bf16 autocast."""

    AUTO = "auto"  # bf16 where the training device computes in bf16 natively (mat_dist.core.fast_path), else fp32
    FP32 = "fp32"
    BF16 = "bf16"  # autocast around the forward passes; weights, optimiser state and loss stay fp32


AUTO = "auto"  # a switch's value that leaves the choice to the machine (mat_dist.core.fast_path.resolve_fast_path)


def _true_false_or_auto(value: Any) -> Any:
    if isinstance(value, bool) or value == AUTO:
        return value
    raise PydanticCustomError("check", "{message}", {"message": "{key}: expected true, false or auto"})


# A switch the machine may decide: true, false, or "auto" (kept as the string in config.yaml).
AutoBool = Annotated[bool | Literal["auto"], BeforeValidator(_true_false_or_auto)]


def _is_schedule(points: list[list[float]]) -> bool:
    """Shares from 0 to 1, never falling; two points may share a share (a step), three may not."""
    return (len(points) >= 2 and all(len(p) == 2 for p in points) and points[0][0] == 0.0 and points[-1][0] == 1.0
            and all(p[0] <= q[0] for p, q in zip(points, points[1:]))
            and all(not (p[0] == q[0] == r[0]) for p, q, r in zip(points, points[1:], points[2:]))
            and points[0][0] < points[-1][0] and all(p[1] >= 0 for p in points))


# Learning-rate schedules by name (``optim.schedule: e_at``), as [share of steps, factor] points.
NAMED_SCHEDULES: dict[str, list[list[float]]] = {
    # E-AT's fine-tuning (Croce and Hein 2022): the rate held for the first third, then /10, then /100.
    "e_at": [[0.0, 1.0], [1 / 3, 1.0], [1 / 3, 0.1], [2 / 3, 0.1], [2 / 3, 0.01], [1.0, 0.01]],
}


def _named_schedule(value: Any) -> Any:
    if isinstance(value, str) and value in NAMED_SCHEDULES:
        return [list(p) for p in NAMED_SCHEDULES[value]]
    return value


@dataclass(frozen=True, kw_only=True, config=FORBID)
class DataConfig:
    name: DatasetName = DatasetName.MNIST5K
    root: Str | None = None           # folder of MNIST IDX files or CIFAR-10 batches; the .npz file of arrays
    val_size: NonNegInt = 500         # images held out of train for the per-epoch check
    limit_train: Int | None = None    # keep at most this many training images
    batch_size: Count = 128           # global batch, across all workers
    input_repetition: Share = 0.0     # MIMO rho: share of rows with one image on every input
    batch_repetition: Count = 1       # MIMO: each image appears this many times per epoch


@dataclass(frozen=True, kw_only=True, config=FORBID)
class ModelConfig:
    backbone: Annotated[Str, one_of(BACKBONES)] = "mnist_cnn"
    num_members: Count = 3            # M
    ensemble_output: EnsembleOutput = EnsembleOutput.SOFTMAX_MEAN
    # false: the network takes [0, 1] pixels as they are, with no normalisation by the data's mean and std
    # (weights from elsewhere, e.g. RobustBench's, expect that; train.init_from cannot tell from a state dict)
    normalize: Bool = True


@dataclass(frozen=True, kw_only=True, config=FORBID)
class MethodConfig:
    name: Annotated[Str, one_of(METHODS)] = "mat"
    outer_loss: OuterLoss = OuterLoss.SUM
    loss_weights: list[NonNegative] | None = None  # w_m of the outer loss; default 1 each


@dataclass(frozen=True, kw_only=True, config=FORBID)
class AttackConfig:
    """Training attack. PGD methods give sub-model m the m-th threat model;
    MSD methods give every sub-model all of them as candidates."""

    steps: Int = 10                   # K (at least 1 for a method that attacks: ``check_run_config``)
    norms: list[Norm] = field(default_factory=lambda: [Norm.L1, Norm.L2, Norm.LINF])
    eps: list[Num] = field(default_factory=lambda: [10.0, 2.0, 0.3])         # pixel units; checked per norm
    alpha: list[Positive] = field(default_factory=lambda: [0.8, 0.1, 0.01])  # step size per step
    l1_topk: Annotated[list[Count], must(lambda k: len(k) == 2 and k[0] <= k[1],
                                         "{key} must be [k_min, k_max] with 1 <= k_min <= k_max")] = \
        field(default_factory=lambda: [5, 20])  # k range of the l1 step
    random_start: Bool = True
    warmup: Annotated[Num, Ge(0), Lt(1)] = 0.0  # share of training over which the radii ramp up from 0
    # Batch b gives slot m the threat model (m + b) mod M: every sub-model trains under every norm,
    # one norm per slot within a batch, so the cost stays MAT's (K+1 / K+1).
    rotate_norms: Bool = False
    # Rows of input repetition (data.input_repetition) carry one image in every slot; with this on they
    # also share one perturbation, as the deployed ensemble does, in norm (b mod M) for batch b.
    tie_repeated: Bool = False
    # Each batch, each slot draws its norm from attack.norms by E-AT's rule (probability proportional to
    # 1 - that norm's running robust accuracy on the training batches) instead of a fixed or rotated one.
    eat_sampling: Bool = False


@dataclass(frozen=True, kw_only=True, config=FORBID)
class SchedulePhase:
    """One step of the per-epoch schedule: from epoch ``epoch`` (0-based) on, these values replace
    attack.eps, attack.alpha and method.loss_weights. A key left out keeps the value it had: the base
    config's before the first phase, the previous phase's after it. Population Based Training
    (``matd tune`` with ``scheduler: pbt``) writes its winner's schedule in this form."""

    epoch: NonNegInt
    eps: list[Num] | None = None                 # pixel units, one per attack.norms
    alpha: list[Positive] | None = None          # step size per attack step, one per attack.norms
    loss_weights: list[NonNegative] | None = None  # w_m of the outer loss, one per sub-model


@dataclass(frozen=True, kw_only=True, config=FORBID)
class OptimConfig:
    name: OptimizerName = OptimizerName.ADAM
    lr: Positive = 1e-3               # peak learning rate
    momentum: Num = 0.9               # SGD only
    weight_decay: NonNegative = 0.0
    nesterov: Bool = False
    # Piecewise-linear learning-rate multiplier over training: [share of steps, factor] points (two points
    # at one share make a step), or a schedule's name: e_at (held for a third, then /10, then /100).
    schedule: Annotated[list[list[Num]], BeforeValidator(_named_schedule),
                        must(_is_schedule, "{key} must be [share, factor] points with shares rising from 0 to 1 "
                                           "and factors >= 0, or e_at")] = \
        field(default_factory=lambda: [[0.0, 0.0], [0.4, 1.0], [1.0, 0.0]])


@dataclass(frozen=True, kw_only=True, config=FORBID)
class TrainConfig:
    epochs: Count = 15
    device: Str = "auto"              # auto | cpu | cuda | cuda:N
    threads: Count | None = None      # torch CPU threads; default: the CPUs this process may use
    checkpoints_kept: Count = 2       # whole checkpoints kept on disk (the newest ones)
    diagnostics: Bool = False         # per epoch, on the first batch: cross-gradient ratio and step
                                      # disagreement of MAT's ensemble gradient (paper Figs. 1, 4)
    # The fast path (mat_dist.core.fast_path): each switch alone is timed by ``bench_switches``.
    # auto (both): on where the training device computes in bf16 natively (mat_dist.core.fast_path); every metrics
    # line records what ran (fast_path/*). Results committed from fp32 runs pin fp32 and false.
    precision: Precision = Precision.AUTO  # bf16: autocast around the training forwards; weights stay fp32
    channels_last: AutoBool = AUTO    # conv weights, hence activations, in NHWC
    compile: Bool = False             # torch.compile the network training calls (first batch compiles)
    # Fine-tuning: start from these weights (a run folder or model file of ours, or a plain state dict of a
    # shipped backbone: safetensors, or .pt read with weights_only=True). One network into M sub-models:
    # mat_dist.core.init_from.
    init_from: Str | None = None


@dataclass(frozen=True, kw_only=True, config=FORBID)
class EvalConfig:
    """The per-epoch check on the validation slice: clean and robust accuracy per norm (mat_dist.core.epoch_check)."""

    examples: Count = 200
    steps: Count = 20                 # PGD steps, or APGD iterations per sub-attack
    eps: dict[Norm, Num] = field(default_factory=lambda: {Norm.LINF: 0.3, Norm.L2: 2.0, Norm.L1: 10.0})
    attack: ValidationAttack = ValidationAttack.PGD  # apgd: APGD-CE + APGD-T, the check to select on
    targets: Annotated[Int, Ge(1), Le(9), Hint("APGD-T target classes")] = 3
    select: Selection = Selection.LAST  # best: the final model is the epoch with the best val/robust_all


@dataclass(frozen=True, kw_only=True, config=FORBID)
class TrackingConfig:
    enabled: Bool = True
    uri: Str | None = None            # default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: Str = "mat-dist"


@dataclass(frozen=True, kw_only=True, config=FORBID)
class RunConfig:
    name: Str = "run"
    seed: Int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    # Per-epoch values of the radii, step sizes and loss weights, phases by rising epoch (empty: constant).
    schedule: list[SchedulePhase] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        check_run_config(self)


# ---------------------------------------------------------------- rules across fields

def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _check_radius(norm: Norm, eps: float, key: str, norms: Sequence[Norm] = ()) -> None:
    _require(eps > 0, f"{key}: {norm.value} radius {eps} must be positive")
    problem = radius_unit_problem(norm, eps)
    # A list of radii may be in another order than its norms (l_inf, l_2, l_1 is how papers write them).
    order = f"; the radii follow attack.norms ({', '.join(n.value for n in norms)})" if len(norms) > 1 else ""
    _require(problem is None, f"{key}: {problem}{order}")


def check_run_config(cfg: RunConfig) -> None:
    """The rules across fields; each field's own type and bounds are the schema's (the dataclasses above)."""
    m, a = cfg.model, cfg.attack
    method = METHODS[cfg.method.name]
    if cfg.method.loss_weights is not None:
        _require(len(cfg.method.loss_weights) == m.num_members,
                 f"method.loss_weights has {len(cfg.method.loss_weights)} values; give one per sub-model ({m.num_members})")
        _require(sum(cfg.method.loss_weights) > 0, "method.loss_weights must be non-negative and not all zero")
    _require(a.steps >= 1 or not method.attacks, f"attack.steps={a.steps} must be at least 1")
    _require(len(a.eps) == len(a.norms) and len(a.alpha) == len(a.norms),
             f"attack.norms, attack.eps and attack.alpha need the same length "
             f"(got {len(a.norms)}, {len(a.eps)}, {len(a.alpha)})")
    for i, (norm, eps) in enumerate(zip(a.norms, a.eps)):
        _check_radius(norm, eps, f"attack.eps[{i}]", a.norms)
    method.check(num_members=m.num_members, norms=list(a.norms))
    _require(cfg.eval.select is not Selection.BEST or cfg.eval.attack is ValidationAttack.APGD,
             "eval.select=best picks a checkpoint by its validation union: set eval.attack=apgd, since PGD "
             "overstates robustness at large radii and would select what it cannot break")
    _require(not a.rotate_norms or method.per_slot,
             f"attack.rotate_norms needs a method with one norm per sub-model (not {cfg.method.name})")
    _require(not a.eat_sampling or method.per_slot,
             f"attack.eat_sampling needs a method with one norm per sub-model (not {cfg.method.name}; "
             f"method e_at is E-AT for one network)")
    _require(not (a.eat_sampling and a.rotate_norms),
             "attack.eat_sampling and attack.rotate_norms both choose each slot's norm: turn one off")
    _require(not a.tie_repeated or (method.per_slot and method.gradient is GradientMode.ENSEMBLE
                                    and method.model_kind is ModelKind.MIMO),
             f"attack.tie_repeated needs a MIMO method with the ensemble gradient (mat, mat_same_norm), "
             f"not {cfg.method.name}")
    _require(not a.tie_repeated or cfg.data.input_repetition > 0,
             "attack.tie_repeated acts on input-repeated rows: set data.input_repetition > 0")
    for norm, eps in cfg.eval.eps.items():
        _check_radius(norm, eps, f"eval.eps.{norm.value}")
    _check_schedule(cfg)


def _check_schedule(cfg: RunConfig) -> None:
    a, m = cfg.attack, cfg.model.num_members
    for i, phase in enumerate(cfg.schedule):
        key = f"schedule[{i}]"
        _require(phase.epoch < cfg.train.epochs,
                 f"{key}.epoch={phase.epoch} is past the last epoch (train.epochs={cfg.train.epochs}; epochs count "
                 f"from 0)")
        _require(i == 0 or phase.epoch > cfg.schedule[i - 1].epoch,
                 f"{key}.epoch={phase.epoch} must be later than the phase before it ({cfg.schedule[i - 1].epoch})")
        for name, values in (("eps", phase.eps), ("alpha", phase.alpha)):
            _require(values is None or len(values) == len(a.norms),
                     f"{key}.{name} has {len(values or [])} values; give one per attack norm ({len(a.norms)})")
        for j, (norm, eps) in enumerate(zip(a.norms, phase.eps or [])):
            _check_radius(norm, eps, f"{key}.eps[{j}]")
        if phase.loss_weights is not None:
            _require(len(phase.loss_weights) == m,
                     f"{key}.loss_weights has {len(phase.loss_weights)} values; give one per sub-model ({m})")
            _require(sum(phase.loss_weights) > 0, f"{key}.loss_weights must not be all zero")


class EpochValues(NamedTuple):
    """The scheduled keys' values in force during one epoch."""

    eps: list[float]
    alpha: list[float]
    loss_weights: list[float]


def scheduled_values(cfg: RunConfig, epoch: int) -> EpochValues:
    """attack.eps, attack.alpha and method.loss_weights during 0-based ``epoch``: the base values, replaced by
    each schedule phase that has begun by then."""
    eps, alpha = list(cfg.attack.eps), list(cfg.attack.alpha)
    weights = list(cfg.method.loss_weights or [1.0] * cfg.model.num_members)
    for phase in cfg.schedule:
        if phase.epoch > epoch:
            break
        eps = list(phase.eps) if phase.eps is not None else eps
        alpha = list(phase.alpha) if phase.alpha is not None else alpha
        weights = list(phase.loss_weights) if phase.loss_weights is not None else weights
    return EpochValues(eps=eps, alpha=alpha, loss_weights=weights)


# ------------------------------------------------------------ dict <-> typed

def config_from_dict(raw: Any, *, source: str | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Validate a plain mapping (parsed YAML) into a ``RunConfig``; ``source`` (a file) starts the error line."""
    return schema.parse(RunConfig, raw, voice=schema.RUN, where=source, overrides=overrides)


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain data (str, numbers, lists, dicts) that ``config_from_dict`` reads back unchanged."""
    out = {f.name: schema.plain(asdict(getattr(cfg, f.name)) if is_dataclass(getattr(cfg, f.name))
                                else getattr(cfg, f.name)) for f in fields(cfg)}
    # a phase lists only the keys it changes
    out["schedule"] = [{k: schema.plain(v) for k, v in asdict(p).items() if v is not None} for p in cfg.schedule]
    return out


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# ------------------------------------------------------------ files, overrides

def apply_run_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML; ``attack.eps.0=5`` sets one element) to a
    parsed config, in place."""
    return schema.apply_overrides(raw, overrides, model=RunConfig, voice=schema.RUN)


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the name of a config that ships with mat-dist."""
    return resolve_yaml(name_or_path, SHIPPED_CONFIGS, kind="config")


def load_config(name_or_path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """The config in a YAML file (or a shipped config's name) with ``overrides`` applied; UserError of one line
    for an empty file, an unknown key, a wrong type or an impossible value."""
    path = resolve_config_path(name_or_path)
    raw = schema.load_yaml(path, "run config", RunConfig, shipped_names(SHIPPED_CONFIGS))
    overrides = list(overrides or [])
    if isinstance(raw, dict):
        apply_run_overrides(raw, overrides)
    return config_from_dict(raw, source=str(path), overrides=overrides)
