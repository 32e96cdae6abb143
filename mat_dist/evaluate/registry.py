"""The attacks a suite may name: a table from name to a small dataclass, not an if/elif chain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from mat_dist.core import autoattack as aa  # in the method's folder: the per-epoch check runs its APGD too
from mat_dist.core.threats import Norm
from mat_dist.evaluate.adapters import fb, own

AttackFn = Callable[..., torch.Tensor]  # (model, x, y, *, norm, eps, params, seed) -> x_adv (B, C, H, W)

# Parameters every attack accepts; the evaluator's wrapper handles them, not the adapter.
COMMON_DEFAULTS: dict[str, Any] = {
    "restarts": 1,   # runs with seeds seed, seed+1, ...; an example counts as broken if any run breaks it
}


@dataclass(frozen=True)
class AttackKind:
    name: str
    library: str                      # own | foolbox | autoattack
    run: AttackFn
    norms: frozenset[Norm]
    defaults: Mapping[str, Any]       # also the parameters it accepts
    white_box: bool                   # needs gradients (False: decision- or score-based)
    minimization: bool = False        # returns minimal adversarials: projected onto the ball before the gate
    description: str = ""
    requires: tuple[str, ...] = ()    # extra modules it needs (checked when a suite names it)


ALL_NORMS = frozenset(Norm)

ATTACKS: dict[str, AttackKind] = {k.name: k for k in [
    AttackKind("pgd", "own", own.pgd, ALL_NORMS, own.PGD_DEFAULTS, True,
               description="mat-dist's PGD (l_1: MSD's top-k step, exact l_1 projection)"),
    AttackKind("fb_pgd", "foolbox", fb.pgd, ALL_NORMS, fb.FB_PGD_DEFAULTS, True,
               description="foolbox LinfPGD / L2PGD / L1PGD"),
    AttackKind("cw", "foolbox", fb.cw, frozenset({Norm.L2}), fb.CW_DEFAULTS, True, minimization=True,
               description="Carlini-Wagner l_2 (foolbox)"),
    AttackKind("ead", "foolbox", fb.ead, frozenset({Norm.L1}), fb.EAD_DEFAULTS, True, minimization=True,
               description="EAD elastic-net attack, L1 decision rule (foolbox)"),
    AttackKind("brendel_bethge", "foolbox", fb.bb_l1, frozenset({Norm.L1}), fb.BB_L1_DEFAULTS, True,
               minimization=True, description="Brendel-Bethge l_1 (foolbox; needs numba)", requires=("numba",)),
    AttackKind("hsj", "foolbox", fb.hsj, frozenset({Norm.LINF, Norm.L2}), fb.HSJ_DEFAULTS, False,
               minimization=True, description="HopSkipJump, decision-based (foolbox)"),
    AttackKind("boundary", "foolbox", fb.boundary, frozenset({Norm.L2}), fb.BOUNDARY_DEFAULTS, False,
               minimization=True, description="Boundary attack, decision-based (foolbox)"),
    AttackKind("saltpepper", "foolbox", fb.saltpepper, frozenset({Norm.L1}), fb.SALTPEPPER_DEFAULTS, False,
               minimization=True, description="salt-and-pepper noise, decision-based (foolbox)"),
    AttackKind("autoattack", "autoattack", aa.autoattack, ALL_NORMS, aa.AUTOATTACK_DEFAULTS, True,
               description="AutoAttack (l_1: l_1-APGD of 'Mind the box')"),
]}


def attack_kind(name: str) -> AttackKind:
    from mat_dist.plumbing.errors import UserError

    try:
        return ATTACKS[name]
    except KeyError:
        raise UserError(f"unknown attack {name!r}; use one of {', '.join(ATTACKS)}") from None
