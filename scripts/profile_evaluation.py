"""Where the field evaluation's time goes: seconds per shard, per attack and per job group, and what 2 workers
would do with those shards (busy and idle time, in the runner's order and longest first).

    python scripts/profile_evaluation.py --run RUN [--suite field] [-n 100] [--shard-size 50]
        [--output prof/eval-profile.json] [SUITE_KEY=VALUE ...]

Every shard of the plan (``mat_dist.evaluate``: the suite's attacks, then the transfer and curve jobs) runs in
this process, one after another, with the thread count a Ray worker gets (the suite's resources.num_cpus), and
its wall time is recorded. The 2-worker schedules are computed from those times (a worker takes the next
shard of the queue when it is free, as Ray hands out tasks): the runner's order, and the longest shards first.
A model, not a measurement of Ray: Ray's own start-up and scheduling are not in it.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from mat_dist.evaluate.evaluator import load_test_images
from mat_dist.evaluate.model_source import parse_source as parse_model
from mat_dist.evaluate.shards import plan_shards, run_shard
from mat_dist.evaluate.suite import load_suite, plan_jobs


def schedule(durations: list[float], workers: int) -> dict[str, float]:
    """Greedy list scheduling of ``durations`` (in queue order) on ``workers``: makespan, busy and idle time."""
    free = [(0.0, w) for w in range(workers)]
    heapq.heapify(free)
    for d in durations:
        at, w = heapq.heappop(free)
        heapq.heappush(free, (at + d, w))
    makespan = max(at for at, _ in free)
    busy = sum(durations)
    return {"makespan_s": makespan, "busy_s": busy, "idle_s": workers * makespan - busy,
            "idle_share": 1 - busy / (workers * makespan) if makespan else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--suite", default="field")
    ap.add_argument("-n", "--examples", type=int, default=100)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--output", type=Path, default=Path("prof/eval-profile.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    suite = load_suite(args.suite, [f"shard_size={args.shard_size}", *args.overrides])
    source = parse_model(str(args.run))
    net = source.load()
    images, labels = load_test_images("mnist5k", None, args.examples, net.spec)
    jobs = plan_jobs(suite, num_members=net.spec.num_members, examples=args.examples)
    shards = plan_shards(jobs, suite.shard_size)
    threads = max(1, int(suite.resources.num_cpus))
    rows = []
    with tempfile.TemporaryDirectory(prefix="eval-profile-") as tmp:
        for shard in shards:
            start = time.perf_counter()
            run_shard(shard, model=source, images=images, labels=labels, out_dir=tmp, base_seed=suite.seed,
                      threads=threads)
            rows.append({"shard": shard.name, "job": shard.job.name, "group": shard.job.group,
                         "attack": shard.job.spec.name, "examples": shard.end - shard.start,
                         "seconds": time.perf_counter() - start})
            print(f"{rows[-1]['seconds']:8.1f} s  {shard.name}", flush=True)
    total = sum(r["seconds"] for r in rows)
    by: dict[str, dict[str, float]] = {"attack": defaultdict(float), "group": defaultdict(float)}
    for r in rows:
        key = r["attack"] if r["group"] == "suite" else r["group"]
        by["attack"][key] += r["seconds"]
        by["group"][r["group"]] += r["seconds"]
    durations = [r["seconds"] for r in rows]
    result = {
        "run": str(args.run), "suite": args.suite, "examples": args.examples, "shard_size": args.shard_size,
        "overrides": args.overrides, "threads_per_shard": threads, "shards": len(rows), "load_average": os.getloadavg(),
        "total_s": total,
        "share_by_attack": {k: v / total for k, v in sorted(by["attack"].items(), key=lambda kv: -kv[1])},
        "share_by_group": {k: v / total for k, v in by["group"].items()},
        "two_workers": {"runner_order": schedule(durations, 2),
                        "longest_first": schedule(sorted(durations, reverse=True), 2)},
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
