"""Threat models: one class per norm, the only place in mat-dist that branches on the norm.

Every attack (training PGD, MSD, MAT's ensemble step, the evaluator's PGD) is
written against the small ``ThreatModel`` interface, as foolbox does:

    random_start   a signed random point inside the ball
    direction      the steepest-ascent direction V_p(g) for a step of size alpha
    project        the exact Euclidean projection onto the ball B_p(eps)
    norm           ||delta||_p per example

Tensors are per-example batches of any shape (B, ...); the maths works on the
flattened (B, D) view. Images live in [0, 1] and every radius is in pixel units.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from mat_dist.plumbing.errors import UserError

_TINY = 1e-12  # guards divisions by a zero gradient norm


class Norm(str, enum.Enum):
    LINF = "linf"
    L2 = "l2"
    L1 = "l1"


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)  # (B, D)


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-example values (B,) to broadcast against ``like`` (B, ...)."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def clip_to_box(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Shrink ``delta`` so that x + delta lies in [0, 1].

    Clipping only moves coordinates towards x, so |delta_i| never grows and the
    result stays inside any l_p ball the input was in.
    """
    return (x + delta).clamp_(0.0, 1.0).sub_(x)


def project_linf_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection onto {||delta||_inf <= eps}: a coordinate-wise clamp."""
    return delta.clamp(-eps, eps)


def project_l2_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection onto {||delta||_2 <= eps}: rescale rows outside the ball."""
    norms = _flat(delta).norm(p=2, dim=1)  # (B,)
    factor = (eps / norms.clamp_min(_TINY)).clamp(max=1.0)
    return delta * _per_example(factor, delta)


def project_l1_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact Euclidean projection onto {||delta||_1 <= eps}; rows already inside the ball come back unchanged.

    The projection soft-thresholds every coordinate at the theta that solves
    sum_i max(|delta_i| - theta, 0) = eps (Duchi et al. 2008). Two exact ways to
    find theta, equal to float rounding (tests/test_threats.py checks both
    against a float64 bisection):

    - on the CPU, Michelot's fixed point (``project_l1_ball_fixed_point``):
      element-wise passes, no sort, rows inside the ball skipped; it stops when
      its support stops shrinking, a check read on the host, which costs
      nothing on the CPU;
    - elsewhere (CUDA), sort-and-threshold (``project_l1_ball_sort``): one
      segmented sort and a fixed number of kernels, with no host
      synchronisation, which on a GPU would stall the attack loop at every
      iteration of the fixed point.
    """
    if delta.device.type == "cpu":
        return project_l1_ball_fixed_point(delta, eps)
    return project_l1_ball_sort(delta, eps)


def _soft_threshold(flat: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """sign(v) max(|v| - theta, 0) per row, theta (R,) >= 0, as v - clamp(v, -theta, theta): the same
    floats (|v| - theta and v -/+ theta round alike), in two passes instead of four."""
    t = theta.unsqueeze(1)
    return flat - flat.clamp(-t, t)


def project_l1_ball_sort(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """The l_1 projection by sort-and-threshold: Duchi, Shalev-Shwartz, Singer, Chandra (2008), "Efficient
    projections onto the l1-ball for learning in high dimensions", Figure 1. theta comes from the sorted
    magnitudes; O(D log D) per row, every row sorted (no data-dependent shapes: nothing waits for the GPU)."""
    flat = _flat(delta)  # (B, D)
    magnitude = flat.abs()
    inside = magnitude.sum(dim=1) <= eps  # (B,)
    mu, _ = magnitude.sort(dim=1, descending=True)  # (B, D)
    cumsum = mu.cumsum(dim=1)  # (B, D)
    j = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)  # (D,)
    # rho = the largest j with mu_j - (cumsum_j - eps) / j > 0; the condition
    # holds exactly on a prefix, so counting the true entries finds it.
    rho = (mu - (cumsum - eps) / j > 0).sum(dim=1).clamp_min(1)  # (B,)
    theta = (cumsum.gather(1, (rho - 1).unsqueeze(1)).squeeze(1) - eps) / rho  # (B,)
    projected = _soft_threshold(flat, theta.clamp_min(0.0))
    projected = torch.where(inside.unsqueeze(1), flat, projected)
    return projected.reshape(delta.shape)


def project_l1_ball_fixed_point(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """The l_1 projection by Michelot's fixed point (Michelot 1986; Condat 2016, "Fast projection onto the
    simplex and the l1 ball", section 3), exact, without a sort, on the rows outside the ball only.

    With a = |delta| and S_t = {i : a_i > theta_t}, iterate
        theta_{t+1} = (sum_{i in S_t} a_i - eps) / |S_t|,   theta_0 = (sum_i a_i - eps) / D.
    Every theta_t is a lower bound of the solution theta* and the sequence rises, so S_t shrinks; when
    |S_t| stops changing, S_t is the support of the projection and theta_t is Duchi's theta for rho = |S_t|.
    It cannot take more than D + 1 rounds; PGD's points (a ball point plus a step of mass alpha) take 3 to 6.
    Each round is four element-wise passes over the rows still being projected.
    """
    flat = _flat(delta)  # (B, D)
    magnitude = flat.abs()
    total = magnitude.sum(dim=1)  # (B,) ||delta||_1
    outside = total > eps
    rows = outside.nonzero().squeeze(1)  # host-side count: free on the CPU (the GPU takes the sort)
    if rows.numel() == 0:
        return delta.clone()
    if rows.numel() < flat.shape[0]:  # project only the rows outside the ball
        out = flat.clone()
        out[rows] = _soft_threshold(flat[rows], _l1_threshold(magnitude[rows], total[rows], eps))
        return out.reshape(delta.shape)
    return _soft_threshold(flat, _l1_threshold(magnitude, total, eps)).reshape(delta.shape)


def _l1_threshold(magnitude: torch.Tensor, total: torch.Tensor, eps: float) -> torch.Tensor:
    """theta (R,) of Michelot's fixed point for rows (R, D) of magnitudes whose sums ``total`` exceed eps."""
    theta = (total - eps) / magnitude.shape[1]  # > 0: every row is outside the ball
    count = torch.full_like(total, magnitude.shape[1] + 1, dtype=torch.long)  # no support yet
    for _ in range(magnitude.shape[1] + 1):  # the support shrinks at every round but the last
        support = magnitude > theta.unsqueeze(1)  # (R, D)
        new_count = support.sum(dim=1)
        if torch.equal(new_count, count):
            break
        count = new_count
        # max(): in exact arithmetic theta only rises; a float sum that rounds down must not let the
        # support grow back (then the loop would not be sure to end).
        theta = torch.maximum(theta, ((magnitude * support).sum(dim=1) - eps) / count.clamp_min(1))
    return theta


