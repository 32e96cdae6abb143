"""``matd tune ... --confirm N``: the final word is the test set, once.

The sweep's best config and the base config, both at the full budget (the
base config's own epochs and training data: the fidelity step's full-budget
base), are each trained with run seeds 0..N-1 and evaluated with one named
suite (default ``field``) on the test images, at the base config's eval
radii. It is a ``matd reproduce`` of a two-method preset built here
(``base``: the full-budget base; ``tuned``: the same with the best trial's
searched values), so it resumes, skips finished work and writes that
command's report too. The verdict reads the paired difference of all_attacks
(tuned minus base on the same test images, mean over the seeds) and its 95%
interval over images and seeds: a difference counts only when that
interval excludes 0 (mat_dist.evaluate.paired).

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
    beats_base: bool            # tuned's paired all_attacks difference to base has an interval above 0
    report: Path                # the reproduction's report.md


def tuned_overrides(output: Path, trial_id: str, keys: list[str]) -> tuple[str, ...]:
    """``key=value`` overrides that turn the full-budget base into the best trial's config: each searched key's
    whole value (a list for ``attack.eps.0``), read back from the trial's config.yaml, and the trial's
    per-epoch schedule when it has one (a PBT trial's: phases at the same epochs)."""
    from mat_dist.core.run_config import read_yaml
    from mat_dist.tune.space import get_key, list_key

    raw = read_yaml(trial_folder(output, trial_id) / "config.yaml")
    whole = dict.fromkeys(list_key(k) for k in keys)
    schedule = (f"schedule={_yaml_value(raw['schedule'])}",) if raw.get("schedule") else ()
    return tuple(f"{k}={_yaml_value(get_key(raw, k))}" for k in whole) + schedule


def _yaml_value(value: Any) -> str:
    """A value as the override parser (YAML) reads it back: 1e-07 as 1.0e-07, which YAML 1.1 takes for a number."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()  # a scalar's document-end marker


def confirm_preset(*, output: Path, space: Any, best: dict[str, Any], full_raw: dict, suite: str | Mapping[str, Any],
                   examples: int | None):
    """The two-method preset: base and tuned at the full budget, the suite at the base's eval radii."""
    from mat_dist.core.run_config import config_from_dict, config_to_yaml
    from mat_dist.reproduce.presets import MethodSpec, Preset
    from mat_dist.plumbing.atomic import write_atomic

    cfg = config_from_dict(full_raw)
    folder = output / CONFIRM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    base_file = folder / "base_config.yaml"
    write_atomic(base_file, f"# The full-budget base of the sweep in {output}: what --confirm trains.\n"
                 + config_to_yaml(cfg))
    method = cfg.method.name
    stem = Path(space.source).stem
    return Preset(
        name=f"confirm-{stem}",
        description=f"the best config of the sweep in {output} ({best['trial_id']}) beside its base config "
                    f"{cfg.name}, both at the full budget",
        base_config=str(base_file), base_overrides=(),
        methods=(MethodSpec(name="base", method=method, overrides=()),
                 MethodSpec(name="tuned", method=method,
                            overrides=tuned_overrides(output, best["trial_id"], space.keys))),
        **_evaluated_at_eval_radii(cfg, suite, examples, budget_of="the sweep's full budget"),
        budget="two trainings per seed at the full budget, and their evaluations")


def _evaluated_at_eval_radii(cfg: Any, suite: str | Mapping[str, Any], examples: int | None, *,
                             budget_of: str) -> dict[str, Any]:
    """A confirmation preset's evaluation: ``suite`` on the test images at the config's eval radii."""
    radii = dict(cfg.eval.eps)
    return dict(suite=suite if isinstance(suite, str) else dict(suite),
                suite_overrides=tuple(f"eps.{n.value}={e}" for n, e in radii.items()),
                examples=examples, workers=0, radii=radii,
                paper_dataset="cifar10" if cfg.data.name.value == "cifar10" else "mnist",
                data_note=f"{cfg.data.name.value}, {cfg.model.backbone}, {cfg.train.epochs} epochs: {budget_of}")


def run_confirm(*, output: Path, space: Any, best: dict[str, Any], full_raw: dict, seeds: int,
                suite: str | Mapping[str, Any], examples: int | None, cluster: str | None, tracking_uri: str | None,
                log: Callable[[str], None]) -> ConfirmResult:
    from mat_dist.core.run_config import load_config
    from mat_dist.reproduce.pipeline import reproduce
    from mat_dist.reproduce.reproduction_report import collect
    from mat_dist.plumbing.atomic import write_atomic

    preset = confirm_preset(output=output, space=space, best=best, full_raw=full_raw, suite=suite,
                            examples=examples)
    log(f"confirm: base and tuned configs, {seeds} seed(s) each, at the full budget -> {output / CONFIRM_DIR}")
    result = reproduce(preset, output=output / CONFIRM_DIR, cluster=cluster,
                       tracking=bool(full_raw.get("tracking", {}).get("enabled", True)), tracking_uri=tracking_uri,
                       seeds=seeds, log=log)
    configs = {o.label: load_config(o.run_dir / "config.yaml") for o in result.methods}
    data = {d.name: d for d in collect(preset, result.methods, configs)}
    table, verdict, beats = confirm_table(data, suite_name=preset.suite if isinstance(preset.suite, str)
                                          else preset.suite.get("name", "inline"), unions=seed_unions(result.methods))
    write_atomic(output / CONFIRM_FILE, json.dumps({"table": table.to_dict(), "note": table.note, "verdict": verdict,
                                                    "beats_base": beats, "seeds": seeds, "best_trial": best["trial_id"],
                                                    "report": str(result.report)}, indent=1))
    return ConfirmResult(table=table.to_dict(), verdict=verdict, beats_base=beats, report=result.report)


def confirm_table(data: Mapping[str, Any], *, suite_name: str, names: tuple[str, ...] = ("base", "tuned"),
                  reference: str = "base", unions: Mapping[str, list[Any]] | None = None):
    """One table of ``names`` (mean ± sd over seeds [95% interval], %) with their training cost, and the verdict
    of each against ``reference`` on all_attacks. Returns (table, verdict text, whether every other config beats
    the reference).

    With ``unions`` (each config's per-seed, per-image all_attacks robustness on the same test images) the
    table also gives each config's paired difference to the reference with its interval over images and seeds
    (mat_dist.evaluate.paired), and the verdict reads that: a difference counts when its interval excludes 0.
    Without them, a difference counts only when the two configs' intervals do not overlap."""
    from mat_dist.evaluate.paired import paired_difference
    from mat_dist.reproduce.reproduction_report import Table, cell, separated

    paired = unions is not None
    delta_column = f"all_attacks minus {reference} [95%]"
    rule = (f"the difference column is paired over the same test images, its interval over images "
            f"and seeds; a difference counts when that interval excludes 0" if paired else
            "a difference counts only when two configs' all_attacks intervals do not overlap")
    table = Table(title="confirmation on the test images",
                  columns=["config", "seeds", *METRICS, *([delta_column] if paired else []), "training passes",
                           "training min"],
                  note=f"Suite `{suite_name}` on the test images; cells: mean ± standard deviation over the seeds "
                       f"(one seed: the value) and the union of the seeds' 95% Wilson intervals, in %; {rule}.")
    differences = {name: paired_difference(unions[name], unions[reference])
                   for name in names if paired and name != reference}
    for name in names:
        d = data[name]
        last = d.metrics[-1] if d.metrics else {}
        minutes = sum(float(r.get("epoch_time_s", 0.0)) for r in d.metrics) / 60
        delta = [differences[name].text() if name in differences else "-"] if paired else []
        table.rows.append([name, str(len(d.seed_summaries)), *(cell(d, m) for m in METRICS), *delta,
                           f"{float(last.get('train/passes', float('nan'))):.4g}", f"{minutes:.1f}"])
    ref = data[reference]
    b, mb = ref.interval("all_attacks"), ref.mean("all_attacks") or 0.0
    verdicts, beats_all = [], True
    for name in names:
        if name == reference:
            continue
        t, mt = data[name].interval("all_attacks"), data[name].mean("all_attacks") or 0.0
        if paired:
            diff = differences[name]
            apart, why = diff.separated, f"paired difference {diff.text()} points"
        else:
            apart, why = separated(b, t), "the intervals overlap"
        beats_all = beats_all and apart and mt > mb
        label = "the tuned config" if names == ("base", "tuned") else name
        other = "the base config" if reference == "base" else reference
        margin = "by more than the paired interval" if paired else "by more than the intervals"
        detail = f"; {why}" if paired else ""
        if apart and mt > mb:
            verdicts.append(f"{label} beats {other} on all_attacks {margin} ({100 * mt:.1f}% against "
                            f"{100 * mb:.1f}%{detail})")
        elif apart:
            verdicts.append(f"{other} beats {label} on all_attacks {margin} ({100 * mb:.1f}% against "
                            f"{100 * mt:.1f}%{detail})")
        elif names == ("base", "tuned"):
            verdicts.append(f"a tie on all_attacks: {why} ({100 * mt:.1f}% tuned, {100 * mb:.1f}% base)")
        else:
            verdicts.append(f"{label} ties {other} on all_attacks: {why} ({100 * mt:.1f}% against "
                            f"{100 * mb:.1f}%)")
    return table, "; ".join(verdicts), beats_all


def seed_unions(outcomes: Any) -> dict[str, list[Any]]:
    """Each method's per-seed, per-image all_attacks robustness (seed 0 first), from the evaluation folders;
    checked to cover the same test images across every method and seed."""
    from mat_dist.evaluate.paired import aligned_unions

    ordered = sorted(outcomes, key=lambda o: o.seed)
    vectors = aligned_unions([o.eval_dir for o in ordered])
    out: dict[str, list[Any]] = {}
    for o, v in zip(ordered, vectors):
        out.setdefault(o.spec.name, []).append(v)
    return out


def compare_preset(*, base_file: Path, sweeps: Mapping[str, Path], suite: str | Mapping[str, Any],
                   examples: int | None, reference: str = "hand-picked"):
    """A preset of the base config (``reference``) and the best config of each sweep folder, all at the base's
    budget: the searches compared on the test images (scripts/compare_searches.py)."""
    from mat_dist.core.run_config import load_config
    from mat_dist.reproduce.presets import MethodSpec, Preset

    cfg = load_config(base_file)
    methods = [MethodSpec(name=reference, method=cfg.method.name, overrides=())]
    for name, folder in sweeps.items():
        saved = json.loads((folder / "sweep.json").read_text())
        summary = json.loads((folder / "summary.json").read_text())
        if summary.get("best") is None:
            from mat_dist.plumbing.errors import UserError

            raise UserError(f"{folder} has no best trial (summary.json); finish that sweep first")
        keys = list(saved["space"]["params"])
        methods.append(MethodSpec(name=name, method=cfg.method.name,
                                  overrides=tuned_overrides(folder, summary["best"]["trial_id"], keys)))
    return Preset(
        name="compare-searches", description=f"{reference} ({base_file}) beside the best config of "
                                             f"{', '.join(f'{n} ({f})' for n, f in sweeps.items())}",
        base_config=str(base_file), base_overrides=(), methods=tuple(methods),
        **_evaluated_at_eval_radii(cfg, suite, examples, budget_of="the base's budget"),
        budget="one training per config and seed, and its evaluation")
