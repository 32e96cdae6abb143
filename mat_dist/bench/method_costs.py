"""Benchmarks of training cost: every method side by side, against the floor, in one run.

Timings are medians over interleaved repeats (method A, B, C, A, B, C, ...),
after warm-up, so that drifts of the machine (other processes, turbo, thermal
state) hit every method alike. Ratios compare two things measured in the same
run. Nothing here asserts on time: the tests check that it runs and that its
pass counts equal the paper's Table 6.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from mat_dist.core.run_config import Precision, TrainConfig
from mat_dist.core.fast_path import prepare_model, resolve_fast_path
from mat_dist.core.methods import METHODS, OuterLoss, adversarial_loss, per_member_ce
from mat_dist.core.models import ModelKind, ModelSpec, build_model
from mat_dist.core.threats import Norm, ThreatModel, make_threat

BENCH_METHODS = ("standard", "at", "ensemble_at", "mimo_at", "mat", "msd", "mat_msd", "avg", "max")
# SAT and E-AT are not timed apart: their batch is AT's in the norm drawn for it, so over the draws they cost the
# mean of at, at_l2 and at_l1 weighted by how often each norm is drawn (uniform for SAT: mat_over_at_norm_mean).
# `at` attacks in l_inf (a sign step); AT in the other norms pays the same threat-model work as MAT's
# sub-models (l_2 norms; l_1 top-k and the projection's sort). Timed beside `at` whenever it is.
AT_OTHER_NORMS = ("at_l2", "at_l1")
# Radii and step sizes of the MNIST-5k config: the cost does not depend on them
# except through the l_1 projection's sort, which runs at any radius.
THREAT_TABLE = {Norm.L1: (5.0, 1.0), Norm.L2: (1.0, 0.25), Norm.LINF: (0.1, 0.025)}
NORM_ORDER = (Norm.L1, Norm.L2, Norm.LINF)
# The fast path's switches, each alone (mat_dist.core.fast_path); "baseline" is every switch off (fp32), and
# "default" is what train.* defaults to on this machine (auto: bf16 and channels_last where the device
# computes in bf16 natively, else the baseline again): default / baseline is ``fast_path_over_fp32``.
_FP32 = TrainConfig(precision=Precision.FP32, channels_last=False)
SWITCHES = {
    "baseline": _FP32,
    "bf16": replace(_FP32, precision=Precision.BF16),
    "channels_last": replace(_FP32, channels_last=True),
    "compile": replace(_FP32, compile=True),
    "default": TrainConfig(),
}


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    backbone: str = "mnist_cnn"
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    batch_size: int = 64
    num_members: int = 3
    steps: int = 10                                   # K
    repeats: int = 7
    warmup: int = 2
    device: str = "cpu"


def table6_passes(method: str, k: int, m: int, norms: int = 3) -> tuple[int, int]:
    """Forward / backward passes per batch of the paper's Table 6 (MSD: one forward per candidate norm), and of
    the field's one-network methods (SAT and E-AT: one norm per batch; AVG and MAX: every norm per batch)."""
    return {
        "standard": (1, 1), "at": (k + 1, k + 1), "mat": (k + 1, k + 1), "mat_same_norm": (k + 1, k + 1),
        "ensemble_at": (m * (k + 1), m * (k + 1)), "mimo_at": (k + 1, m * k + 1),
        "msd": ((1 + norms) * k + 1, k + 1), "mat_msd": ((1 + norms) * k + 1, k + 1),
        "sat": (k + 1, k + 1), "e_at": (k + 1, k + 1),
        "avg": (norms * (k + 1), norms * (k + 1)), "max": (norms * (k + 1), norms * (k + 1)),
    }[method]


def _threat(norm: Norm) -> ThreatModel:
    eps, alpha = THREAT_TABLE[norm]
    return make_threat(norm, eps=eps, alpha=alpha)


def _method_and_norm(case: str) -> tuple[str, Norm]:
    """A bench case is a method name, or ``at_<norm>`` for AT in that norm (plain ``at``: l_inf)."""
    if case.startswith("at_"):
        return "at", Norm(case[3:])
    return case, Norm.LINF