@dataclass(frozen=True, kw_only=True)
class ThreatModel:
    """An l_p ball of radius ``eps`` around the input, attacked with steps of size ``alpha``."""

    eps: float
    alpha: float
    norm_kind: ClassVar[Norm]
    label: ClassVar[str]           # how messages name the norm ("l_inf")
    max_eps: ClassVar[float | None] = None  # a larger radius cannot be in [0, 1] pixel units
    order: ClassVar[float]  # p of the norm, for torch.linalg.vector_norm

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise UserError(f"{self.norm_kind.value} radius eps={self.eps} must be positive")
        if not self.alpha > 0:
            raise UserError(f"{self.norm_kind.value} step size alpha={self.alpha} must be positive")

    def with_topk(self, k_min: int, k_max: int) -> ThreatModel:
        """The same threat model with the top-k range [k_min, k_max] of an l_1 step (MSD). Only the l_1
        step moves k coordinates; the l_inf and l_2 steps have no k and come back as they are."""
        return self

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """||delta||_p per example, shape (B,)."""
        return torch.linalg.vector_norm(_flat(delta), ord=self.order, dim=1)

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random delta inside the ball (signed), clipped so that x + delta is in [0, 1]."""
        return clip_to_box(x, self._sample_ball(x.shape, x.dtype, x.device, generator))

    def step(self, delta: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """One PGD step: Proj_{B_p(eps)}(delta + alpha V_p(g)), then into the [0, 1] box."""
        moved = delta + self.alpha * self.direction(grad, x + delta, generator)
        return clip_to_box(x, self.project(moved))

    def direction(self, grad: torch.Tensor, x_adv: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def step_disagreement(self, approx_grad: torch.Tensor, true_grad: torch.Tensor) -> torch.Tensor:
        """E_p per example (B,): how far the step from ``approx_grad`` differs from the true one (paper Fig. 4)."""
        raise NotImplementedError

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _sample_ball(self, shape: torch.Size, dtype: torch.dtype, device: torch.device,
                     generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError


def _radial_scale(batch: int, dim: int, dtype: torch.dtype, device: torch.device,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Radii r = U^(1/D), which makes a uniform direction uniform in the D-ball's volume."""
    u = torch.rand(batch, generator=generator, dtype=dtype, device=device)
    return u.pow(1.0 / dim)  # (B,)


