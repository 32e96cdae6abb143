"""Attack suites: YAML files naming each attack with its norm, radius and parameters.

A suite is a YAML mapping (see ``mat_dist/suites/quick.yaml``)::

    name: quick
    examples: 1000            # default number of test images (the first N)
    shard_size: 100           # examples per shard (one Ray task)
    seed: 0
    eps: {linf: 0.1, l2: 1.0, l1: 5.0}       # default radius per norm (pixel units)
    resources: {num_cpus: 1, num_gpus: 0, max_retries: 2}   # per shard
    # resources.channels_last (true, false, auto): NHWC conv weights; auto = on a CPU (same verdicts, faster)
    attacks:                  # name -> attack of the registry, norm, optional eps, params
      pgd_linf: {attack: pgd, norm: linf, params: {steps: 20}}
    transfer: {attacks: [pgd_linf], examples: 200}          # sub-model analysis
    curves: {attacks: [pgd_linf], steps: [1, 5, 20], eps_scale: [0.5, 1, 2], examples: 200}
    sanity: {black_box_margin: 0.01, max_final_accuracy: 0.1}

The file's schema is ``SuiteFile`` (``mat_dist.plumbing.schema``); ``key.sub=value``
overrides (``eps.linf=0.3``, ``attacks.pgd_linf.params.steps=50``,
``curves.steps.0=2``) change single fields, as for training configs. An empty
file, unknown keys, attacks, norms or parameters are refused with one line.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Mapping, Sequence

import pydantic
from pydantic import BaseModel

from mat_dist.plumbing import schema
from mat_dist.plumbing.errors import UserError
from mat_dist.evaluate.registry import ATTACKS, COMMON_DEFAULTS, attack_kind
from mat_dist.plumbing.paths import resolve_yaml
from mat_dist.plumbing.schema import FORBID, Count, Int, NonNegative, NonNegInt, Num, Positive, Str, must
from mat_dist.core.run_config import AUTO, AutoBool
from mat_dist.core.threats import Norm, radius_unit_problem

SHIPPED_SUITES = Path(__file__).resolve().parent.parent / "suites"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
ENSEMBLE = "ensemble"
GRADIENT_FREE_AUTOATTACKS = frozenset({"square"})


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    name: str                  # unique within the suite; a column value and a file-name prefix
    attack: str                # key of ATTACKS
    norm: Norm
    eps: float
    params: Mapping[str, Any]  # the attack's defaults, updated by the suite

    @property
    def kind(self):
        return ATTACKS[self.attack]

    @property
    def needs_gradients(self) -> bool:
        """White-box: needs input gradients. AutoAttack restricted to Square is score-based."""
        if self.attack == "autoattack" and self.params.get("version") == "custom":
            return not set(self.params.get("attacks") or ()) <= GRADIENT_FREE_AUTOATTACKS
        return self.kind.white_box


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=FORBID)
class Resources:
    num_cpus: Positive = 1.0
    num_gpus: NonNegative = 0.0
    max_retries: NonNegInt = 2  # a shard whose worker dies is retried this many times
    # The attacked network's conv weights in NHWC, fp32 either way (auto: on a CPU, where it is faster;
    # mat_dist.core.fast_path.evaluation_channels_last). Not part of the fingerprint: the math is the same.
    channels_last: AutoBool = AUTO


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=FORBID)
class TransferSpec:
    attacks: tuple[Str, ...] = ()
    examples: Count | None = None  # at most this many examples (default: all evaluated)


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=FORBID)
class CurveSpec:
    attacks: tuple[Str, ...] = ()
    steps: tuple[Count, ...] = ()
    eps_scale: tuple[Positive, ...] = ()
    examples: Count | None = None


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=FORBID)
class SanitySpec:
    black_box_margin: Num = 0.01     # accuracy a black-box attack may beat white-box ones by
    max_final_accuracy: Num = 0.1    # robust accuracy expected at the largest radius of the curve
    curve_tolerance: Num = 0.02      # allowed rise of accuracy with more steps or a larger radius


@dataclass(frozen=True, kw_only=True)
class Suite:
    name: str
    examples: int
    shard_size: int
    seed: int
    eps: Mapping[Norm, float]
    attacks: tuple[AttackSpec, ...]
    resources: Resources = field(default_factory=Resources)
    transfer: TransferSpec = field(default_factory=TransferSpec)
    curves: CurveSpec = field(default_factory=CurveSpec)
    sanity: SanitySpec = field(default_factory=SanitySpec)
    source: str = ""           # the YAML it came from

    def attack(self, name: str) -> AttackSpec:
        for spec in self.attacks:
            if spec.name == name:
                return spec
        names = ', '.join(a.name for a in self.attacks)
        raise UserError(f"suite {self.name}: no attack named {name!r}; it has {names}")

    def norms(self) -> list[Norm]:
        return [n for n in Norm if any(a.norm is n for a in self.attacks)]

    def to_dict(self) -> dict[str, Any]:
        """Plain data describing what runs (the fingerprint of an output folder)."""
        return {
            "name": self.name, "examples": self.examples, "shard_size": self.shard_size, "seed": self.seed,
            "eps": {n.value: e for n, e in self.eps.items()},
            "attacks": {a.name: {"attack": a.attack, "norm": a.norm.value, "eps": a.eps, "params": dict(a.params)}
                        for a in self.attacks},
            "transfer": {"attacks": list(self.transfer.attacks), "examples": self.transfer.examples},
            "curves": {"attacks": list(self.curves.attacks), "steps": list(self.curves.steps),
                       "eps_scale": list(self.curves.eps_scale), "examples": self.curves.examples},
        }


# ------------------------------------------------------------------ the file's schema

Radius = Annotated[Num, must(lambda e: e > 0, "{key} must be a positive number, got {value!r}")]
AttackName = Annotated[Str, must(lambda n: _NAME.match(n) is not None and "__" not in n,
                                 "attack name {value!r} must be lower-case letters, digits, '_', '.', '-' "
                                 "(and no '__')")]


class AttackFile(BaseModel):
    """One attack of a suite file; ``params`` are checked against the attack's own (``_attack_spec``)."""

    model_config = FORBID
    attack: Annotated[Str, must(lambda a: a in ATTACKS, "{key}: unknown attack {value!r}; use one of "
                                + ", ".join(ATTACKS))]
    norm: Norm
    eps: Radius | None = None  # default: the suite's eps for the norm
    params: dict[Str, Any] = {}


