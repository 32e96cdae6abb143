"""On CUDA (marked ``gpu``: excluded from the default run; ``pytest -m gpu``, or scripts/gpu_check.sh, runs them).

What a CPU machine cannot show: MAT's training step and attacks on the GPU keep every perturbation inside its
radius and x + delta inside [0, 1], the l_1 projection CUDA takes (sort-and-threshold) equals the one the CPU
takes (Michelot's fixed point), bf16 autocast trains, and PreAct ResNet-18 on CIFAR-shaped inputs steps.
"""

from __future__ import annotations

import pytest
import torch

from mat_dist.core.attacks import SlotAttack, perturb
from mat_dist.core.run_config import Precision, TrainConfig
from mat_dist.core.fast_path import prepare_model
from mat_dist.core.methods import METHODS, OuterLoss, adversarial_loss, per_member_ce
from mat_dist.core.models import ModelKind, ModelSpec, build_model
from mat_dist.core.threats import (
    L1Threat, L2Threat, LinfThreat, project_l1_ball, project_l1_ball_fixed_point, project_l1_ball_sort,
)

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
THREATS = (L1Threat(eps=10.0, alpha=2.5), L2Threat(eps=2.0, alpha=0.5), LinfThreat(eps=0.3, alpha=0.075))
TOL = 1e-4  # relative: the evaluator's gate allows the same


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def _model(backbone: str = "mnist_cnn", channels: int = 1, size: int = 28, members: int = 3) -> torch.nn.Module:
    spec = ModelSpec(backbone=backbone, num_members=members, in_channels=channels, image_size=(size, size),
                     num_classes=10, mean=(0.5,) * channels, std=(0.25,) * channels, kind=ModelKind.MIMO)
    torch.manual_seed(0)
    return build_model(spec).to(CUDA)


def _inside(x: torch.Tensor, delta: torch.Tensor) -> None:
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    for m, threat in enumerate(THREATS):
        assert (threat.norm(delta[:, m]) <= threat.eps * (1 + TOL)).all(), threat.label


@pytest.mark.parametrize("precision, channels_last", [(Precision.FP32, False), (Precision.BF16, False),
                                                      (Precision.AUTO, "auto")])  # the default: both on with bf16
def test_mat_training_step_on_cuda_keeps_radii_and_box_and_learns(precision, channels_last):
    net = _model()
    fast = prepare_model(net, TrainConfig(precision=precision, channels_last=channels_last), CUDA)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator(device=CUDA).manual_seed(0)
    x = torch.rand(64, 3, 1, 28, 28, device=CUDA, generator=gen)
    y = torch.randint(0, 10, (64, 3), device=CUDA, generator=gen)
    losses = []
    for _ in range(5):
        result = adversarial_loss(METHODS["mat"], fast, x, y, threats=THREATS, steps=5, random_start=True,
                                  outer=OuterLoss.SUM, weights=torch.ones(3, device=CUDA), generator=gen)
        _inside(x, result.x_adv - x)
        assert result.loss.dtype == torch.float32 and torch.isfinite(result.loss)
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
        losses.append(result.loss.item())
    assert all(p.dtype == torch.float32 for p in net.parameters())  # bf16 autocasts forwards; weights stay fp32
    assert losses[-1] < losses[0]  # five steps on one batch fit it


def test_attack_steps_on_cuda_stay_in_radius_and_box_at_every_step():
    net = _model().eval()
    x = torch.rand(32, 3, 1, 28, 28, device=CUDA)
    x[:, :, :, :4] = 0.0  # pixels on the box boundary, as MNIST's background
    y = torch.randint(0, 10, (32, 3), device=CUDA)
    seen = []

    def loss_fn(x_adv):
        seen.append((x_adv - x).detach())
        return per_member_ce(net(x_adv), y)

    delta = perturb(loss_fn, x, [SlotAttack((t,)) for t in THREATS], steps=10,
                    generator=torch.Generator(device=CUDA).manual_seed(0))
    assert delta.device.type == CUDA.type
    for d in seen + [delta]:
        _inside(x, d)
    assert all(float(THREATS[m].norm(delta[:, m]).max()) > 0.5 * THREATS[m].eps for m in range(3))


def test_cuda_takes_the_sort_projection_and_it_equals_the_cpu_fixed_point():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(256, 784, generator=gen) * torch.rand(256, 1, generator=gen) * 0.5
    on_gpu = project_l1_ball(delta.to(CUDA), 10.0)
    torch.testing.assert_close(on_gpu, project_l1_ball_sort(delta.to(CUDA), 10.0), atol=0, rtol=0)
    torch.testing.assert_close(on_gpu.cpu(), project_l1_ball_fixed_point(delta, 10.0), atol=2e-6, rtol=0)
    # and the fixed point runs on CUDA too (with host syncs), to the same result
    torch.testing.assert_close(project_l1_ball_fixed_point(delta.to(CUDA), 10.0), on_gpu, atol=2e-6, rtol=0)


def test_preact_resnet18_mat_step_on_cifar_shaped_inputs():
    net = _model("preact_resnet18", channels=3, size=32)
    x = torch.rand(16, 3, 3, 32, 32, device=CUDA)
    y = torch.randint(0, 10, (16, 3), device=CUDA)
    threats = (L1Threat(eps=12.0, alpha=1.0), L2Threat(eps=0.5, alpha=0.02), LinfThreat(eps=8 / 255, alpha=2 / 255))
    result = adversarial_loss(METHODS["mat"], net, x, y, threats=threats, steps=3, random_start=True,
                              outer=OuterLoss.SUM, weights=torch.ones(3, device=CUDA),
                              generator=torch.Generator(device=CUDA).manual_seed(0))
    result.loss.backward()
    delta = result.x_adv - x
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    for m, threat in enumerate(threats):
        assert (threat.norm(delta[:, m]) <= threat.eps * (1 + TOL)).all()
