"""A study's second stage (``matd reproduce --close``): more seeds and more test images for the close set.

The first stage gives every method one seed on the preset's ``examples`` test images. The methods whose union
(``all_attacks``) is within ``close_margin`` points of the best one, and the reference ``mat_rotate``, are the
close set: where one seed and 500 images cannot tell the methods apart. Each of them gets seeds
0..close_seeds-1 (a fine-tuned method its source's seeds too) and every seed is evaluated on
``close_examples`` images into ``evals-<N>/<label>``, beside ``evals/``: the first stage's evaluations stay as
they are and keep matching their fingerprints. ``close.json`` records the set; the study reads it and the
second stage's evaluations (``study.py``).

Re-running skips what is finished, as the first stage does: a run whose config, metrics and second-stage
evaluation are on disk (committed, without weights) is neither trained nor evaluated again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mat_dist.plumbing.atomic import read_jsonl, write_atomic
from mat_dist.plumbing.errors import UserError
from mat_dist.core.run_config import RunConfig
from mat_dist.core.run_folder import RunFolder
from mat_dist.reproduce.layout import CLOSE_FILE, EVALS, RUNS, close_evals, run_label
from mat_dist.reproduce.pipeline import (Log, ReproducePlan, ReproduceResult, _check_preset_file, _recorded,
                                         evaluation_fingerprint, preset_suite, run_configs, run_plans)
from mat_dist.reproduce.presets import MethodSpec, Preset

REFERENCE = "mat_rotate"  # always in the close set: every paired difference of the study is against it
_TOLERANCE = 1e-9         # a union exactly at the margin is inside, whatever the float rounding


@dataclass(frozen=True, kw_only=True)
class CloseSet:
    preset: str
    margin: float              # points of union below the best that are still close
    examples: int              # the first stage's test images, where the unions come from
    unions: dict[str, float]   # every method's first-seed union (a fraction), in the preset's order
    members: tuple[str, ...]   # the close set, in the preset's order
    unfinished: tuple[str, ...] = ()  # first-stage rows not finished yet: a provisional set (--provisional)

    @property
    def best(self) -> str:
        return max(self.unions, key=lambda name: self.unions[name])

    def describe(self) -> str:
        """One line: the set with each union, the best and the margin, then the methods left out."""
        inside = ", ".join(f"{m} {100 * self.unions[m]:.1f}" for m in self.members)
        outside = [m for m in self.unions if m not in self.members]
        return (f"close set of {self.preset} (union within {self.margin:g} points of the best, {self.best} "
                f"{100 * self.unions[self.best]:.1f}%, seed 0 on {self.examples} images; {REFERENCE} always): "
                f"{inside}" + (f"; outside: {', '.join(f'{m} {100 * self.unions[m]:.1f}' for m in outside)}"
                               if outside else "")
                + (f"; provisional, not finished yet: {', '.join(self.unfinished)}" if self.unfinished else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "margin": self.margin, "examples": self.examples, "unions": self.unions,
                "members": list(self.members), "unfinished": list(self.unfinished)}


def require_second_stage(preset: Preset) -> tuple[float, int, int]:
    """(margin, images, seeds) of the preset's second stage; one line when it has none."""
    if preset.close_margin is None or preset.close_examples is None or preset.close_seeds is None:
        raise UserError(f"preset {preset.name} has no second stage (close_margin, close_examples, close_seeds); "
                        f"drop --close")
    return preset.close_margin, preset.close_examples, preset.close_seeds


def seeds_now(preset: Preset, seeds: int | None) -> int:
    """How many of the second stage's seeds (0..n-1) to run now: ``seeds``, or all of them; one line past them."""
    _, _, close_seeds = require_second_stage(preset)
    if seeds is None:
        return close_seeds
    if not 1 <= seeds <= close_seeds:
        raise UserError(f"--close --seeds {seeds}: the second stage of {preset.name} has seeds 0..{close_seeds - 1}; "
                        f"give 1 to {close_seeds} (fewer runs the first ones now, the rest later)")
    return seeds


def first_stage_examples(preset: Preset, suite: Any) -> int:
    return preset.examples if preset.examples is not None else suite.examples


