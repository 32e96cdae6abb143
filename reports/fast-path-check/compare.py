"""The fast path against fp32 on the main job's recipe: union accuracy of each (95% Wilson interval), their
paired difference on the same test images (95% interval, mat_dist.evaluate.paired), and seconds per
training epoch. Copies the small result files (not the weights) next to this script.

    python reports/fast-path-check/compare.py FP32_RUN FP32_EVAL FAST_RUN FAST_EVAL
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

from mat_dist.plumbing.atomic import read_jsonl, write_atomic
from mat_dist.evaluate.paired import aligned_unions, paired_difference
from mat_dist.core.fast_path import FastPath

HERE = Path(__file__).resolve().parent
RUN_FILES = ("config.yaml", "metrics.jsonl", "report.md")
EVAL_FILES = ("summary.json", "eval.json", "results.parquet", "report.md")


def _side(run: Path, evaluation: Path) -> dict:
    summary = json.loads((evaluation / "summary.json").read_text())
    rows = read_jsonl(run / "metrics.jsonl")
    times = [float(r["epoch_time_s"]) for r in rows]
    used = {f.describe() for f in map(FastPath.from_record, rows) if f is not None}
    return {
        "run": str(run), "evaluation": str(evaluation), "examples": summary["examples"],
        "clean": summary["clean"], "all_linf": summary["all_linf"], "all_l2": summary["all_l2"],
        "all_l1": summary["all_l1"], "all_attacks": summary["all_attacks"],
        "all_attacks_interval": summary["intervals"]["all_attacks"],
        "epoch_s": {"median": statistics.median(times), "min": min(times), "max": max(times), "epochs": len(times)},
        "fast_path_recorded": sorted(used) or ["(not recorded: fp32, trained before the fast_path/* keys)"],
        "best_epoch": rows[-1].get("best_epoch"),
    }


def _copy(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    fp32_run, fp32_eval, fast_run, fast_eval = map(Path, sys.argv[1:])
    sides = {"fp32": _side(fp32_run, fp32_eval), "fast": _side(fast_run, fast_eval)}
    fast_union, fp32_union = aligned_unions([fast_eval, fp32_eval])  # raises unless the same images
    diff = paired_difference([fast_union], [fp32_union])
    both = int((fast_union & fp32_union).sum())
    result = {
        "sides": sides,
        "paired_difference_fast_minus_fp32": {"difference": diff.difference, "interval": list(diff.interval),
                                              "images": diff.images, "holds_zero": not diff.separated},
        "images": {"robust_both": both, "fast_only": int((fast_union & ~fp32_union).sum()),
                   "fp32_only": int((~fast_union & fp32_union).sum()),
                   "neither": int((~fast_union & ~fp32_union).sum())},
    }
    for name, (run, evaluation) in {"fp32": (fp32_run, fp32_eval), "fast": (fast_run, fast_eval)}.items():
        _copy(run, HERE / name / "run", RUN_FILES)
        _copy(evaluation, HERE / name / "eval", EVAL_FILES)
    write_atomic(HERE / "compare.json", json.dumps(result, indent=1) + "\n")
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["| | fp32 | fast path (bf16 + channels_last) |", "|---|---:|---:|"]
    for key in ("clean", "all_linf", "all_l2", "all_l1"):
        lines.append(f"| {key} | {pct(sides['fp32'][key])} | {pct(sides['fast'][key])} |")
    lo_hi = {k: ", ".join(pct(v) for v in s["all_attacks_interval"]) for k, s in sides.items()}
    lines.append(f"| **all_attacks** (union) | {pct(sides['fp32']['all_attacks'])} [{lo_hi['fp32']}] | "
                 f"{pct(sides['fast']['all_attacks'])} [{lo_hi['fast']}] |")
    lines.append(f"| union, fast - fp32 (paired, 95%) | | {diff.text()} points |")
    print("\n".join(lines))
    print(json.dumps(result["images"]), json.dumps({k: s["epoch_s"] for k, s in sides.items()}))


if __name__ == "__main__":
    main()