class SuiteFile(BaseModel):
    model_config = FORBID
    name: Str | None = None  # default: the file's name
    examples: Count = 1000
    shard_size: Count = 100
    seed: Int = 0
    eps: dict[Norm, Radius] = {}
    resources: Resources = Resources()
    attacks: Annotated[dict[AttackName, AttackFile], must(bool, "{key} must be a non-empty mapping of "
                                                                "name -> {{attack, norm, params}}")] = \
        pydantic.Field(default_factory=dict, validate_default=True)
    transfer: TransferSpec = TransferSpec()
    curves: CurveSpec = CurveSpec()
    sanity: SanitySpec = SanitySpec()


def without_gradients(suite: Suite) -> tuple[Suite, tuple[str, ...]]:
    """The suite's gradient-free attacks only (for models without input gradients), and the names dropped.

    Transfer and curve jobs are dropped too: they name white-box attacks, and a
    model without gradients has no sub-models to transfer between.
    """
    kept = tuple(a for a in suite.attacks if not a.needs_gradients)
    dropped = tuple(a.name for a in suite.attacks if a.needs_gradients)
    if not kept:
        raise UserError(f"suite {suite.name} has only white-box attacks ({', '.join(dropped)}), and this model "
                        f"has no gradients; use a suite with gradient-free attacks (--suite blackbox)")
    return replace(suite, attacks=kept, transfer=TransferSpec(), curves=CurveSpec()), dropped


# ------------------------------------------------------------------ loading

def shipped_suites() -> list[str]:
    return sorted(p.stem for p in SHIPPED_SUITES.glob("*.yaml"))


def resolve_suite_path(name_or_path: str) -> Path:
    return resolve_yaml(name_or_path, SHIPPED_SUITES, kind="suite")


def load_suite(name_or_path: str, overrides: list[str] | None = None) -> Suite:
    path = resolve_suite_path(name_or_path)
    raw = schema.load_yaml(path, "suite", SuiteFile, ", ".join(shipped_suites()))
    return suite_from_dict(raw, source=str(path), overrides=list(overrides or []))


def suite_from_dict(raw: Any, *, source: str = "", overrides: Sequence[str] = ()) -> Suite:
    """Validate parsed YAML (``overrides`` applied to a copy first) into a ``Suite``; one UserError line."""
    where = f"suite {source}" if source else "suite"
    if overrides and isinstance(raw, dict):
        raw = schema.apply_overrides(copy.deepcopy(raw), overrides, model=SuiteFile, voice=schema.SUITE)
    f = schema.parse(SuiteFile, raw, voice=schema.SUITE, where=where, overrides=overrides)
    with schema.located(where, overrides):
        for norm, eps in f.eps.items():
            _unit_check(norm, eps, f"eps.{norm.value}")
        attacks = tuple(_attack_spec(name, a, f.eps) for name, a in f.attacks.items())
        names = {a.name for a in attacks}
        _attack_names(f.transfer.attacks, names, "transfer.attacks")
        _attack_names(f.curves.attacks, names, "curves.attacks")
        for a in f.curves.attacks:
            if "steps" not in attacks[[x.name for x in attacks].index(a)].params and f.curves.steps:
                raise UserError(f"curves.attacks: {a} has no 'steps' parameter to sweep")
    return Suite(name=f.name or Path(source).stem or "suite", examples=f.examples, shard_size=f.shard_size,
                 seed=f.seed, eps=dict(f.eps), attacks=attacks, resources=f.resources, transfer=f.transfer,
                 curves=f.curves, sanity=f.sanity, source=source)