def first_stage_unions(preset: Preset, output: Path, *, overrides: list[str], tracking: bool,
                       provisional: bool = False) -> tuple[dict[str, float], list[str]]:
    """(unions, unfinished): every method's first-seed union from its finished first-stage evaluation (one
    that matches the preset's data, images and suite, as a re-run's skip asks), and the methods without one:
    one line naming them, unless ``provisional`` (then the close set is that of the finished rows)."""
    from mat_dist.evaluate.evaluator import FINGERPRINT

    suite = preset_suite(preset)
    configs = run_configs(preset, [(m, 0) for m in preset.methods], output=output, overrides=overrides,
                          tracking=tracking)
    fingerprint = evaluation_fingerprint(configs, suite, first_stage_examples(preset, suite))
    unions, missing = {}, []
    for spec in preset.methods:
        eval_dir, run_dir = output / EVALS / spec.name, RunFolder(output / RUNS / spec.name)
        summary, stamp = eval_dir / "summary.json", eval_dir / FINGERPRINT
        done = summary.is_file() and stamp.is_file() and run_dir.metrics.is_file() \
            and all(json.loads(stamp.read_text()).get(k) == v for k, v in fingerprint.items())
        if done:
            unions[spec.name] = float(json.loads(summary.read_text())["all_attacks"])
        else:
            missing.append(spec.name)
    if missing and not provisional:
        raise UserError(f"--close needs every method's first seed trained and evaluated in {output}; not yet: "
                        f"{', '.join(missing)} (run matd reproduce --preset {preset.name} --output {output} first, "
                        f"or give --provisional)")
    if REFERENCE in missing:  # every paired difference of the study is against it: no close set without it
        raise UserError(f"--close --provisional needs {REFERENCE}'s first seed trained and evaluated in {output}; "
                        f"not yet")
    return unions, missing


def close_members(unions: dict[str, float], margin: float) -> tuple[str, ...]:
    """The methods within ``margin`` points of the best union, and the reference; in the order given."""
    best = max(unions.values())
    return tuple(name for name, union in unions.items()
                 if 100 * (best - union) <= margin + _TOLERANCE or name == REFERENCE)


def close_set(preset: Preset, output: Path, *, overrides: list[str] | None = None,
              tracking: bool = True, provisional: bool = False) -> CloseSet:
    """The preset's close set, from the finished first-stage evaluations in ``output``.

    ``provisional``: from the rows finished so far. Seed 0's weights live only where the first stage trained,
    so their evaluation on more images is the part of the second stage to do first; a row that finishes later
    can raise the best and leave a method outside the set, whose extra evaluations then stay in the report."""
    margin, _, _ = require_second_stage(preset)
    unions, unfinished = first_stage_unions(preset, output, overrides=list(overrides or []), tracking=tracking,
                                            provisional=provisional)
    return CloseSet(preset=preset.name, margin=margin, examples=first_stage_examples(preset, preset_suite(preset)),
                    unions=unions, members=close_members(unions, margin), unfinished=tuple(unfinished))


def _chosen(preset: Preset, members: tuple[str, ...], only: list[str] | None) -> list[MethodSpec]:
    """The close methods to run now: all of them, or those of ``--only`` (each of which must be close)."""
    for name in only or ():
        preset.method(name)  # an unknown name is one line naming the preset's methods
    outside = [name for name in only or () if name not in members]
    if outside:
        raise UserError(f"--close --only {','.join(outside)}: not in the close set ({', '.join(members)})")
    return [preset.method(name) for name in members if not only or name in only]


def _needs_training(preset: Preset, pending: list[tuple[MethodSpec, int]],
                    output: Path) -> list[tuple[MethodSpec, int]]:
    """The runs of ``pending`` without weights and, for a fine-tuned one, its sources' runs of the same seed
    without weights (the fine-tuning starts from them); sources first."""
    wanted: dict[str, tuple[MethodSpec, int]] = {}
    for spec, seed in pending:
        if RunFolder(output / RUNS / run_label(spec.name, seed)).model.is_file():
            continue
        for name in [*reversed(preset.sources(spec.name)), spec.name]:
            if not RunFolder(output / RUNS / run_label(name, seed)).model.is_file():
                wanted.setdefault(run_label(name, seed), (preset.method(name), seed))
    return sorted(wanted.values(), key=lambda run: (len(preset.sources(run[0].name)), run[1]))