@dataclass(frozen=True, kw_only=True)
class LinfThreat(ThreatModel):
    norm_kind: ClassVar[Norm] = Norm.LINF
    order: ClassVar[float] = float("inf")
    label: ClassVar[str] = "l_inf"
    max_eps: ClassVar[float | None] = 1.0  # every |delta_i| <= 1 in the box: more means 0-255 units

    def direction(self, grad, x_adv, generator=None):
        # sign(g) maximises <v, g> over the unit l_inf ball.
        return grad.sign()

    def step_disagreement(self, approx_grad, true_grad):
        # Share of coordinates whose step sign differs.
        return (_flat(approx_grad).sign() != _flat(true_grad).sign()).float().mean(dim=1)

    def project(self, delta):
        return project_linf_ball(delta, self.eps)

    def _sample_ball(self, shape, dtype, device, generator):
        u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
        return (2.0 * u - 1.0) * self.eps


@dataclass(frozen=True, kw_only=True)
class L2Threat(ThreatModel):
    norm_kind: ClassVar[Norm] = Norm.L2
    order: ClassVar[float] = 2.0
    label: ClassVar[str] = "l_2"

    def direction(self, grad, x_adv, generator=None):
        # g / ||g||_2 maximises <v, g> over the unit l_2 ball.
        norms = _flat(grad).norm(p=2, dim=1).clamp_min(_TINY)
        return grad / _per_example(norms, grad)

    def step_disagreement(self, approx_grad, true_grad):
        # 1 - cosine between the two steps' directions (0: same step, 2: opposite).
        return 1.0 - torch.nn.functional.cosine_similarity(_flat(approx_grad), _flat(true_grad), dim=1)

    def project(self, delta):
        return project_l2_ball(delta, self.eps)

    def _sample_ball(self, shape, dtype, device, generator):
        # A Gaussian direction is uniform on the sphere (Muller 1959).
        g = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        flat = _flat(g)
        radius = self.eps * _radial_scale(shape[0], flat.shape[1], dtype, device, generator)
        unit = flat / flat.norm(p=2, dim=1, keepdim=True).clamp_min(_TINY)
        return (unit * radius.unsqueeze(1)).reshape(shape)


