"""Threat models against brute force and independent numpy references."""

import numpy as np
import pytest
import torch

from mat_dist.core.attacks import SlotAttack, perturb
from mat_dist.plumbing.errors import UserError
from mat_dist.core.threats import (
    L1Threat, L2Threat, LinfThreat, Norm, ThreatModel, make_threat, project_l1_ball, project_l1_ball_fixed_point,
    project_l1_ball_sort, project_l2_ball, project_linf_ball,
)

TOL = 1e-5
THREATS = {
    Norm.LINF: LinfThreat(eps=0.1, alpha=0.03),
    Norm.L2: L2Threat(eps=1.0, alpha=0.3),
    Norm.L1: L1Threat(eps=5.0, alpha=1.0),
}


def l1_projection_by_bisection(v: np.ndarray, eps: float) -> np.ndarray:
    """Slow reference: find theta with sum(max(|v| - theta, 0)) = eps by bisection (float64)."""
    if np.abs(v).sum() <= eps:
        return v.copy()
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(np.abs(v) - mid, 0).sum() > eps:
            lo = mid
        else:
            hi = mid
    return np.sign(v) * np.maximum(np.abs(v) - hi, 0)


@pytest.mark.parametrize("eps", [0.5, 3.0, 10.0])
def test_l1_projection_equals_bisection_reference(eps):
    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(16, 1, 8, 8, generator=gen, dtype=torch.float64) * torch.rand(16, 1, 1, 1, generator=gen) * 2
    projected = project_l1_ball(delta, eps)
    for row, out in zip(delta, projected):
        expected = l1_projection_by_bisection(row.numpy().ravel(), eps)
        np.testing.assert_allclose(out.numpy().ravel(), expected, atol=1e-9)


L1_WAYS = {"sort": project_l1_ball_sort, "fixed_point": project_l1_ball_fixed_point}


