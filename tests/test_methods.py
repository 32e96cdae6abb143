"""Training methods: pass counts of the paper's Table 6, and MAT's gradient (eq. 6-7)."""

import pytest
import torch

from mat_dist.core.attacks import GradientMode, SlotAttack, input_gradients, perturb
from mat_dist.core.methods import METHODS, OuterLoss, adversarial_loss, per_member_ce
from mat_dist.core.models import ModelKind, ModelSpec, build_model
from mat_dist.core.threats import L1Threat, L2Threat, LinfThreat

THREATS = [LinfThreat(eps=0.1, alpha=0.03), L2Threat(eps=1.0, alpha=0.3), L1Threat(eps=3.0, alpha=1.0)]
MSD_NORMS = len(THREATS)  # N: candidates per MSD step


def tiny_net(members: int, kind: ModelKind = ModelKind.MIMO):
    spec = ModelSpec(backbone="mnist_cnn", num_members=members, in_channels=1, image_size=(8, 8),
                     num_classes=10, mean=(0.5,), std=(0.5,), kind=kind)
    torch.manual_seed(0)
    return build_model(spec)


def table6(method: str, k: int, m: int) -> tuple[int, int]:
    """Forward / backward passes per batch, paper Table 6 (DESIGN.md)."""
    return {
        "standard": (1, 1),
        "at": (k + 1, k + 1),
        "mat": (k + 1, k + 1),
        "mat_same_norm": (k + 1, k + 1),
        "ensemble_at": (m * (k + 1), m * (k + 1)),
        "mimo_at": (k + 1, m * k + 1),
        "msd": ((1 + MSD_NORMS) * k + 1, k + 1),
        "mat_msd": ((1 + MSD_NORMS) * k + 1, k + 1),
        # the field's one-network methods (DESIGN.md): one norm per batch, or every norm per batch
        "sat": (k + 1, k + 1),
        "e_at": (k + 1, k + 1),
        "avg": (MSD_NORMS * (k + 1), MSD_NORMS * (k + 1)),
        "max": (MSD_NORMS * (k + 1), MSD_NORMS * (k + 1)),
    }[method]


def count_passes(net: torch.nn.Module, run) -> tuple[int, int]:
    """Forward and backward passes through the backbone network(s), counted with module hooks."""
    counts = [0, 0]
    networks = net.members if hasattr(net, "members") else [net.backbone]
    handles = []
    for module in networks:
        handles.append(module.register_forward_hook(lambda *_: counts.__setitem__(0, counts[0] + 1)))
        handles.append(module.register_full_backward_hook(lambda *_: counts.__setitem__(1, counts[1] + 1)))
    run()
    for h in handles:
        h.remove()
    return counts[0], counts[1]


def threats_for(method: str, m: int):
    if METHODS[method].msd or METHODS[method].every_norm is not None:
        return THREATS
    if METHODS[method].draw is not None:  # the trainer hands over the one norm drawn for the batch
        return [THREATS[2]]
    if METHODS[method].same_norm:
        return [THREATS[0]] * m
    return [THREATS[i % 3] for i in range(m)]


CASES = [(name, k, m) for name in METHODS for k in (1, 3) for m in (1, 2, 3)
         if not (METHODS[name].single_model and m != 1)]


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("name, k, m", CASES)
def test_passes_per_batch_equal_table_6(name, k, m):
    method = METHODS[name]
    net = tiny_net(m, method.model_kind)
    x = torch.rand(4, m, 1, 8, 8)
    y = torch.randint(0, 10, (4, m))

    def step():
        result = adversarial_loss(method, net, x, y, threats=threats_for(name, m), steps=k, random_start=True,
                                  outer=OuterLoss.SUM, weights=torch.ones(m))
        result.loss.backward()

    assert count_passes(net, step) == table6(name, k, m)
    # the count a tuning trial reports as its training cost is the measured one
    assert method.passes_per_batch(steps=k, members=m, norms=MSD_NORMS) == count_passes(net, step)


