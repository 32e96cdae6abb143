"""Gradient-masking warnings: each check fires on a model or table built to trigger it, and not on a healthy one."""

import torch
from torch import nn

from evaluate_helpers import digits, tiny_model
from mat_dist.evaluate.sanity import black_box_warnings, curve_warnings, gradient_warnings


class Rounded(nn.Module):
    """Quantises its input: the loss gradient w.r.t. the input is exactly zero."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.round())


class Noisy(nn.Module):
    """Adds fresh noise at every call: a randomised defence."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.05 * torch.randn_like(x))


def test_gradient_checks():
    model = tiny_model()
    test = digits().test
    x, y = test.images[:32], test.labels[:32]
    assert gradient_warnings(model, x, y) == []
    assert any("exactly zero" in w for w in gradient_warnings(Rounded(model), x, y))
    assert any("randomised" in w for w in gradient_warnings(Noisy(model), x, y))


INFO = {"pgd_linf": {"attack": "pgd", "norm": "linf"}, "hsj_linf": {"attack": "hsj", "norm": "linf"},
        "pgd_l2": {"attack": "pgd", "norm": "l2"}, "boundary_l2": {"attack": "boundary", "norm": "l2"}}


def test_black_box_beating_white_box_is_reported():
    summary = {"attacks": {"pgd_linf": 0.60, "hsj_linf": 0.40, "pgd_l2": 0.50, "boundary_l2": 0.505}}
    warnings = black_box_warnings(summary, INFO, margin=0.01)
    assert len(warnings) == 1 and "hsj_linf" in warnings[0]


def test_curves_that_do_not_fall_are_reported():
    def pts(curve, accs):
        return [{"curve": curve, "attack": "pgd_l2", "norm": "l2", "x": float(i + 1), "robust_accuracy": a}
                for i, a in enumerate(accs)]

    assert curve_warnings(pts("radius", [0.8, 0.4, 0.05]) + pts("steps", [0.6, 0.5, 0.5]),
                          max_final_accuracy=0.1, tolerance=0.02) == []
    flat = curve_warnings(pts("radius", [0.8, 0.7, 0.6]), max_final_accuracy=0.1, tolerance=0.02)
    assert len(flat) == 1 and "should fall towards 0" in flat[0]
    rising = curve_warnings(pts("steps", [0.5, 0.6]), max_final_accuracy=0.1, tolerance=0.02)
    assert len(rising) == 1 and "more steps" in rising[0]
