"""Compare the best configs of several `matd tune` sweeps with the hand-picked config on the test images.

    python scripts/compare_searches.py --base reports/search-comparison/base.yaml \
        --sweep random+asha=runs/cmp-random --sweep tpe+asha=runs/cmp-tpe --sweep pbt=runs/cmp-pbt \
        --seeds 2 --suite field --examples 500 --output runs/cmp-confirm --report reports/search-comparison

Every config (the base, and each sweep's best: its searched values, and a PBT winner's per-epoch schedule)
is trained at the base's budget with run seeds 0..N-1 and evaluated with one suite on the test images: a
`matd reproduce` of a preset built here, so it resumes and skips finished work. Writes compare.json and
compare.md (one table with intervals, each search's paired difference to the base on the same test images
with its interval over images and seeds, and each search's verdict against the base) to --report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, type=Path, help="the hand-picked config (YAML)")
    parser.add_argument("--sweep", action="append", required=True, metavar="NAME=FOLDER",
                        help="a finished sweep folder and the name it gets in the table (repeat)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--suite", default="field")
    parser.add_argument("--suite-override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--examples", type=int, default=None, help="test images (default: the suite's)")
    parser.add_argument("--output", required=True, type=Path, help="the reproduction's folder")
    parser.add_argument("--report", required=True, type=Path, help="folder for compare.json and compare.md")
    args = parser.parse_args(argv)

    from mat_dist.plumbing.atomic import write_atomic
    from mat_dist.core.run_config import load_config
    from mat_dist.plumbing.errors import UserError
    from mat_dist.reproduce.pipeline import reproduce
    from mat_dist.reproduce.reproduction_report import collect
    from mat_dist.tune.confirm import compare_preset, confirm_table, seed_unions

    try:
        sweeps = {}
        for item in args.sweep:
            name, sep, folder = item.partition("=")
            if not sep:
                raise UserError(f"--sweep {item!r}: give NAME=FOLDER")
            sweeps[name] = Path(folder)
        preset = compare_preset(base_file=args.base, sweeps=sweeps, suite=args.suite, examples=args.examples)
        if args.suite_override:
            import dataclasses

            preset = dataclasses.replace(preset, suite_overrides=preset.suite_overrides + tuple(args.suite_override))
        result = reproduce(preset, output=args.output, tracking=False, seeds=args.seeds, log=print)
        configs = {o.label: load_config(o.run_dir / "config.yaml") for o in result.methods}
        data = {d.name: d for d in collect(preset, result.methods, configs)}
        names = tuple(m.name for m in preset.methods)
        table, verdict, _ = confirm_table(data, suite_name=args.suite, names=names, reference=names[0],
                                          unions=seed_unions(result.methods))
    except UserError as err:
        print(f"compare_searches: {err}", file=sys.stderr)
        return 2
    args.report.mkdir(parents=True, exist_ok=True)
    write_atomic(args.report / "compare.json", json.dumps(
        {"table": table.to_dict(), "verdict": verdict, "seeds": args.seeds, "suite": args.suite,
         "examples": args.examples, "sweeps": {k: str(v) for k, v in sweeps.items()},
         "overrides": {m.name: list(m.overrides) for m in preset.methods}, "report": str(result.report)}, indent=1))
    lines = [f"# {preset.description}", "", *table.markdown(), "", f"Verdict: {verdict}.", ""]
    write_atomic(args.report / "compare.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