def _refuse_finished_without_weights(runs: list[tuple[MethodSpec, int]], configs: dict[str, RunConfig],
                                     output: Path) -> None:
    """A run trained to the end whose weights are not here (committed results leave them out) cannot be
    evaluated on more images, and training it again would make another model than the one the first stage
    evaluated: one line, before anything trains."""
    for spec, seed in runs:
        label = run_label(spec.name, seed)
        run_dir = output / RUNS / label
        run = RunFolder(run_dir)
        epochs = [int(r.get("epoch", 0)) for r in read_jsonl(run.metrics)] if run.metrics.is_file() else []
        if max(epochs, default=0) >= configs[label].train.epochs:
            raise UserError(f"{run_dir} is trained but has no weights ({run.model.name}): the second stage needs "
                            f"them; copy them there from the machine that trained it (or run --close there)")


def plan_close(preset: Preset, output: Path, *, overrides: list[str], tracking: bool, tracking_uri: str | None,
               workers: int | None, only: list[str] | None, log: Log,
               seeds: int | None = None, provisional: bool = False) -> tuple[ReproducePlan, ReproducePlan]:
    """The second stage's (training plan, evaluation plan), checked before anything trains; logs the set.

    ``seeds``: the first ones of the preset's ``close_seeds`` only (default all). Seed 0's weights are the first
    stage's, on this machine only, so evaluating them first (``seeds=1``) leaves work any machine can do."""
    _, examples, _ = require_second_stage(preset)
    seeds = seeds_now(preset, seeds)
    found = close_set(preset, output, overrides=overrides, tracking=tracking, provisional=provisional)
    log(found.describe())
    evaluated = [(spec, seed) for spec in _chosen(preset, found.members, only) for seed in range(seeds)]
    suite = preset_suite(preset)
    evals = close_evals(examples)
    configs = run_configs(preset, evaluated, output=output, overrides=overrides, tracking=tracking)
    fingerprint = evaluation_fingerprint(configs, suite, examples)
    recorded = {label for label in configs
                if _recorded(configs[label], output / RUNS / label, output / evals / label, fingerprint)}
    untrained = _needs_training(preset, [(s, k) for s, k in evaluated if run_label(s.name, k) not in recorded],
                                output)
    configs.update(run_configs(preset, untrained, output=output, overrides=overrides, tracking=tracking))
    _refuse_finished_without_weights(untrained, configs, output)
    n_workers = preset.workers if workers is None else workers
    if n_workers < 0:
        raise UserError(f"--workers {n_workers} must be 0 (in this process) or more")
    # Checked, nothing written until here. The first stage's seed count stays the folder's: the second stage's
    # seeds live beside its evaluations, and a first-stage re-run without --only must not be asked for them.
    folder_seeds = _check_preset_file(output, preset, overrides, seeds=1, partial=True)
    write_atomic(output / CLOSE_FILE, json.dumps(found.to_dict(), indent=1))
    first = next(iter(configs.values()))
    evaluation = ReproducePlan(preset=preset, output=output, runs=evaluated, configs=configs, suite=suite,
                               seeds=seeds, folder_seeds=folder_seeds, partial=True, examples=examples,
                               workers=n_workers, recorded=recorded, experiment=first.tracking.experiment,
                               uri=tracking_uri or first.tracking.uri, evals=evals)
    # Training: every evaluated run (those with weights or recorded are skipped) and the sources they need.
    to_train = {run_label(s.name, k) for s, k in untrained}
    training_runs = [*untrained, *[run for run in evaluated if run_label(run[0].name, run[1]) not in to_train]]
    return replace(evaluation, runs=training_runs), evaluation


def reproduce_close(preset: Preset, *, output: Path, cluster: str | None = None, overrides: list[str] | None = None,
                    tracking: bool = True, tracking_uri: str | None = None, workers: int | None = None,
                    report_dir: Path | None = None, log: Log | None = None,
                    only: list[str] | None = None, seeds: int | None = None,
                    provisional: bool = False) -> ReproduceResult:
    """The second stage of a study preset into ``output``: the close set's seeds trained, every one evaluated
    on the preset's ``close_examples`` images, the study rewritten; finished work is skipped."""
    log = log or (lambda _: None)
    started = time.perf_counter()
    training, evaluation = plan_close(preset, output, overrides=list(overrides or []), tracking=tracking,
                                      tracking_uri=tracking_uri, workers=workers, only=only, log=log,
                                      seeds=seeds, provisional=provisional)
    return run_plans(training, evaluation, started=started, cluster=cluster, tracking=tracking,
                     report_dir=report_dir, log=log)