@dataclass(frozen=True, kw_only=True)
class L1Threat(ThreatModel):
    """l_1 ball with the box-aware top-k step of MSD (Maini et al. 2020, section 3.2).

    The exact steepest l_1 direction moves one coordinate, which makes PGD
    very slow; MSD instead moves the k largest |g_i| (k drawn uniformly in
    [k_min, k_max] each step) by alpha / k each, with the sign of g, skipping
    coordinates that already sit on the [0, 1] boundary in the direction of g
    (they could not move, and would waste the step's mass).
    """

    norm_kind: ClassVar[Norm] = Norm.L1
    order: ClassVar[float] = 1.0
    label: ClassVar[str] = "l_1"
    k_min: int = 5
    k_max: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k_min <= self.k_max:
            raise UserError(f"l1 top-k range [{self.k_min}, {self.k_max}] must satisfy 1 <= k_min <= k_max")

    def with_topk(self, k_min: int, k_max: int) -> L1Threat:
        return replace(self, k_min=int(k_min), k_max=int(k_max))

    def _top_k_moves(self, grad: torch.Tensor, x_adv: torch.Tensor,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's sparse form: per row, the k_max coordinates of the top-k pick (B, k_max) and their moves
        (B, k_max): sign(g_i) / k on the first k movable ones, 0 elsewhere. Row sums of |moves| are 1 where k
        coordinates can move."""
        g = _flat(grad)  # (B, D)
        x = _flat(x_adv)
        # k stays a tensor on the device: reading it on the host would wait for the GPU at every step.
        # So take the top k_max and keep the first k of them (topk sorts them, largest first).
        k = torch.randint(self.k_min, self.k_max + 1, (1,), generator=generator,
                          device=generator.device if generator is not None else g.device).clamp_max(g.shape[1])
        # & and | on bools rather than one where(g > 0, ...): that where() measured 3x slower on the CPU.
        blocked = ((x <= 0.0) & (g < 0)) | ((x >= 1.0) & (g > 0))  # (B, D) cannot move along g
        score = g.abs().masked_fill_(blocked, -1.0)
        top_score, top = score.topk(min(self.k_max, g.shape[1]), dim=1)  # (B, k_max), largest first
        first_k = torch.arange(top.shape[1], device=g.device) < k  # (k_max,)
        movable = (top_score > 0) & first_k  # a blocked or zero-gradient pick does not move
        return top, g.gather(1, top).sign() * movable / k

    def direction(self, grad, x_adv, generator=None):
        top, moves = self._top_k_moves(grad, x_adv, generator)
        v = torch.zeros_like(_flat(grad))
        v.scatter_(1, top, moves)
        return v.reshape(grad.shape)  # ||v||_1 = 1 where k coordinates can move

    def step(self, delta, grad, x, generator=None):
        """The same step as ThreatModel.step, in sparse form: the direction touches k_max coordinates per row,
        so they are added to a copy of delta (the same floats as delta + alpha * v) instead of building,
        scaling and adding a dense v."""
        top, moves = self._top_k_moves(grad, x + delta, generator)
        moved = _flat(delta).clone()  # (B, D); delta may be a slot of a (B, M, ...) tensor, hence the copy
        moved.scatter_add_(1, top, self.alpha * moves)  # top's indices are distinct within a row
        return clip_to_box(x, self.project(moved).reshape(delta.shape))

    def step_disagreement(self, approx_grad, true_grad):
        # Share of the top-k coordinates (k = k_max) that the two steps do not share.
        k = min(self.k_max, _flat(true_grad).shape[1])
        top_a = _flat(approx_grad).abs().topk(k, dim=1).indices
        top_t = _flat(true_grad).abs().topk(k, dim=1).indices
        shared = (top_a.unsqueeze(2) == top_t.unsqueeze(1)).any(dim=2).float().sum(dim=1)  # (B,)
        return 1.0 - shared / k

    def project(self, delta):
        return project_l1_ball(delta, self.eps)

    def _sample_ball(self, shape, dtype, device, generator):
        # Normalised i.i.d. exponentials are uniform on the simplex; random
        # signs make the direction uniform on the l_1 sphere.
        flat_shape = (shape[0], int(torch.tensor(shape[1:]).prod()))
        e = -torch.rand(flat_shape, generator=generator, dtype=dtype, device=device).clamp_min(_TINY).log()
        signs = torch.randint(0, 2, flat_shape, generator=generator, device=device).to(dtype) * 2 - 1
        unit = e / e.sum(dim=1, keepdim=True) * signs
        radius = self.eps * _radial_scale(shape[0], flat_shape[1], dtype, device, generator)
        return (unit * radius.unsqueeze(1)).reshape(shape)


THREAT_CLASSES: dict[Norm, type[ThreatModel]] = {
    Norm.LINF: LinfThreat,
    Norm.L2: L2Threat,
    Norm.L1: L1Threat,
}


def radius_unit_problem(norm: Norm, eps: float) -> str | None:
    """Why ``eps`` cannot be a radius in [0, 1] pixel units for ``norm`` (None if it can)."""
    cls = THREAT_CLASSES[norm]
    if cls.max_eps is not None and eps > cls.max_eps:
        return (f"{cls.label} radius {eps} is above {cls.max_eps:g}, but radii are in [0, 1] pixel units "
                f"(for {eps:g}/255 write {eps / 255:.4f})")
    return None


def make_threat(norm: Norm | str, *, eps: float, alpha: float) -> ThreatModel:
    """Build the threat model of ``norm`` (``"linf"``, ``"l2"`` or ``"l1"``)."""
    try:
        kind = Norm(norm)
    except ValueError:
        raise UserError(f"unknown norm {norm!r}; use one of {', '.join(n.value for n in Norm)}") from None
    return THREAT_CLASSES[kind](eps=float(eps), alpha=float(alpha))