def _members(case: str, m: int) -> int:
    return 1 if METHODS[_method_and_norm(case)[0]].single_model else m


def _threats(case: str, m: int) -> list[ThreatModel]:
    method, norm = _method_and_norm(case)
    spec = METHODS[method]
    if spec.msd or spec.every_norm is not None:
        return [_threat(n) for n in NORM_ORDER]
    if spec.single_model:
        return [_threat(norm)]
    return [_threat(NORM_ORDER[i % 3]) for i in range(m)]


class _Case:
    """One method's model, optimiser and batch, ready to time one training step."""

    def __init__(self, case: str, s: BenchSettings, fast: TrainConfig = SWITCHES["baseline"]) -> None:
        self.method = METHODS[_method_and_norm(case)[0]]
        self.m = _members(case, s.num_members)
        c, h, w = s.image_shape
        self.spec = ModelSpec(backbone=s.backbone, num_members=self.m, in_channels=c, image_size=(h, w),
                              num_classes=10, mean=(0.5,) * c, std=(0.25,) * c, kind=self.method.model_kind)
        torch.manual_seed(0)
        self.net = build_model(self.spec).to(s.device)
        self.fast_net = prepare_model(self.net, fast, torch.device(s.device))  # what the training step calls
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(1)
        self.x = torch.rand(s.batch_size, self.m, c, h, w, generator=gen).to(s.device)
        self.y = torch.randint(0, 10, (s.batch_size, self.m), generator=gen).to(s.device)
        self.threats = _threats(case, s.num_members)
        self.steps = s.steps
        self.weights = torch.ones(self.m, device=s.device)
        self.rng = torch.Generator(device=s.device).manual_seed(2)

    def step(self) -> None:
        result = adversarial_loss(self.method, self.fast_net, self.x, self.y, threats=self.threats, steps=self.steps,
                                  random_start=True, outer=OuterLoss.SUM, weights=self.weights, generator=self.rng)
        self.opt.zero_grad(set_to_none=True)
        result.loss.backward()
        self.opt.step()

    def forward_backward(self) -> None:
        """One forward and backward pass of this model on this batch: the unit of the floor."""
        self.opt.zero_grad(set_to_none=True)
        per_member_ce(self.net(self.x), self.y).mean(0).sum().backward()

    def count_passes(self) -> tuple[int, int]:
        counts = [0, 0]
        networks = list(self.net.members) if self.spec.kind is ModelKind.SEPARATE else [self.net.backbone]
        hooks = []
        for module in networks:
            hooks.append(module.register_forward_hook(lambda *_: counts.__setitem__(0, counts[0] + 1)))
            hooks.append(module.register_full_backward_hook(lambda *_: counts.__setitem__(1, counts[1] + 1)))
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the outer step's inputs need no gradient; the hook still counts
            self.step()
        for h in hooks:
            h.remove()
        return counts[0], counts[1]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], None]], *, repeats: int, warmup: int,
                     device: str) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin ``repeats`` times after ``warmup`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def summary_stats(samples: list[float]) -> dict[str, float]:
    median = statistics.median(samples)
    return {"median_s": median, "min_s": min(samples), "max_s": max(samples),
            "spread": (max(samples) - min(samples)) / median, "n": len(samples)}


def machine_info(device: str) -> dict[str, Any]:
    import os
    info = {
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(), "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def bench_methods(s: BenchSettings, methods: tuple[str, ...] = BENCH_METHODS) -> dict[str, Any]:
    """Time per batch of each method, the floor, pass counts beside Table 6, and the ratios."""
    methods = tuple(methods) + (AT_OTHER_NORMS if "at" in methods else ())
    cases = {name: _Case(name, s) for name in methods}
    passes = {name: case.count_passes() for name, case in cases.items()}
    fns: dict[str, Callable[[], None]] = {name: case.step for name, case in cases.items()}
    mimo_unit = "mat" if "mat" in cases else None
    if mimo_unit:
        fns["fwd_bwd_mimo"] = cases[mimo_unit].forward_backward
    if "at" in cases:  # AT's own unit: what separates mat_over_at from mat_over_floor is the MIMO model's cost
        fns["fwd_bwd_single"] = cases["at"].forward_backward
    times = time_interleaved(fns, repeats=s.repeats, warmup=s.warmup, device=s.device)
    result: dict[str, Any] = {"settings": s.__dict__, "machine": machine_info(s.device), "methods": {}}
    for name in methods:
        fwd, bwd = passes[name]
        expected = table6_passes(_method_and_norm(name)[0], s.steps, _members(name, s.num_members))
        result["methods"][name] = {**summary_stats(times[name]), "forward_passes": fwd, "backward_passes": bwd,
                                   "table6_forward": expected[0], "table6_backward": expected[1]}
    med = {name: statistics.median(t) for name, t in times.items()}
    ratios: dict[str, float] = {}
    if mimo_unit:
        floor = (s.steps + 1) * med["fwd_bwd_mimo"]
        result["floor"] = {"fwd_bwd_s": med["fwd_bwd_mimo"], "floor_s": floor,
                           "definition": "(K+1) x one forward+backward of the M-member MIMO model on the batch"}
        ratios["mat_over_floor"] = med["mat"] / floor
        if "fwd_bwd_single" in med:
            result["floor"]["fwd_bwd_single_s"] = med["fwd_bwd_single"]
            ratios["mimo_over_single_fwd_bwd"] = med["fwd_bwd_mimo"] / med["fwd_bwd_single"]
            ratios["at_over_its_floor"] = med["at"] / ((s.steps + 1) * med["fwd_bwd_single"])
        for other in ("at", *AT_OTHER_NORMS, "msd", "mimo_at", "ensemble_at", "mat_msd", "avg", "max"):
            if other in med:
                ratios[f"mat_over_{other}"] = med["mat"] / med[other]
        if all(a in med for a in ("at", *AT_OTHER_NORMS)):
            # MAT trains one sub-model per norm: against AT at the same mix of norms (the mean of the three)
            ratios["mat_over_at_norm_mean"] = med["mat"] / statistics.mean(med[a] for a in ("at", *AT_OTHER_NORMS))
    if all(a in med for a in ("at", *AT_OTHER_NORMS)):
        # AVG and MAX attack every batch in all three norms: against one AT batch in each (about 1, if the
        # every-norm step adds nothing but its N attacks; the sum, not the mean, of AT's three)
        at_sum = sum(med[a] for a in ("at", *AT_OTHER_NORMS))
        for every in ("avg", "max"):
            if every in med:
                ratios[f"{every}_over_at_norm_sum"] = med[every] / at_sum
    result["ratios"] = ratios
    return result


def _one_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def bench_switches(s: BenchSettings, switches: tuple[str, ...] = tuple(SWITCHES)) -> dict[str, Any]:
    """Time per batch of MAT's training step with each fast-path switch alone, interleaved, beside the baseline.

    Every case takes one untimed step first (where torch.compile compiles), then
    ``s.warmup`` untimed rounds. A switch whose compile fails on this machine
    (no C compiler, an unsupported op) is reported as {"error": one line}.
    """
    cases: dict[str, _Case] = {}
    errors: dict[str, str] = {}
    for name in switches:
        case = _Case("mat", s, SWITCHES[name])
        try:
            case.step()
        except Exception as err:  # noqa: BLE001 - compile's failures have no common type
            if not SWITCHES[name].compile:
                raise
            errors[name] = _one_line(err)
            continue
        cases[name] = case
    times = time_interleaved({name: case.step for name, case in cases.items()}, repeats=s.repeats,
                             warmup=s.warmup, device=s.device)
    baseline = statistics.median(times["baseline"]) if "baseline" in times else None
    rows: dict[str, Any] = {}
    for name in switches:
        if name in errors:
            rows[name] = {"error": errors[name]}
            continue
        row = summary_stats(times[name])
        row["ratio_to_baseline"] = row["median_s"] / baseline if baseline else None
        rows[name] = row
    result = {"settings": s.__dict__, "machine": machine_info(s.device), "switches": rows}
    if "default" in rows:  # what auto chose here, and what it buys over fp32
        used = resolve_fast_path(SWITCHES["default"], torch.device(s.device))
        rows["default"]["fast_path"] = used.describe()
        result["ratios"] = {"fast_path_over_fp32": rows["default"].get("ratio_to_baseline")}
    return result
