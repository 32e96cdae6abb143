"""Every attack of the registry on a small trained MIMO model: it lowers accuracy and stays inside its radius.

A table of targets, as foolbox's tests do; budgets are tiny so that the file
runs in well under a minute on 2 CPU cores.
"""

from dataclasses import dataclass, field, replace

import pytest
import torch

from evaluate_helpers import RADII, digits, tiny_model
from mat_dist.core import autoattack as aa
from mat_dist.evaluate.gate import perturbation_norm, predict
from mat_dist.evaluate.registry import ATTACKS
from mat_dist.evaluate.shards import attack_and_gate
from mat_dist.evaluate.suite import suite_from_dict


@dataclass(frozen=True)
class Target:
    attack: str
    norm: str
    params: dict = field(default_factory=dict)
    examples: int = 24
    eps: float | None = None  # default: RADII[norm]; decision-based attacks with tiny budgets get a larger one


TARGETS = [
    Target("pgd", "linf", {"steps": 10}),
    Target("pgd", "l2", {"steps": 10}),
    Target("pgd", "l1", {"steps": 10}),
    Target("pgd", "linf", {"steps": 5, "restarts": 2}),
    Target("fb_pgd", "linf", {"steps": 10}),
    Target("fb_pgd", "l2", {"steps": 10}),
    Target("fb_pgd", "l1", {"steps": 10}),
    Target("cw", "l2", {"binary_search_steps": 3, "steps": 50, "initial_const": 1.0}, 12),
    Target("ead", "l1", {"binary_search_steps": 3, "steps": 50, "initial_const": 1.0}, 12),
    Target("hsj", "linf", {"steps": 3, "initial_gradient_eval_steps": 20, "max_gradient_eval_steps": 50}, 8, 0.3),
    Target("boundary", "l2", {"steps": 100}, 8, 3.0),
    Target("saltpepper", "l1", {"steps": 50}, 12),
    Target("autoattack", "linf", {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 10}),
    Target("autoattack", "l2", {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_iter": 10,
                                "n_target_classes": 2}),
    Target("autoattack", "l1", {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 10}),
]


def spec_of(target: Target):
    attack = {"attack": target.attack, "norm": target.norm, "params": target.params}
    if target.eps is not None:
        attack["eps"] = target.eps
    suite = suite_from_dict({"eps": RADII, "attacks": {"a": attack}})
    return suite.attacks[0]


def test_the_table_covers_every_attack_of_the_registry():
    covered = {t.attack for t in TARGETS}
    assert covered == set(ATTACKS) - {"brendel_bethge"}  # needs numba, which the test machine lacks


def within(x_adv: torch.Tensor, x: torch.Tensor, norm, eps: float) -> torch.Tensor:
    """Per row (B,): ||x_adv - x||_norm <= eps up to float32 round-off (1e-4 relative, 1e-6 absolute)."""
    return perturbation_norm(x_adv - x, norm) <= eps * (1 + 1e-4) + 1e-6


def in_box(x_adv: torch.Tensor) -> torch.Tensor:
    """Per row (B,): every pixel finite and inside [0, 1]."""
    flat = x_adv.reshape(len(x_adv), -1)
    return torch.isfinite(flat).all(dim=1) & (flat >= 0).all(dim=1) & (flat <= 1).all(dim=1)


@pytest.mark.parametrize("target", TARGETS,
                         ids=lambda t: f"{t.attack}-{t.norm}-{'-'.join(map(str, t.params.values()))}")