def _unit_check(norm: Norm, eps: float, key: str) -> None:
    problem = radius_unit_problem(norm, eps)
    if problem is not None:
        raise UserError(f"{key}: {problem}")


def _attack_names(names: tuple[str, ...], known: set[str], key: str) -> None:
    for name in names:
        if name not in known:
            raise UserError(f"{key}: {name!r} is not an attack of this suite ({', '.join(sorted(known))})")


def _attack_spec(name: str, raw: AttackFile, eps: Mapping[Norm, float]) -> AttackSpec:
    kind, norm = attack_kind(raw.attack), raw.norm
    for module in kind.requires:
        if importlib.util.find_spec(module) is None:
            raise UserError(f"attacks.{name}: {kind.name} needs the {module} package; "
                            f"install it (pip install {module}) or drop the attack")
    if norm not in kind.norms:
        raise UserError(f"attacks.{name}: {kind.name} does not attack in {norm.value}; "
                        f"it supports {', '.join(n.value for n in Norm if n in kind.norms)}")
    if raw.eps is not None:
        _unit_check(norm, raw.eps, f"attacks.{name}.eps")
    elif norm not in eps:
        raise UserError(f"attacks.{name} has no eps and the suite's eps has no {norm.value} entry")
    allowed = {**COMMON_DEFAULTS, **kind.defaults}
    for key in raw.params:
        if key not in allowed:
            raise UserError(f"attacks.{name}.params: {kind.name} has no parameter {key!r}; "
                            f"it takes {', '.join(allowed)}")
    params = {**copy.deepcopy(allowed), **raw.params}
    if isinstance(params["restarts"], bool) or not isinstance(params["restarts"], int) or params["restarts"] < 1:
        raise UserError(f"attacks.{name}.params.restarts must be a positive integer")
    return AttackSpec(name=name, attack=kind.name, norm=norm, eps=raw.eps if raw.eps is not None else eps[norm],
                      params=params)


# ------------------------------------------------------------------ jobs

@dataclass(frozen=True, kw_only=True)
class Job:
    """One attack against one source model, scored on some targets, over the first ``examples`` examples."""

    name: str                 # unique: the shard file prefix
    group: str                # suite | transfer | curve_steps | curve_eps
    spec: AttackSpec
    source: str               # "ensemble" or "m<i>" (sub-model i)
    targets: tuple[str, ...]  # models the adversarial examples are scored on
    examples: int
    x_value: float = 0.0      # the curve's x (steps or radius); 0 for other groups


def member_names(num_members: int) -> list[str]:
    return [f"m{i}" for i in range(num_members)]


def plan_jobs(suite: Suite, *, num_members: int, examples: int) -> list[Job]:
    """Every job of the suite for a model with ``num_members`` sub-models, on ``examples`` examples.

    ``num_members=0`` is a model mat-dist did not train: it has no sub-models, so no transfer jobs."""
    jobs = [Job(name=a.name, group="suite", spec=a, source=ENSEMBLE, targets=(ENSEMBLE,), examples=examples)
            for a in suite.attacks]
    models = [ENSEMBLE, *member_names(num_members)]
    transfer = suite.transfer.attacks if num_members > 0 else ()  # a foreign model has no sub-models
    n_transfer = min(examples, examples if suite.transfer.examples is None else suite.transfer.examples)
    for a in transfer:
        for source in models:
            jobs.append(Job(name=f"transfer_{a}_from_{source}", group="transfer", spec=suite.attack(a),
                            source=source, targets=tuple(models), examples=n_transfer))
    n_curve = min(examples, examples if suite.curves.examples is None else suite.curves.examples)
    for a in suite.curves.attacks:
        spec = suite.attack(a)
        for k in suite.curves.steps:
            jobs.append(Job(name=f"curve_steps_{a}_k{k}", group="curve_steps",
                            spec=replace(spec, params={**spec.params, "steps": k}), source=ENSEMBLE,
                            targets=(ENSEMBLE,), examples=n_curve, x_value=float(k)))
        for s in suite.curves.eps_scale:
            jobs.append(Job(name=f"curve_eps_{a}_x{s:g}", group="curve_eps",
                            spec=replace(spec, eps=spec.eps * s), source=ENSEMBLE,
                            targets=(ENSEMBLE,), examples=n_curve, x_value=spec.eps * s))
    return jobs
