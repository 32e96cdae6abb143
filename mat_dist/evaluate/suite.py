"""Attack suites: YAML files naming each attack with its norm, radius and parameters.

A suite is a YAML mapping (see ``mat_dist/suites/quick.yaml``)::

    name: quick
    examples: 1000            # default number of test images (the first N)
    shard_size: 100           # examples per shard (one Ray task)
    seed: 0
    eps: {linf: 0.1, l2: 1.0, l1: 5.0}       # default radius per norm (pixel units)
    resources: {num_cpus: 1, num_gpus: 0, max_retries: 2}   # per shard
    attacks:                  # name -> attack of the registry, norm, optional eps, params
      pgd_linf: {attack: pgd, norm: linf, params: {steps: 20}}
    transfer: {attacks: [pgd_linf], examples: 200}          # sub-model analysis
    curves: {attacks: [pgd_linf], steps: [1, 5, 20], eps_scale: [0.5, 1, 2], examples: 200}
    sanity: {black_box_margin: 0.01, max_final_accuracy: 0.1}

``key.sub=value`` overrides (``eps.linf=0.3``, ``attacks.pgd_linf.params.steps=50``)
change single fields, as for training configs. Unknown keys, attacks, norms
or parameters are refused with one line.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from mat_dist.config import apply_overrides, find_yaml, read_yaml
from mat_dist.errors import UserError
from mat_dist.evaluate.registry import ATTACKS, COMMON_DEFAULTS, attack_kind
from mat_dist.threats import Norm, radius_unit_problem

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


@dataclass(frozen=True, kw_only=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 2       # a shard whose worker dies is retried this many times


@dataclass(frozen=True, kw_only=True)
class TransferSpec:
    attacks: tuple[str, ...] = ()
    examples: int | None = None  # at most this many examples (default: all evaluated)


@dataclass(frozen=True, kw_only=True)
class CurveSpec:
    attacks: tuple[str, ...] = ()
    steps: tuple[int, ...] = ()
    eps_scale: tuple[float, ...] = ()
    examples: int | None = None


@dataclass(frozen=True, kw_only=True)
class SanitySpec:
    black_box_margin: float = 0.01     # accuracy a black-box attack may beat white-box ones by
    max_final_accuracy: float = 0.1    # robust accuracy expected at the largest radius of the curve
    curve_tolerance: float = 0.02      # allowed rise of accuracy with more steps or a larger radius


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
    path = find_yaml(name_or_path, SHIPPED_SUITES)
    if path is None:
        raise UserError(f"suite {name_or_path!r} is neither a file nor a shipped suite ({', '.join(shipped_suites())})")
    return path


def load_suite(name_or_path: str, overrides: list[str] | None = None) -> Suite:
    path = resolve_suite_path(name_or_path)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a YAML mapping (name, eps, attacks, ...)")
    return suite_from_dict(apply_overrides(raw, list(overrides or [])), source=str(path))


_TOP_KEYS = {"name", "examples", "shard_size", "seed", "eps", "resources", "attacks", "transfer", "curves", "sanity"}


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise UserError(f"suite: unknown key {where}{key!r}; known keys here: {', '.join(sorted(allowed))}")


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"suite: {key} must be a positive integer, got {value!r}")
    return value


def _norm(value: Any, key: str) -> Norm:
    try:
        return Norm(value)
    except ValueError:
        known = ', '.join(n.value for n in Norm)
        raise UserError(f"suite: {key}: unknown norm {value!r}; use one of {known}") from None


def _radius(norm: Norm, value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"suite: {key} must be a positive number, got {value!r}")
    problem = radius_unit_problem(norm, float(value))
    if problem is not None:
        raise UserError(f"suite: {key}: {problem}")
    return float(value)


def _sub(raw: Mapping[str, Any], key: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise UserError(f"suite: {key} must be a mapping, got {value!r}")
    return value


def suite_from_dict(raw: Mapping[str, Any], *, source: str = "") -> Suite:
    _check_keys(raw, _TOP_KEYS, "")
    name = str(raw.get("name") or Path(source).stem or "suite")
    eps_raw = _sub(raw, "eps")
    eps = {_norm(k, f"eps.{k}"): 0.0 for k in eps_raw}
    eps = {n: _radius(n, eps_raw[n.value], f"eps.{n.value}") for n in eps}
    attacks_raw = raw.get("attacks")
    if not isinstance(attacks_raw, dict) or not attacks_raw:
        raise UserError("suite: attacks must be a non-empty mapping of name -> {attack, norm, params}")
    attacks = tuple(_attack_spec(n, a, eps) for n, a in attacks_raw.items())
    res = _sub(raw, "resources")
    _check_keys(res, {"num_cpus", "num_gpus", "max_retries"}, "resources.")
    resources = Resources(num_cpus=float(res.get("num_cpus", 1.0)), num_gpus=float(res.get("num_gpus", 0.0)),
                          max_retries=int(res.get("max_retries", 2)))
    if resources.num_cpus <= 0 or resources.num_gpus < 0 or resources.max_retries < 0:
        raise UserError("suite: resources need num_cpus > 0, num_gpus >= 0 and max_retries >= 0")
    names = {a.name for a in attacks}
    tr = _sub(raw, "transfer")
    _check_keys(tr, {"attacks", "examples"}, "transfer.")
    transfer = TransferSpec(attacks=_attack_names(tr.get("attacks", []), names, "transfer.attacks"),
                            examples=None if tr.get("examples") is None
                            else _positive_int(tr["examples"], "transfer.examples"))
    cu = _sub(raw, "curves")
    _check_keys(cu, {"attacks", "steps", "eps_scale", "examples"}, "curves.")
    curves = CurveSpec(
        attacks=_attack_names(cu.get("attacks", []), names, "curves.attacks"),
        steps=tuple(_positive_int(s, "curves.steps[]") for s in cu.get("steps", [])),
        eps_scale=tuple(_radius(Norm.L2, s, "curves.eps_scale[]") for s in cu.get("eps_scale", [])),
        examples=None if cu.get("examples") is None else _positive_int(cu["examples"], "curves.examples"))
    for a in curves.attacks:
        if "steps" not in attacks[[x.name for x in attacks].index(a)].params and curves.steps:
            raise UserError(f"suite: curves.attacks: {a} has no 'steps' parameter to sweep")
    sa = _sub(raw, "sanity")
    _check_keys(sa, {"black_box_margin", "max_final_accuracy", "curve_tolerance"}, "sanity.")
    sanity = SanitySpec(**{k: float(v) for k, v in sa.items()})
    return Suite(name=name, examples=_positive_int(raw.get("examples", 1000), "examples"),
                 shard_size=_positive_int(raw.get("shard_size", 100), "shard_size"),
                 seed=int(raw.get("seed", 0)), eps=eps, attacks=attacks, resources=resources,
                 transfer=transfer, curves=curves, sanity=sanity, source=source)


def _attack_names(value: Any, known: set[str], key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise UserError(f"suite: {key} must be a list of attack names")
    for name in value:
        if name not in known:
            raise UserError(f"suite: {key}: {name!r} is not an attack of this suite ({', '.join(sorted(known))})")
    return tuple(value)


def _attack_spec(name: Any, raw: Any, eps: Mapping[Norm, float]) -> AttackSpec:
    if not isinstance(name, str) or not _NAME.match(name) or "__" in name:
        raise UserError(f"suite: attack name {name!r} must be lower-case letters, digits, '_', '.', '-' "
                        f"(and no '__')")
    if not isinstance(raw, dict):
        raise UserError(f"suite: attacks.{name} must be a mapping with attack, norm and params")
    _check_keys(raw, {"attack", "norm", "eps", "params"}, f"attacks.{name}.")
    if "attack" not in raw or "norm" not in raw:
        raise UserError(f"suite: attacks.{name} needs 'attack' (one of {', '.join(ATTACKS)}) and 'norm'")
    kind = attack_kind(str(raw["attack"]))
    norm = _norm(raw["norm"], f"attacks.{name}.norm")
    for module in kind.requires:
        if importlib.util.find_spec(module) is None:
            raise UserError(f"suite: attacks.{name}: {kind.name} needs the {module} package; "
                            f"install it (pip install {module}) or drop the attack")
    if norm not in kind.norms:
        raise UserError(f"suite: attacks.{name}: {kind.name} does not attack in {norm.value}; "
                        f"it supports {', '.join(n.value for n in Norm if n in kind.norms)}")
    if "eps" in raw:
        radius = _radius(norm, raw["eps"], f"attacks.{name}.eps")
    elif norm in eps:
        radius = eps[norm]
    else:
        raise UserError(f"suite: attacks.{name} has no eps and the suite's eps has no {norm.value} entry")
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        raise UserError(f"suite: attacks.{name}.params must be a mapping")
    allowed = {**COMMON_DEFAULTS, **kind.defaults}
    for key in params_raw:
        if key not in allowed:
            raise UserError(f"suite: attacks.{name}.params: {kind.name} has no parameter {key!r}; "
                            f"it takes {', '.join(allowed)}")
    params = {**copy.deepcopy(allowed), **params_raw}
    if not isinstance(params["restarts"], int) or params["restarts"] < 1:
        raise UserError(f"suite: attacks.{name}.params.restarts must be a positive integer")
    return AttackSpec(name=name, attack=kind.name, norm=norm, eps=radius, params=params)


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
    n_transfer = min(examples, suite.transfer.examples or examples)
    for a in transfer:
        for source in models:
            jobs.append(Job(name=f"transfer_{a}_from_{source}", group="transfer", spec=suite.attack(a),
                            source=source, targets=tuple(models), examples=n_transfer))
    n_curve = min(examples, suite.curves.examples or examples)
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