def test_attack_lowers_accuracy_and_stays_inside_its_radius(target, monkeypatch):
    """Every raw output of the attack, on every row it was given, is checked, not only the rows the gate accepted.

    Fixed-radius attacks (PGD, AutoAttack) must return every row inside the
    ball and the box. Minimisation attacks return minimal adversarials, which
    may lie outside the ball by design (the evaluator projects them): their
    raw rows must be in the box, and every row the evaluator returns is either
    that raw row or inside the ball.
    """
    model = tiny_model()
    test = digits().test
    x, y = test.images[:target.examples], test.labels[:target.examples]
    spec = spec_of(target)
    kind = spec.kind
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (inputs, raw outputs) of each restart

    def recording_run(model, x_in, y_in, **kwargs):
        x_raw = kind.run(model, x_in, y_in, **kwargs)
        calls.append((x_in.clone(), x_raw.detach().clone()))
        return x_raw

    monkeypatch.setitem(ATTACKS, kind.name, replace(kind, run=recording_run))
    x_adv, verdict = attack_and_gate(spec, model, x, y, seed=0)
    clean_acc = (predict(model, x) == y).float().mean().item()
    robust_acc = (~verdict.success).float().mean().item()
    assert clean_acc >= 0.75
    assert robust_acc < clean_acc, f"{target.attack} broke no example"
    assert len(calls) >= 1

    for x_in, x_raw in calls:
        assert x_raw.shape == x_in.shape
        assert in_box(x_raw).all(), f"{target.attack} returned rows outside [0, 1]: {(~in_box(x_raw)).nonzero()}"
        if not kind.minimization:
            norms = perturbation_norm(x_raw - x_in, spec.norm)
            assert within(x_raw, x_in, spec.norm, spec.eps).all(), \
                f"{target.attack} returned rows outside its {spec.norm.value} ball of {spec.eps}: max {norms.max()}"

    # What the evaluator returns, on every row: untouched where clean-wrong, inside the box everywhere, and
    # inside the ball unless it is a minimisation attack's raw (unprojected) row.
    assert torch.equal(x_adv[~verdict.clean_correct], x[~verdict.clean_correct])
    assert in_box(x_adv).all()
    inside = within(x_adv, x, spec.norm, spec.eps)
    if kind.minimization:
        raw_rows = torch.zeros(len(x), dtype=torch.bool)
        for x_in, x_raw in calls:
            rows = (x_in.unsqueeze(0) == x.unsqueeze(1)).flatten(2).all(dim=2).nonzero()  # (x row, call row)
            for i, j in rows.tolist():
                raw_rows[i] |= torch.equal(x_adv[i], x_raw[j])
        inside |= raw_rows
    assert inside.all(), f"rows outside the ball: {(~inside).nonzero().squeeze(1).tolist()}"

    broken = verdict.success & verdict.clean_correct
    assert within(x_adv[broken], x[broken], spec.norm, spec.eps).all()
    assert (predict(model, x_adv[broken]) != y[broken]).all()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_own_pgd_is_at_least_as_strong_as_foolbox_pgd(norm):
    """Same radius, same steps, same relative step size: mat-dist's PGD may lose by at most 2 examples in 100."""
    model = tiny_model()
    test = digits().test
    x, y = test.images[:100], test.labels[:100]
    accs = {}
    for attack, rel in (("pgd", "rel_alpha"), ("fb_pgd", "rel_stepsize")):
        spec = spec_of(Target(attack, norm, {"steps": 10, rel: 0.25}))
        _, verdict = attack_and_gate(spec, model, x, y, seed=0)
        accs[attack] = (~verdict.success).float().mean().item()
    assert accs["pgd"] <= accs["fb_pgd"] + 0.02, accs


def test_autoattack_runs_at_the_evaluated_radius_not_the_library_default():
    model = tiny_model()
    eps = 0.05  # far from pyautoattack's default of 0.3
    spec = spec_of(Target("autoattack", "linf", {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 10}))
    adversary = aa.build(model, norm=spec.norm, eps=eps, params=spec.params, seed=0)
    assert adversary.epsilon == eps and adversary.apgd.eps == eps and adversary.apgd_targeted.eps == eps
    test = digits().test
    x, y = test.images[:24], test.labels[:24]
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=24)
    assert (x_adv - x).abs().amax().item() <= eps + 1e-6
    adversary.apgd.eps = 0.3
    with pytest.raises(RuntimeError, match="not the evaluated eps"):
        aa.check_radius(adversary, eps)


def test_minimization_attack_outputs_are_projected_onto_the_evaluated_ball():
    # salt-and-pepper measures l_2 in foolbox but is evaluated in l_1: every broken example is inside the l_1 ball.
    model = tiny_model()
    test = digits().test
    x, y = test.images[:12], test.labels[:12]
    spec = spec_of(Target("saltpepper", "l1", {"steps": 50}))
    x_adv, verdict = attack_and_gate(spec, model, x, y, seed=0)
    broken = verdict.success & verdict.clean_correct
    assert (verdict.perturbation_norm[broken] <= spec.eps * (1 + 1e-4)).all()
    torch.testing.assert_close(verdict.perturbation_norm, perturbation_norm(x_adv - x, "l1") * verdict.clean_correct)