@pytest.mark.parametrize("combine", ["avg", "max"])
def test_avg_and_max_against_a_brute_force_loop_over_norms(combine):
    """AVG's loss is the mean of the N adversarial losses; MAX keeps, per example, the norm whose adversarial
    loss is highest: both against a loop that attacks with each norm alone from the same generator state."""
    net = tiny_net(1)
    x = torch.rand(12, 1, 1, 8, 8)
    y = torch.randint(0, 10, (12, 1))
    result = adversarial_loss(METHODS[combine], net, x, y, threats=THREATS, steps=2, random_start=True,
                              outer=OuterLoss.SUM, weights=torch.ones(1), generator=torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    per_norm = []  # (N, B): each example's adversarial loss under each norm
    adversarial = []
    for threat in THREATS:
        delta = perturb(lambda xa: per_member_ce(net(xa), y), x, [SlotAttack((threat,))], steps=2,
                        generator=generator)
        adversarial.append(x + delta)
        with torch.no_grad():
            per_norm.append(per_member_ce(net(x + delta), y)[:, 0])
    per_norm = torch.stack(per_norm)
    if combine == "max":
        expected = torch.stack([per_norm[:, b].max() for b in range(12)]).mean()
        for b in range(12):  # the kept example is that of the worst norm
            worst = int(per_norm[:, b].argmax())
            torch.testing.assert_close(result.x_adv[b], adversarial[worst][b])
    else:
        expected = per_norm.mean()
    torch.testing.assert_close(result.loss.detach(), expected)
    assert per_norm.argmax(dim=0).unique().numel() > 1  # the norms really differ per example here


def test_mat_gradient_is_true_gradient_plus_cross_gradient():
    net = tiny_net(3)
    x = torch.rand(5, 3, 1, 8, 8, requires_grad=True)
    y = torch.randint(0, 10, (5, 3))
    losses = per_member_ce(net(x), y)  # (B, M)
    ensemble = input_gradients(losses, x, GradientMode.ENSEMBLE)
    losses = per_member_ce(net(x), y)
    true = input_gradients(losses, x, GradientMode.PER_MEMBER)
    for m in range(3):
        cross = sum(torch.autograd.grad(per_member_ce(net(x), y)[:, j].sum(), x)[0][:, m]
                    for j in range(3) if j != m)  # eq. 7: sum_{j != m} dCE_j / dx_m
        torch.testing.assert_close(ensemble[:, m], true[:, m] + cross)
        assert cross.abs().max() > 0  # the cross gradient is real in a shared backbone


def test_separate_networks_have_no_cross_gradient():
    net = tiny_net(3, ModelKind.SEPARATE)
    x = torch.rand(5, 3, 1, 8, 8, requires_grad=True)
    y = torch.randint(0, 10, (5, 3))
    ensemble = input_gradients(per_member_ce(net(x), y), x, GradientMode.ENSEMBLE)
    true = input_gradients(per_member_ce(net(x), y), x, GradientMode.PER_MEMBER)
    torch.testing.assert_close(ensemble, true)


def test_with_one_member_mat_and_mimo_at_take_identical_steps():
    net = tiny_net(1)
    x = torch.rand(6, 1, 1, 8, 8)
    y = torch.randint(0, 10, (6, 1))
    loss_fn = lambda xa: per_member_ce(net(xa), y)  # noqa: E731
    slots = [SlotAttack((THREATS[2],))]
    deltas = [perturb(loss_fn, x, slots, steps=5, gradient=mode, generator=torch.Generator().manual_seed(3))
              for mode in GradientMode]
    torch.testing.assert_close(deltas[0], deltas[1], rtol=0, atol=0)


def test_msd_keeps_the_worst_candidate_per_example():
    net = tiny_net(1)
    x = torch.rand(16, 1, 1, 8, 8)
    y = torch.randint(0, 10, (16, 1))
    loss_fn = lambda xa: per_member_ce(net(xa), y)  # noqa: E731
    msd = perturb(loss_fn, x, [SlotAttack(tuple(THREATS))], steps=1, random_start=False)
    # One MSD step from zero: each example's delta is the best of the three single-norm steps.
    singles = [perturb(loss_fn, x, [SlotAttack((t,))], steps=1, random_start=False,
                       generator=torch.Generator().manual_seed(0)) for t in THREATS[:2]]
    with torch.no_grad():
        best_single = torch.stack([loss_fn(x + d)[:, 0] for d in singles]).max(0).values
        assert (loss_fn(x + msd)[:, 0] >= best_single - 1e-6).all()


def test_outer_loss_max_and_weighted_sum():
    from mat_dist.core.methods import outer_objective
    losses = torch.tensor([1.0, 3.0, 2.0])
    assert outer_objective(losses, OuterLoss.MAX, torch.ones(3)) == 3.0
    assert outer_objective(losses, OuterLoss.SUM, torch.tensor([1.0, 0.0, 0.5])) == 2.0


def test_standard_training_leaves_inputs_clean():
    net = tiny_net(2)
    x = torch.rand(4, 2, 1, 8, 8)
    y = torch.randint(0, 10, (4, 2))
    result = adversarial_loss(METHODS["standard"], net, x, y, threats=[], steps=3, random_start=True,
                              outer=OuterLoss.SUM, weights=torch.ones(2))
    expected = per_member_ce(net(x), y).mean(0).sum()
    torch.testing.assert_close(result.loss, expected)


def test_cross_gradient_diagnostics_match_definitions():
    from mat_dist.core.attacks import cross_gradient_diagnostics
    net = tiny_net(3)
    x = torch.rand(6, 3, 1, 8, 8)
    y = torch.randint(0, 10, (6, 3))
    loss_fn = lambda xa: per_member_ce(net(xa), y)  # noqa: E731
    found = cross_gradient_diagnostics(loss_fn, x, THREATS)
    xg = x.clone().requires_grad_(True)
    true = input_gradients(loss_fn(xg), xg, GradientMode.PER_MEMBER)
    ensemble = input_gradients(loss_fn(xg), xg, GradientMode.ENSEMBLE)
    cross = ensemble - true
    ratio0 = (cross[:, 0].flatten(1).norm(dim=1) / true[:, 0].flatten(1).norm(dim=1)).mean()
    torch.testing.assert_close(found["cross_ratio"][0], ratio0)
    sign_flip = (ensemble[:, 0].sign() != true[:, 0].sign()).float().flatten(1).mean(1).mean()  # slot 0 is l_inf
    torch.testing.assert_close(found["disagreement"][0], sign_flip)
    assert (found["disagreement"] >= 0).all() and (found["disagreement"][2] <= 1).all()


def test_separate_networks_show_no_disagreement():
    from mat_dist.core.attacks import cross_gradient_diagnostics
    net = tiny_net(3, ModelKind.SEPARATE)
    x = torch.rand(6, 3, 1, 8, 8)
    y = torch.randint(0, 10, (6, 3))
    found = cross_gradient_diagnostics(lambda xa: per_member_ce(net(xa), y), x, THREATS)
    assert torch.all(found["cross_ratio"] == 0) and torch.all(found["disagreement"].abs() < 1e-6)