def _hard_l1_rows() -> torch.Tensor:
    """Rows (float64, D=200) that stress a threshold search: ties, one spike, a geometric spread (Michelot's
    fixed point drops few coordinates per round there), zeros, a row inside and one exactly on the sphere."""
    d = 200
    rows = [
        torch.full((d,), 0.05),                                  # all tied, ||.||_1 = 10
        torch.cat([torch.tensor([9.0]), torch.full((d - 1,), 1e-3)]),
        0.9 ** torch.arange(d, dtype=torch.float64) * 3,         # geometric
        torch.cat([torch.randn(20, dtype=torch.float64), torch.zeros(d - 20)]),
        torch.full((d,), 0.001),                                 # inside (0.2)
        torch.full((d,), 0.0025) * torch.tensor([1.0, -1.0]).repeat(d // 2),  # on the sphere eps = 0.5
    ]
    return torch.stack([r.to(torch.float64) for r in rows])


@pytest.mark.parametrize("way", L1_WAYS)
@pytest.mark.parametrize("eps", [0.5, 3.0])
def test_both_l1_projections_equal_the_bisection_reference_on_hard_rows(way, eps):
    delta = _hard_l1_rows()
    projected = L1_WAYS[way](delta, eps)
    for row, out in zip(delta, projected):
        expected = l1_projection_by_bisection(row.numpy(), eps)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("way", L1_WAYS)
def test_both_l1_projections_equal_the_reference_on_pgd_points(way):
    """The points PGD projects: a ball point (MNIST-sized, 784 coordinates) plus a top-k step of mass alpha,
    some rows still inside; float32 as training runs, against the float64 reference."""
    threat = L1Threat(eps=10.0, alpha=2.0)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(24, 1, 28, 28, generator=gen)
    delta = threat.random_start(x, gen)
    delta[:6] *= 0.5  # well inside: the step's mass does not take them out
    moved = delta + threat.alpha * threat.direction(torch.randn(x.shape, generator=gen), x + delta, gen)
    outside = moved.flatten(1).abs().sum(1) > threat.eps
    assert 0 < outside.sum() < len(moved)  # both kinds of row are in the batch
    projected = L1_WAYS[way](moved, threat.eps)
    assert torch.equal(projected[~outside], moved[~outside])
    for row, out in zip(moved.double(), projected):
        expected = l1_projection_by_bisection(row.numpy().ravel(), threat.eps)
        np.testing.assert_allclose(out.numpy().ravel(), expected, atol=2e-6)


def test_the_l1_projection_does_not_write_into_its_input():
    delta = torch.randn(4, 3, 50)
    slot = delta[:, 1]  # a non-contiguous slot, as the attack loop passes
    before = delta.clone()
    for way in L1_WAYS.values():
        way(slot, 1.0)
        way(slot * 0, 1.0)[0, 0] = 5.0  # every row inside: the result is a copy, not the input
    assert torch.equal(delta, before)


def test_the_l1_step_equals_the_dense_step_it_replaces():
    """L1Threat.step adds the sparse top-k move to delta; the generic step builds the dense direction, scales
    it by alpha and adds it. Same generator state, same floats."""
    threat = L1Threat(eps=5.0, alpha=1.0)
    x = torch.rand(16, 3, 1, 28, 28)
    x[:, :, :, :5] = 0.0
    x[:, :, :, -5:] = 1.0  # some pixels on the box boundary: the step must skip those it would push out
    delta = torch.stack([threat.random_start(x[:, m], torch.Generator().manual_seed(m)) for m in range(3)], dim=1)
    grad = torch.randn(x.shape)
    grad[:, :, :, 10] = 0.0
    before = delta.clone()
    for m in range(3):  # slots of a (B, M, ...) tensor, as the attack loop hands them over
        sparse = threat.step(delta[:, m], grad[:, m], x[:, m], torch.Generator().manual_seed(7))
        dense = ThreatModel.step(threat, delta[:, m], grad[:, m], x[:, m], torch.Generator().manual_seed(7))
        assert torch.equal(sparse, dense)
        assert not torch.equal(sparse, delta[:, m])
    assert torch.equal(delta, before)  # the step returns a new delta


def test_l1_direction_picks_the_top_k_movable_coordinates_of_a_reference():
    """A direct reading of MSD's rule on random data with many pixels on the box boundary and zero gradients."""
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(32, 100, generator=gen, dtype=torch.float64)
    g[g.abs() < 0.3] = 0.0
    x_adv = torch.rand(32, 100, generator=gen, dtype=torch.float64)
    x_adv[x_adv < 0.2] = 0.0
    x_adv[x_adv > 0.8] = 1.0
    threat = L1Threat(eps=100.0, alpha=1.0, k_min=7, k_max=7)
    v = threat.direction(g, x_adv).numpy()
    for gi, xi, vi in zip(g.numpy(), x_adv.numpy(), v):
        movable = (gi != 0) & ~(((xi <= 0) & (gi < 0)) | ((xi >= 1) & (gi > 0)))
        order = [i for i in np.argsort(-np.abs(gi)) if movable[i]][:7]
        expected = np.zeros_like(gi)
        expected[order] = np.sign(gi[order]) / 7
        np.testing.assert_allclose(vi, expected, atol=0)


@pytest.mark.parametrize("way", [project_l1_ball, *L1_WAYS.values()])
def test_l1_projection_keeps_rows_inside_the_ball_unchanged(way):
    delta = torch.randn(8, 50)
    delta[:4] *= 0.5 / delta[:4].abs().sum(dim=1, keepdim=True)  # rows 0-3 have ||.||_1 = 0.5
    projected = way(delta, 1.0)
    assert torch.equal(projected[:4], delta[:4])
    assert not torch.allclose(projected[4:], delta[4:])


def test_l1_projection_is_not_a_rescaling():
    # The exact projection zeroes small coordinates; a rescaling would keep them.
    delta = torch.tensor([[3.0, 1.0, 0.1]])
    projected = project_l1_ball(delta, 2.0)
    np.testing.assert_allclose(projected.numpy(), [[2.0, 0.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("norm", list(Norm))
def test_projection_lands_inside_and_is_idempotent(norm):
    threat = THREATS[norm]
    delta = torch.randn(32, 1, 28, 28) * 0.5
    once = threat.project(delta)
    assert (threat.norm(once) <= threat.eps * (1 + TOL)).all()
    torch.testing.assert_close(threat.project(once), once)


def test_l2_and_linf_projections_match_numpy():
    delta = torch.randn(10, 30, dtype=torch.float64)
    d = delta.numpy()
    expected_l2 = d * np.minimum(1, 1.5 / np.linalg.norm(d, axis=1, keepdims=True))
    np.testing.assert_allclose(project_l2_ball(delta, 1.5).numpy(), expected_l2)
    np.testing.assert_allclose(project_linf_ball(delta, 0.2).numpy(), np.clip(d, -0.2, 0.2))


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_steepest_direction_maximises_inner_product_over_unit_ball(norm):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(4, 20, generator=gen, dtype=torch.float64)
    unit = make_threat(norm, eps=1.0, alpha=1.0)
    v = unit.direction(g, torch.full_like(g, 0.5))
    assert (unit.norm(v) <= 1 + 1e-9).all()
    best = (v * g).sum(dim=1)
    # The value is the dual norm: ||g||_1 for l_inf, ||g||_2 for l_2.
    dual = g.abs().sum(1) if norm is Norm.LINF else g.norm(dim=1)
    torch.testing.assert_close(best, dual)
    # No point of the unit ball does better (5,000 random points on its boundary).
    candidates = unit.project(torch.randn(5000, 20, generator=gen, dtype=torch.float64) * 10)
    assert ((candidates @ g.T) <= best + 1e-9).all()


def test_l1_step_moves_largest_movable_coordinates_with_sign_and_mass_alpha():
    threat = L1Threat(eps=100.0, alpha=2.0, k_min=3, k_max=3)
    g = torch.tensor([[5.0, -4.0, 3.0, -2.0, 1.0, 0.5]])
    x_adv = torch.tensor([[1.0, 0.5, 0.5, 0.5, 0.5, 0.5]])  # coordinate 0 sits on the box top, g > 0
    v = threat.direction(g, x_adv) * threat.alpha
    expected = torch.tensor([[0.0, -2 / 3, 2 / 3, -2 / 3, 0.0, 0.0]])
    torch.testing.assert_close(v, expected)
    assert v.abs().sum().item() == pytest.approx(2.0)


def test_l1_step_may_move_a_boundary_coordinate_inward():
    threat = L1Threat(eps=100.0, alpha=1.0, k_min=1, k_max=1)
    g = torch.tensor([[-5.0, 1.0]])
    x_adv = torch.tensor([[1.0, 0.5]])  # at the top, but g < 0 pulls it down: allowed
    assert threat.direction(g, x_adv)[0, 0] == -1.0


def test_l1_topk_k_is_drawn_in_range():
    threat = L1Threat(eps=100.0, alpha=1.0)
    g = torch.randn(1, 784)
    x = torch.full_like(g, 0.5)
    gen = torch.Generator().manual_seed(0)
    ks = {int((threat.direction(g, x, gen) != 0).sum()) for _ in range(300)}
    assert ks == set(range(5, 21))


@pytest.mark.parametrize("norm", list(Norm))
def test_only_the_l1_threat_takes_a_topk_range(norm):
    """Callers set the l_1 step's k range on any threat model, without asking which norm it is."""
    threat = THREATS[norm].with_topk(2, 3)
    if norm is Norm.L1:
        assert (threat.k_min, threat.k_max, threat.eps, threat.alpha) == (2, 3, 5.0, 1.0)
        with pytest.raises(UserError, match="1 <= k_min <= k_max"):
            threat.with_topk(4, 3)
    else:
        assert threat is THREATS[norm]


@pytest.mark.parametrize("norm", list(Norm))
def test_random_start_is_signed_inside_ball_and_box(norm):
    threat = THREATS[norm]
    x = torch.rand(64, 1, 28, 28)
    delta = threat.random_start(x, torch.Generator().manual_seed(0))
    assert (threat.norm(delta) <= threat.eps * (1 + TOL)).all()
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    assert (delta > 0).any() and (delta < 0).any()
    assert threat.norm(delta).min() > 0


class _TinyNet(torch.nn.Module):
    def __init__(self, slots):
        super().__init__()
        self.lin = torch.nn.Linear(slots * 64, slots * 10)
        self.slots = slots

    def forward(self, x):  # (B, M, 1, 8, 8) -> (B, M, 10)
        return self.lin(x.flatten(1)).view(x.shape[0], self.slots, 10)


@pytest.mark.parametrize("msd", [False, True])
def test_every_attack_step_stays_in_radius_and_box(msd):
    torch.manual_seed(0)
    norms = list(Norm)
    net = _TinyNet(3)
    x = torch.rand(32, 3, 1, 8, 8)
    y = torch.randint(0, 10, (32, 3))
    threats = [THREATS[n] for n in norms]
    slots = [SlotAttack(tuple(threats))] * 3 if msd else [SlotAttack((t,)) for t in threats]
    seen = []

    def loss_fn(x_adv):
        seen.append((x_adv - x).detach())
        return torch.nn.functional.cross_entropy(net(x_adv).flatten(0, 1), y.flatten(), reduction="none").view(32, 3)

    delta = perturb(loss_fn, x, slots, steps=7, generator=torch.Generator().manual_seed(0))
    for d in seen + [delta]:
        assert ((x + d) >= 0).all() and ((x + d) <= 1 + 1e-6).all()
        for m in range(3):
            if msd:  # inside the ball of at least one candidate norm, per example
                inside = torch.stack([t.norm(d[:, m]) <= t.eps * (1 + TOL) for t in threats]).any(0)
            else:
                inside = threats[m].norm(d[:, m]) <= threats[m].eps * (1 + TOL)
            assert inside.all()
    assert (delta.abs().sum() > 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm="linf", eps=-0.1, alpha=0.01), "must be positive"),
    (dict(norm="l2", eps=0.0, alpha=0.01), "must be positive"),
    (dict(norm="l7", eps=1.0, alpha=0.1), "unknown norm"),
])
def test_bad_threat_models_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        make_threat(kwargs.pop("norm"), **kwargs)
