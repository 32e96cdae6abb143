"""``matd tune ... --confirm N``: the final word is the test set, once.

The sweep's best config and the base config, both at the full budget (the
base config's own epochs and training data: the fidelity step's full-budget
base), are each trained with run seeds 0..N-1 and evaluated with one named
suite (default ``field``) on the test images, at the base config's eval
radii. It is a ``matd reproduce`` of a two-method preset built here
(``base``: the full-budget base; ``tuned``: the same with the best trial's
searched values), so it resumes, skips finished work and writes that
command's report too. The verdict reads the all_attacks intervals (each the
union of the seeds' 95% Wilson intervals): a difference counts only when they
do not overlap.

    confirm/                 the reproduction's folder (runs/, evals/, report.md, base_config.yaml)
    confirm.json             the table (base and tuned: mean ± sd over seeds [interval]) and the verdict
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from mat_dist.tune.objective import trial_folder

CONFIRM_DIR = "confirm"
CONFIRM_FILE = "confirm.json"
METRICS = ("clean", "all_linf", "all_l2", "all_l1", "all_attacks")


@dataclass(frozen=True)
class ConfirmResult:
    table: dict[str, Any]       # Table.to_dict(): columns and rows
    verdict: str
    beats_base: bool            # tuned's all_attacks interval lies wholly above base's
    report: Path                # the reproduction's report.md


def _base_key(key: str) -> str:
    return ".".join(p for p in key.split(".") if not p.isdigit())


def tuned_overrides(output: Path, trial_id: str, keys: list[str]) -> tuple[str, ...]:
    """``key=value`` overrides that turn the full-budget base into the best trial's config: each searched key's
    whole value (a list for ``attack.eps.0``), read back from the trial's config.yaml."""
    from mat_dist.config import read_yaml
    from mat_dist.tune.space import get_key

    raw = read_yaml(trial_folder(output, trial_id) / "config.yaml")
    whole = dict.fromkeys(_base_key(k) for k in keys)
    return tuple(f"{k}={_yaml_value(get_key(raw, k))}" for k in whole)


def _yaml_value(value: Any) -> str:
    """A value as the override parser (YAML) reads it back: 1e-07 as 1.0e-07, which YAML 1.1 takes for a number."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()  # a scalar's document-end marker


def confirm_preset(*, output: Path, space: Any, best: dict[str, Any], full_raw: dict, suite: str | Mapping[str, Any],
                   examples: int | None):
    """The two-method preset: base and tuned at the full budget, the suite at the base's eval radii."""
    from mat_dist.config import config_from_dict, config_to_yaml
    from mat_dist.reproduce.presets import MethodSpec, Preset
    from mat_dist.atomic import write_atomic

    cfg = config_from_dict(full_raw)
    folder = output / CONFIRM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    base_file = folder / "base_config.yaml"
    write_atomic(base_file, f"# The full-budget base of the sweep in {output}: what --confirm trains.\n"
                 + config_to_yaml(cfg))
    method = cfg.method.name
    radii = dict(cfg.eval.eps)
    stem = Path(space.source).stem
    return Preset(
        name=f"confirm-{stem}",
        description=f"the best config of the sweep in {output} ({best['trial_id']}) beside its base config "
                    f"{cfg.name}, both at the full budget",
        base_config=str(base_file), base_overrides=(),
        methods=(MethodSpec(name="base", method=method, overrides=()),
                 MethodSpec(name="tuned", method=method,
                            overrides=tuned_overrides(output, best["trial_id"], space.keys))),
        suite=suite if isinstance(suite, str) else dict(suite),
        suite_overrides=tuple(f"eps.{n.value}={e}" for n, e in radii.items()),
        examples=examples, workers=0, radii=radii,
        paper_dataset="cifar10" if cfg.data.name.value == "cifar10" else "mnist",
        data_note=f"{cfg.data.name.value}, {cfg.model.backbone}, {cfg.train.epochs} epochs: the sweep's full budget",
        budget="two trainings per seed at the full budget, and their evaluations")


def run_confirm(*, output: Path, space: Any, best: dict[str, Any], full_raw: dict, seeds: int,
                suite: str | Mapping[str, Any], examples: int | None, cluster: str | None, tracking_uri: str | None,
                log: Callable[[str], None]) -> ConfirmResult:
    from mat_dist.config import load_config
    from mat_dist.reproduce.pipeline import reproduce
    from mat_dist.reproduce.report import collect
    from mat_dist.atomic import write_atomic

    preset = confirm_preset(output=output, space=space, best=best, full_raw=full_raw, suite=suite,
                            examples=examples)
    log(f"confirm: base and tuned configs, {seeds} seed(s) each, at the full budget -> {output / CONFIRM_DIR}")
    result = reproduce(preset, output=output / CONFIRM_DIR, cluster=cluster,
                       tracking=bool(full_raw.get("tracking", {}).get("enabled", True)), tracking_uri=tracking_uri,
                       seeds=seeds, log=log)
    configs = {o.label: load_config(o.run_dir / "config.yaml") for o in result.methods}
    data = {d.name: d for d in collect(preset, result.methods, configs)}
    table, verdict, beats = confirm_table(data, suite_name=preset.suite if isinstance(preset.suite, str)
                                          else preset.suite.get("name", "inline"))
    write_atomic(output / CONFIRM_FILE, json.dumps({"table": table.to_dict(), "note": table.note, "verdict": verdict,
                                                    "beats_base": beats, "seeds": seeds, "best_trial": best["trial_id"],
                                                    "report": str(result.report)}, indent=1))
    return ConfirmResult(table=table.to_dict(), verdict=verdict, beats_base=beats, report=result.report)


def confirm_table(data: Mapping[str, Any], *, suite_name: str):
    """One table, base and tuned (mean ± sd over seeds [95% interval], %), the training cost, and the verdict."""
    from mat_dist.reproduce.report import Table, cell, separated

    table = Table(title="confirmation on the test images",
                  columns=["config", "seeds", *METRICS, "training passes", "training min"],
                  note=f"Suite `{suite_name}` on the test images; cells: mean ± standard deviation over the seeds "
                       f"(one seed: the value) and the union of the seeds' 95% Wilson intervals, in %.")
    for name in ("base", "tuned"):
        d = data[name]
        last = d.metrics[-1] if d.metrics else {}
        minutes = sum(float(r.get("epoch_time_s", 0.0)) for r in d.metrics) / 60
        table.rows.append([name, str(len(d.seed_summaries)), *(cell(d, m) for m in METRICS),
                           f"{float(last.get('train/passes', float('nan'))):.4g}", f"{minutes:.1f}"])
    base, tuned = data["base"], data["tuned"]
    b, t = base.interval("all_attacks"), tuned.interval("all_attacks")
    mb, mt = base.mean("all_attacks"), tuned.mean("all_attacks")
    beats = separated(b, t) and (mt or 0.0) > (mb or 0.0)
    if beats:
        verdict = f"the tuned config beats the base config on all_attacks by more than the intervals " \
                  f"({100 * (mt or 0):.1f}% against {100 * (mb or 0):.1f}%)"
    elif separated(b, t):
        verdict = f"the base config beats the tuned config on all_attacks by more than the intervals " \
                  f"({100 * (mb or 0):.1f}% against {100 * (mt or 0):.1f}%)"
    else:
        verdict = f"a tie on all_attacks: the intervals overlap ({100 * (mt or 0):.1f}% tuned, " \
                  f"{100 * (mb or 0):.1f}% base)"
    return table, verdict, beats
