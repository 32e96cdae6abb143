"""Score another proxy against a sweep's finished fidelity step: does it rank the re-trained trials as their
full-budget training does?

    python scripts/score_proxy.py --sweep runs/cmp-random-asha --output runs/cmp-old-proxy \
        --set train.epochs=4 --set data.limit_train=1500 --set eval.attack=pgd --set eval.steps=20 \
        --set eval.select=last

The fidelity step (`matd tune --fidelity K`) re-trained some trials at the full budget; those runs are the
expensive half of a fidelity measurement. Here every trial of fidelity.csv is trained once more on its own
proxy config (the sweep trial's config.yaml: its searched values on the sweep's proxy) with the --set
overrides, in this process, and the proxy objective (the last epoch's validation union, 0 under the sweep's
min_clean_acc) is ranked against the full-budget objective fidelity.csv holds: Spearman's rho (scipy).
So several proxies can be compared on the same full-budget runs. Writes proxy.csv and proxy.json to
--output; finished trainings are skipped on a re-run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", required=True, type=Path, help="a sweep folder with a finished fidelity step")
    parser.add_argument("--output", required=True, type=Path, help="folder for the proxy runs, proxy.csv, .json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a config override that makes the proxy (repeat)")
    args = parser.parse_args(argv)

    from mat_dist.plumbing.atomic import write_atomic
    from mat_dist.core.run_config import apply_run_overrides, config_from_dict, read_yaml
    from mat_dist.plumbing.errors import UserError
    from mat_dist.tune.fidelity import FIDELITY_TABLE, rank_correlation
    from mat_dist.tune.objective import objective_metrics, trial_folder
    from mat_dist.tune.sweep import SWEEP_FILE

    try:
        table = args.sweep / FIDELITY_TABLE
        if not table.is_file():
            raise UserError(f"{args.sweep} has no {FIDELITY_TABLE}: run `matd tune --output {args.sweep} --resume "
                            f"--fidelity K` first")
        full_rows = [r for r in csv.DictReader(io.StringIO(table.read_text())) if r["complete"] == "True"]
        saved = json.loads((args.sweep / SWEEP_FILE).read_text())
        min_clean = (saved["space"].get("objective") or {}).get("min_clean_acc")
        rows = []
        for r in full_rows:
            trial = r["trial_id"]
            raw = apply_run_overrides(read_yaml(trial_folder(args.sweep, trial) / "config.yaml"),
                                  [*args.overrides, "tracking.enabled=false", f"name=proxy-{trial}"])
            cfg = config_from_dict(raw)
            last = _train_once(cfg, args.output / trial)
            proxy = objective_metrics(last, min_clean)["objective"]
            rows.append({"trial_id": trial, "proxy_epochs": int(last["epoch"]), "proxy_objective": proxy,
                         "proxy_clean": float(last["val/clean_acc"]), "proxy_passes": float(last["train/passes"]),
                         **{f"proxy_{n}": float(last[f"val/robust_{n}"]) for n in ("l1", "l2", "linf")},
                         "full_objective": float(r["full_objective"])})
    except UserError as err:
        print(f"score_proxy: {err}", file=sys.stderr)
        return 2
    rho, p = rank_correlation([r["proxy_objective"] for r in rows], [r["full_objective"] for r in rows])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(args.output / "proxy.csv", out.getvalue())
    write_atomic(args.output / "proxy.json", json.dumps({"sweep": str(args.sweep), "overrides": args.overrides,
                                                          "spearman": rho, "p_value": p, "n": len(rows)}, indent=1))
    print(out.getvalue())
    print(f"Spearman rho of this proxy against the full budget: {rho:.2f} (p {p:.2f}, n {len(rows)})")
    return 0


def _train_once(cfg, folder: Path) -> dict:
    """Train ``cfg`` in this process into ``folder`` unless a finished run is there; its last metrics line."""
    from mat_dist.plumbing.atomic import read_jsonl
    from mat_dist.training import train
    from mat_dist.core.run_folder import RunFolder

    run = RunFolder(folder)
    if not run.model.is_file():
        train(cfg, folder, None, resume=run.config.is_file())
    return read_jsonl(run.metrics)[-1]


if __name__ == "__main__":
    sys.exit(main())
