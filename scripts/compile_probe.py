"""Why ``train.compile`` is slower than eager on the CPU: graph breaks, recompiles, and the cost of each pass
of MAT's training step, eager against compiled, interleaved in one process.

    python scripts/compile_probe.py [--rounds 7] [--threads 1] [--output prof/compile.json]

The passes, on MAT's bench batch (MSD CNN, 64 rows x M=3, 28x28; mat_dist.bench.method_costs):

- ``forward``: the network's forward alone, no gradient (the per-epoch check's kind of call);
- ``forward_backward``: forward, loss, backward into the weights (the outer step);
- ``attack_pass``: forward on inputs that need a gradient, then ``torch.autograd.grad`` of the loss with respect
  to the inputs only (one of the attack's K steps; eager autograd computes no weight gradient here);
- ``attack_pass_frozen``: the same through a module that reads the weights detached (``FrozenWeights``), so
  that the compiled backward has no weight gradient to compute either;
- ``mat_step``: the whole training step (K=10 attack passes, threat models, outer step, Adam).

Dynamo's view (``torch._dynamo.explain``: graphs, graph breaks and their reasons) and the recompiles and graph
breaks counted over a few steps (the same counters TORCH_LOGS=recompiles,graph_breaks prints) come first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from mat_dist.bench.method_costs import SWITCHES, BenchSettings, _Case
from mat_dist.core.methods import per_member_ce


class FrozenWeights(nn.Module):
    """``net``'s forward with its parameters detached: a gradient can flow to the input only."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {name: p.detach() for name, p in self.net.named_parameters()}
        return torch.func.functional_call(self.net, params, (x,))


def _interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", type=Path, default=Path("prof/compile.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from torch._dynamo.utils import counters

    s = BenchSettings()
    eager_case = _Case("mat", s, SWITCHES["baseline"])
    net, x, y = eager_case.net, eager_case.x, eager_case.y
    out: dict = {"threads": args.threads, "torch": torch.__version__, "load_average_start": os.getloadavg()}

    explained = torch._dynamo.explain(net)(x)
    out["explain"] = {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
                      "break_reasons": [str(b.reason) for b in explained.break_reasons],
                      "ops": explained.op_count}
    torch._dynamo.reset()

    # The compiled training step as train.compile builds it (mat_dist.core.fast_path), a few steps: recompiles and
    # graph breaks as dynamo counts them.
    counters.clear()
    compiled_case = _Case("mat", s, SWITCHES["compile"])
    start = time.perf_counter()
    compiled_case.step()
    out["first_step_s"] = time.perf_counter() - start
    for _ in range(3):
        compiled_case.step()
    out["counters"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "graph_break", "recompiles")}
    out["frames"] = dict(counters["frames"])

    compiled = torch.compile(net)
    frozen_eager = FrozenWeights(net)
    frozen_compiled = torch.compile(FrozenWeights(net))

    def forward(module):
        def fn():
            with torch.no_grad():
                module(x)
        return fn

    def forward_backward(module):
        def fn():
            net.zero_grad(set_to_none=True)
            per_member_ce(module(x), y).mean(0).sum().backward()
        return fn

    def attack_pass(module):
        def fn():
            xa = x.detach().requires_grad_(True)
            torch.autograd.grad(per_member_ce(module(xa), y).sum(), xa)
        return fn

    fns = {
        "forward/eager": forward(net), "forward/compiled": forward(compiled),
        "forward_backward/eager": forward_backward(net), "forward_backward/compiled": forward_backward(compiled),
        "attack_pass/eager": attack_pass(net), "attack_pass/compiled": attack_pass(compiled),
        "attack_pass_frozen/eager": attack_pass(frozen_eager),
        "attack_pass_frozen/compiled": attack_pass(frozen_compiled),
        "mat_step/eager": eager_case.step, "mat_step/compiled": compiled_case.step,
    }
    for fn in fns.values():  # compile everything before timing
        fn()
    out["timings"] = _interleaved(fns, args.rounds)
    out["ratios"] = {f"{name}/compiled_over_eager": out["timings"][f"{name}/compiled"]["median_s"]
                     / out["timings"][f"{name}/eager"]["median_s"]
                     for name in ("forward", "forward_backward", "attack_pass", "attack_pass_frozen", "mat_step")}
    out["ratios"]["attack_pass/compiled_over_compiled_frozen"] = (
        out["timings"]["attack_pass/compiled"]["median_s"] / out["timings"]["attack_pass_frozen/compiled"]["median_s"])
    out["load_average_end"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({k: out[k] for k in ("explain", "counters", "frames", "first_step_s", "ratios")}, indent=1,
                     default=str))


if __name__ == "__main__":
    main()
