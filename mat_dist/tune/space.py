"""Search-space files: typed, validated YAML -> a Ray Tune param space over run-config keys.

A space file (``tune_spaces/*.yaml``) opens with the command that runs it:

    # Run: matd tune --space tune_spaces/mnist5k-cpu.yaml
    base: mnist5k-mat            # config every trial starts from (file or shipped name); --config replaces it
    overrides:                   # fixed changes to the base, for every trial (dotted keys)
      train.epochs: 4
    trials: 8                    # random samples (per grid point: Ray's num_samples); --trials replaces it
    seed: 0                      # seeds the random search (the sweep's; trials keep the base's seed)
    max_concurrent: null         # cap on trials at once; null: as many as the cluster holds
    time_budget_s: null          # wall seconds for the trials (matd tune --time-budget); then Tune stops them
    objective:
      min_clean_acc: 0.5         # trials below this clean accuracy score 0 (infeasible); null: no constraint
      max_cost: null             # trials that train more forward + backward passes score 0, never the best
    searcher:
      name: random               # random (seeded random search, grid) | tpe (Optuna's TPE, seeded by seed:)
      startup_trials: 10         # tpe: trials drawn at random before the model proposes (Optuna's n_startup_trials)
    scheduler:
      name: asha                 # asha (early stopping on the per-epoch objective) | fifo (none) | pbt
      grace_period: 1            # epochs every trial runs before ASHA may stop it
      reduction_factor: 2        # ASHA keeps the best 1/reduction_factor at each rung
      perturbation_interval: 2   # pbt: epochs between exploit/explore decisions (mat_dist.tune.pbt)
      burn_in: 0                 # pbt: epochs before the first decision
      quantile_fraction: 0.25    # pbt: the bottom share copies a trial of the top share
      resample_probability: 0.25 # pbt: a value drawn afresh instead of perturbed (x0.8 / x1.2, a step of a choice)
      synch: true                # pbt: the population waits for one another at each decision
    fidelity:                    # re-train some trials at the full budget: does the proxy rank them right?
      top: 0                     # the best N trials (0: no fidelity step; matd tune --fidelity N replaces it)
      random: 2                  # and N more drawn at random (seeded) from the rest
      full: {}                   # overrides of the full-budget run beyond the base's epochs and data
    params:                      # dotted config key -> one distribution
      attack.eps.0: {loguniform: [2.0, 8.0]}      # element 0 of a per-sub-model list
      attack.alpha: {choice: [[1.0, 0.25, 0.025], [0.5, 0.1, 0.01]]}   # a whole list
      method.loss_weights: {grid: [[1, 1, 1], [1, 2, 1]]}
      attack.steps: {randint: [5, 11]}           # integers low..high-1 (high excluded, as Ray)
      optim.lr: {uniform: [0.0005, 0.002]}

Distributions: ``choice`` and ``grid`` take a list of values (grid runs every
value, each ``trials`` times); ``uniform``, ``loguniform`` and ``randint``
take ``[low, high]`` with low < high. The file's schema is ``SpaceFile``; its
keys are checked against the RunConfig schema, in the override syntax of
``matd train`` (``mat_dist.plumbing.schema.set_key``): an integer part indexes a list
(``attack.eps.2``: sub-model 2's radius). ``eval.*``, ``seed`` and the
validation data cannot be searched: the evaluation radii and the validation
split define the objective, and a search that could move them would reward
shrinking the test rather than improving the model. Every candidate value
(each choice, both range bounds) is applied to the base config and validated
there, so a bad space fails before any trial starts, with one line naming the
file and the key. ``grid`` is random search's: ``searcher: tpe`` refuses it.

The full budget of the fidelity step (and of ``matd tune --confirm``) is the
base config as the space found it: the space's overrides of ``train.epochs``
and ``data.limit_train`` (the proxy's budget) are undone, the others kept,
then ``fidelity.full`` applied (say ``attack.steps`` or ``eval.examples``);
it may not move what defines the objective (``eval`` radii, attack, steps,
the validation data).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import pydantic
from annotated_types import Gt, Le
from pydantic import BaseModel

from mat_dist.plumbing import schema
from mat_dist.core.run_config import RunConfig, config_from_dict
from mat_dist.plumbing.errors import UserError
from mat_dist.plumbing.paths import resolve_yaml, shipped_names
from mat_dist.plumbing.schema import FORBID, Bool, Count, NonNegInt, Num, Positive, Share, Str, bare, key_type, must

# The shipped spaces: the repository's tune_spaces/ folder, installed as the package
# mat_dist.tune_spaces (pyproject.toml), like clusters/.
SHIPPED_SPACES = Path(resources.files("mat_dist.tune_spaces"))

# Keys a search must not move, with the reason given to the user.
FORBIDDEN: dict[str, str] = {
    "eval": "the evaluation attack and radii define the objective; set them in the base config",
    "seed": "the seed is the sweep's (the space's seed: key); trials share the base config's",
    "name": "the run name is not a hyperparameter",
    "tracking": "tracking is not a hyperparameter",
    "data.name": "the dataset defines the validation split the objective is measured on",
    "data.root": "the dataset defines the validation split the objective is measured on",
    "data.val_size": "the validation split defines the objective",
    "train.device": "the device is the cluster file's (workers.gpus)",
    "train.threads": "threads follow the cluster file's workers.cpus",
    "schedule": "a per-epoch schedule is what scheduler: pbt learns; search attack.eps, attack.alpha or "
                "method.loss_weights with it",
}
# Keys whose values must be > 0 (radii, step sizes, learning rate, counts) or >= 0.
POSITIVE = ("attack.eps", "attack.alpha", "optim.lr", "attack.steps", "train.epochs", "data.batch_size",
            "model.num_members", "attack.l1_topk")
NON_NEGATIVE = ("method.loss_weights", "optim.weight_decay", "optim.momentum", "attack.warmup",
                "data.input_repetition")


class Dist(str, enum.Enum):
    CHOICE = "choice"
    GRID = "grid"
    UNIFORM = "uniform"
    LOGUNIFORM = "loguniform"
    RANDINT = "randint"

    @property
    def is_range(self) -> bool:
        return self in (Dist.UNIFORM, Dist.LOGUNIFORM, Dist.RANDINT)


class Scheduler(str, enum.Enum):
    ASHA = "asha"
    FIFO = "fifo"
    PBT = "pbt"    # Population Based Training: a per-epoch schedule of radii, step sizes, loss weights


# The keys Population Based Training may perturb during training: those a run config can schedule per epoch
# (RunConfig.schedule), so the winner's schedule replays with ``matd train --config``.
SCHEDULABLE = ("attack.eps", "attack.alpha", "method.loss_weights")


class Searcher(str, enum.Enum):
    RANDOM = "random"  # Ray's BasicVariantGenerator: seeded random samples, every grid point
    TPE = "tpe"        # Optuna's Tree-structured Parzen Estimator through ray.tune.search.optuna.OptunaSearch


@dataclass(frozen=True)
class Param:
    key: str                    # dotted config key, e.g. "attack.eps.0"
    dist: Dist
    values: tuple[Any, ...] = ()  # choice / grid
    low: float | None = None    # ranges
    high: float | None = None

    def candidates(self) -> list[Any]:
        """Values to validate against the base config: every choice, or the range's ends."""
        if not self.dist.is_range:
            return list(self.values)
        if self.dist is Dist.RANDINT:
            return [int(self.low), int(self.high) - 1]
        return [self.low, self.high]

    def to_ray(self) -> Any:
        from ray import tune

        if self.dist is Dist.CHOICE:
            return tune.choice(list(self.values))
        if self.dist is Dist.GRID:
            return tune.grid_search(list(self.values))
        if self.dist is Dist.UNIFORM:
            return tune.uniform(self.low, self.high)
        if self.dist is Dist.LOGUNIFORM:
            return tune.loguniform(self.low, self.high)
        return tune.randint(int(self.low), int(self.high))

    def describe(self) -> str:
        if self.dist.is_range:
            return f"{self.dist.value} [{self.low:g}, {self.high:g}]"
        return f"{self.dist.value} {list(self.values)}"


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=FORBID)
class ObjectiveSpec:
    min_clean_acc: Share | None = None
    max_cost: Positive | None = None  # forward + backward passes of training (cost/passes)


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=FORBID)
class SearcherSpec:
    name: Searcher = Searcher.RANDOM
    startup_trials: Count = 10


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=FORBID)
class FidelitySpec:
    top: NonNegInt = 0
    random: NonNegInt = 2
    full: dict[Str, Any] = dataclasses.field(default_factory=dict)


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=FORBID)
class SchedulerSpec:
    name: Scheduler = Scheduler.ASHA
    grace_period: Count = 1           # asha
    reduction_factor: Annotated[Num, Gt(1)] = 2.0  # asha
    perturbation_interval: Count = 2  # pbt: epochs between a trial's exploit/explore decisions
    burn_in: NonNegInt = 0            # pbt: epochs before the first decision (while the objective is at its floor)
    quantile_fraction: Annotated[Num, Gt(0), Le(0.5)] = 0.25  # pbt: the bottom share copies the top share
    resample_probability: Share = 0.25  # pbt: chance a value is drawn afresh rather than perturbed
    # pbt: every trial waits at each decision point for the whole population (Tune's synch=True). A
    # population larger than the trials that fit at once then still compares trials at equal epochs; without
    # it a trial that runs ahead alone has no one to copy.
    synch: Bool = True


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    params: tuple[Param, ...]
    base: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    trials: int = 8
    seed: int = 0
    max_concurrent: int | None = None
    time_budget_s: float | None = None
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    searcher: SearcherSpec = field(default_factory=SearcherSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    fidelity: FidelitySpec = field(default_factory=FidelitySpec)
    source: str = "(mapping)"  # where it was read from; not a YAML key

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def ray_param_space(self) -> dict[str, Any]:
        """Flat {dotted key: Ray domain}; a trial's config holds the sampled values under the same keys."""
        return {p.key: p.to_ray() for p in self.params}

    def base_raw(self, base: RunConfig | dict, extra_overrides: list[str] | None = None) -> dict:
        """The base config as plain data with the space's overrides (then ``extra_overrides``) applied, validated."""
        from mat_dist.core.run_config import apply_run_overrides, config_to_dict

        raw = copy.deepcopy(base if isinstance(base, dict) else config_to_dict(base))
        for key, value in self.overrides.items():
            set_space_key(raw, key, value, where=f"{self.source}: overrides.{key}")
        raw = apply_run_overrides(raw, list(extra_overrides or []))
        config_from_dict(raw)  # UserError naming the key
        return raw

    def check_against(self, base_raw: dict) -> None:
        """Apply every candidate value of every param to the base; one UserError line for the first that fails."""
        for p in self.params:
            for value in p.candidates():
                raw = copy.deepcopy(base_raw)
                where = f"{self.source}: params.{p.key}"
                set_space_key(raw, p.key, value, where=where)
                try:
                    config_from_dict(raw)
                except UserError as err:
                    raise UserError(f"{where}: the value {value!r} makes an invalid config ({err}); "
                                    f"change the {p.dist.value}") from None
        raw = copy.deepcopy(base_raw)
        for key, value in self.fidelity.full.items():
            set_space_key(raw, key, value, where=f"{self.source}: fidelity.full.{key}")
        config_from_dict(raw)


# ---------------------------------------------------------------- dotted keys

def set_space_key(raw: dict, key: str, value: Any, *, where: str) -> None:
    """Set dotted config ``key`` in plain config data: the override syntax of ``matd train``."""
    schema.set_key(raw, key, value, model=RunConfig, voice=schema.RUN, where=where)


def get_key(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else node.get(part) if isinstance(node, dict) else None
    return node


def _forbidden(key: str) -> str | None:
    for prefix, reason in FORBIDDEN.items():
        if key == prefix or key.startswith(prefix + "."):
            return reason
    return None


def list_key(key: str) -> str:
    """``attack.eps.2`` -> ``attack.eps``: the key without list indices."""
    return ".".join(p for p in key.split(".") if not p.isdigit())


# ---------------------------------------------------------------- parsing

class SpaceFile(BaseModel):
    """A search-space file; each of ``params`` is checked by ``_parse_param`` (against the RunConfig schema)."""

    model_config = FORBID
    base: Str | None = None
    overrides: dict[Str, Any] = {}
    trials: Count = 8
    seed: NonNegInt = 0
    max_concurrent: Count | None = None
    time_budget_s: Positive | None = None  # wall seconds for the trials; then Tune stops them (cut, not failed)
    objective: ObjectiveSpec = ObjectiveSpec()
    searcher: Annotated[SearcherSpec, pydantic.BeforeValidator(
        lambda v: {"name": v} if isinstance(v, str) else v)] = SearcherSpec()  # "searcher: tpe" is short for name: tpe
    scheduler: SchedulerSpec = SchedulerSpec()
    fidelity: FidelitySpec = FidelitySpec()
    params: Annotated[dict[Str, Any], must(bool, "{key} must map config keys to distributions (at least one), "
                                                 "e.g. params: {{optim.lr: {{loguniform: [0.0001, 0.01]}}}}")] = \
        pydantic.Field(default_factory=dict, validate_default=True)


def _number(value: Any, where: str) -> float:
    """A range bound: YAML reads ``1e-4`` (no dot) as a string, so numeric strings are accepted too."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: bound {value!r} is not a finite number")
    return value


def _flatten_numbers(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [x for v in value for x in _flatten_numbers(v)]
    return [value]


def _parse_param(key: Any, spec: Any, source: str) -> Param:
    where = f"{source}: params.{key}"
    if not key:
        raise UserError(f"{source}: params has an empty key; give a dotted config key")
    reason = _forbidden(key)
    if reason is not None:
        raise UserError(f"{where}: {key} cannot be searched ({reason})")
    leaf = key_type(RunConfig, key, voice=schema.RUN, where=where)
    if dataclasses.is_dataclass(bare(leaf)):
        raise UserError(f"{where}: {key} is a whole section; search its fields ({key}.<field>)")
    names = ", ".join(d.value for d in Dist)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(f"{where}: give exactly one distribution as a mapping, e.g. {{uniform: [0.1, 1.0]}} "
                        f"(one of {names})")
    ((name, arg),) = spec.items()
    try:
        dist = Dist(name)
    except ValueError:
        raise UserError(f"{where}: unknown distribution {name!r}; use one of {names}") from None
    base_key = list_key(key)
    positive = any(base_key == k for k in POSITIVE)
    non_negative = any(base_key == k for k in NON_NEGATIVE)
    if dist.is_range:
        if not isinstance(arg, list) or len(arg) != 2:
            raise UserError(f"{where}: {dist.value} takes [low, high], got {arg!r}")
        low, high = (_number(v, where) for v in arg)
        if low >= high:
            raise UserError(f"{where}: empty range [{low:g}, {high:g}]: low must be below high")
        if dist is not Dist.RANDINT and bare(leaf) is int:
            raise UserError(f"{where}: {key} is an integer; {dist.value} draws real numbers: use randint or choice")
        if dist is not Dist.RANDINT:
            low, high = float(low), float(high)
        if dist is Dist.RANDINT and (low != int(low) or high != int(high)):
            raise UserError(f"{where}: randint bounds must be integers, got [{low:g}, {high:g}]")
        if dist is Dist.LOGUNIFORM and low <= 0:
            raise UserError(f"{where}: loguniform needs a positive low bound, got {low:g}")
        if positive and low <= 0:
            raise UserError(f"{where}: low bound {low:g} must be positive ({base_key} is a radius, step size, "
                            f"rate or count)")
        if non_negative and low < 0:
            raise UserError(f"{where}: low bound {low:g} must be >= 0")
        return Param(key=key, dist=dist, low=low, high=high)
    if not isinstance(arg, list) or not arg:
        raise UserError(f"{where}: {dist.value} takes a non-empty list of values, got {arg!r}")
    for v in _flatten_numbers(arg):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if positive and v <= 0:
                raise UserError(f"{where}: value {v:g} must be positive ({base_key} is a radius, step size, "
                                f"rate or count)")
            if non_negative and v < 0:
                raise UserError(f"{where}: value {v:g} must be >= 0")
    return Param(key=key, dist=dist, values=tuple(arg))


def space_from_dict(raw: Any, *, source: str = "(mapping)") -> SearchSpace:
    """Validate parsed YAML into a ``SearchSpace`` (keys checked against the schema, not yet a base config)."""
    f = schema.parse(SpaceFile, raw, voice=schema.SPACE, where=source)
    params = tuple(_parse_param(k, v, source) for k, v in f.params.items())
    keys = [p.key for p in params]
    for a in keys:
        for b in keys:
            if a != b and b.startswith(a + "."):
                raise UserError(f"{source}: params {a} and {b} overlap; search the whole list or its elements")
    for k in f.overrides:
        if k in keys:
            raise UserError(f"{source}: {k} is both fixed (overrides) and searched (params); keep one")
    if f.searcher.name is Searcher.TPE:
        for p in params:
            if p.dist is Dist.GRID:
                raise UserError(f"{source}: params.{p.key}: grid has no TPE counterpart; use choice with "
                                f"searcher tpe, or searcher random")
    if f.scheduler.name is Scheduler.PBT:
        _check_pbt(f, params, source)
    for k in f.fidelity.full:
        reason = _forbidden(k) if k != "eval.examples" else None
        if reason is not None:
            raise UserError(f"{source}: fidelity.full.{k}: the full budget cannot change {k} ({reason})")
    return SearchSpace(params=params, base=f.base, overrides=dict(f.overrides), trials=f.trials, seed=f.seed,
                       max_concurrent=f.max_concurrent, time_budget_s=f.time_budget_s, objective=f.objective,
                       searcher=f.searcher,
                       scheduler=f.scheduler, fidelity=f.fidelity, source=source)


def _check_pbt(f: SpaceFile, params: tuple[Param, ...], source: str) -> None:
    """PBT perturbs values while trials train: only keys a run config schedules per epoch, drawn at random."""
    if f.searcher.name is not Searcher.RANDOM:
        raise UserError(f"{source}: scheduler pbt draws its population at random and then perturbs it; "
                        f"use searcher random, not {f.searcher.name.value}")
    for p in params:
        if list_key(p.key) not in SCHEDULABLE:
            raise UserError(f"{source}: params.{p.key}: scheduler pbt changes values during training, and only "
                            f"{', '.join(SCHEDULABLE)} have per-epoch schedules; fix {p.key} in overrides")
        if p.dist is Dist.GRID:
            raise UserError(f"{source}: params.{p.key}: grid cannot be perturbed; use choice with scheduler pbt")


def resolve_space_path(name_or_path: str | os.PathLike) -> Path:
    return resolve_yaml(name_or_path, SHIPPED_SPACES, kind="search space", shipped_as="space")


def load_space(name_or_path: str | os.PathLike) -> SearchSpace:
    """Read a space file (path or shipped name, e.g. ``mnist5k-cpu``); UserError with one line if it is bad."""
    path = resolve_space_path(name_or_path)
    raw = schema.load_yaml(path, "search space", SpaceFile, shipped_names(SHIPPED_SPACES))
    return space_from_dict(raw, source=str(path))


def space_to_dict(space: SearchSpace) -> dict[str, Any]:
    """Plain YAML-able data that ``space_from_dict`` reads back to an equal space."""
    params = {}
    for p in space.params:
        params[p.key] = {p.dist.value: [p.low, p.high] if p.dist.is_range else list(p.values)}
    return {
        "base": space.base, "overrides": dict(space.overrides), "trials": space.trials, "seed": space.seed,
        "max_concurrent": space.max_concurrent, "time_budget_s": space.time_budget_s,
        "objective": {"min_clean_acc": space.objective.min_clean_acc, "max_cost": space.objective.max_cost},
        "searcher": {"name": space.searcher.name.value, "startup_trials": space.searcher.startup_trials},
        "scheduler": {"name": space.scheduler.name.value, "grace_period": space.scheduler.grace_period,
                      "reduction_factor": space.scheduler.reduction_factor,
                      "perturbation_interval": space.scheduler.perturbation_interval,
                      "burn_in": space.scheduler.burn_in,
                      "quantile_fraction": space.scheduler.quantile_fraction,
                      "resample_probability": space.scheduler.resample_probability,
                      "synch": space.scheduler.synch},
        "fidelity": {"top": space.fidelity.top, "random": space.fidelity.random, "full": dict(space.fidelity.full)},
        "params": params,
    }


def trial_config(base_raw: dict, params: dict[str, Any], *, name: str | None = None,
                 schedule: list[dict[str, Any]] | None = None) -> RunConfig:
    """The config of one trial: the base with the sampled values set; eval radii stay the base's.
    ``schedule``: a per-epoch schedule to train with (a PBT trial's, re-trained by the fidelity step)."""
    raw = copy.deepcopy(base_raw)
    for key, value in params.items():
        if _forbidden(key):  # the space refused it already; a hand-built param dict gets the same rule
            raise UserError(f"trial parameter {key} cannot be searched ({_forbidden(key)})")
        set_space_key(raw, key, value, where=f"trial parameter {key}")
    if schedule is not None:
        raw["schedule"] = copy.deepcopy(schedule)
    if name is not None:
        raw["name"] = name
    cfg = config_from_dict(raw)
    base_eval = config_from_dict(base_raw).eval
    if cfg.eval != base_eval:  # cannot happen through set_space_key on allowed keys; the objective depends on it
        raise AssertionError("a trial's evaluation settings differ from the base config's")
    return cfg
