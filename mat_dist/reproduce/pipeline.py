"""``reproduce``: train every method of a preset, evaluate each with one suite, write the paper-shaped report.

The output folder's layout: ``mat_dist.reproduce.layout``.

``reproduce`` is four named steps: ``plan_runs`` (every config and the suite built and validated before
anything trains), ``train_all``, ``evaluate_all`` and ``write_reports``.

Re-running is cheap: a method whose run folder holds ``model.safetensors`` is
not trained again, one with checkpoints resumes from the newest, and an
evaluation whose ``summary.json`` matches the model and the suite is not run
again (a half-finished one resumes: the evaluator skips finished shards).

MLflow: one parent run per output folder; each training and each evaluation
is a run nested under it (tag ``mlflow.parentRunId``).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from mat_dist.plumbing.atomic import append_jsonl, read_jsonl, write_atomic
from mat_dist.core.run_config import RunConfig, apply_run_overrides, config_from_dict, config_to_dict, read_yaml, \
    resolve_config_path
from mat_dist.plumbing.console import plural
from mat_dist.plumbing.errors import UserError
from mat_dist.reproduce.layout import EVALS, INVOCATIONS_FILE, PARENT_RUN_FILE, PRESET_FILE, RUNS, run_label
from mat_dist.reproduce.presets import FP32_SWITCHES, MethodSpec, Preset
from mat_dist.core.run_folder import RunFolder, check_writable

Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class MethodOutcome:
    spec: MethodSpec
    run_dir: Path
    eval_dir: Path
    training: str            # trained | resumed | skipped
    evaluation: str          # evaluated | resumed | skipped
    train_wall_s: float      # spent in this call (0 when skipped)
    eval_wall_s: float
    seed: int = 0            # the run config's seed (``--seeds N`` trains seeds 0..N-1)

    @property
    def label(self) -> str:
        return run_label(self.spec.name, self.seed)


@dataclass(frozen=True, kw_only=True)
class ReproduceResult:
    output: Path
    report: Path
    methods: list[MethodOutcome]
    wall_s: float
    parent_run_id: str | None = None
    figures: list[Path] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class ReproducePlan:
    """What ``plan_runs`` built and checked before anything trains; the steps after it read it."""

    preset: Preset
    output: Path
    runs: list[tuple[MethodSpec, int]]  # (method, seed), in the order they train and evaluate
    configs: dict[str, RunConfig]       # run label -> its run config
    suite: Any                          # the evaluation suite, its radii the preset's
    seeds: int                          # asked for in this call
    folder_seeds: int                   # the folder's own count (it may hold more: a study's report reads them)
    partial: bool                       # --only: some methods, no paper-shaped report
    examples: int                       # test images of every evaluation
    workers: int                        # evaluation workers (0: in this process)
    recorded: set[str]                  # run labels whose results are on disk without weights: skipped
    experiment: str                     # MLflow experiment and tracking URI of every run
    uri: str | None
    evals: str = EVALS                  # the evaluations' folder under output (a study's second stage: evals-<N>)


# ---------------------------------------------------------------- configs and suite

def method_config(preset: Preset, spec: MethodSpec, *, overrides: list[str] | tuple[str, ...] = (),
                  tracking: bool = True) -> RunConfig:
    """The run config of one method: base config + preset overrides + method overrides + the user's."""
    raw = read_yaml(resolve_config_path(preset.base_config)) or {}
    items = [*preset.base_overrides, *preset.switches, *spec.overrides, f"name={preset.name}-{spec.name}",
             *overrides]
    if not tracking:
        items.append("tracking.enabled=false")
    try:
        return config_from_dict(apply_run_overrides(raw, items))
    except UserError as err:
        raise UserError(f"preset {preset.name}, method {spec.name}: {err}") from None


def preset_suite(preset: Preset):
    """The preset's evaluation suite, its radii set to the preset's."""
    from mat_dist.evaluate.suite import load_suite, suite_from_dict

    if isinstance(preset.suite, Mapping):
        return suite_from_dict(dict(preset.suite), source=f"preset {preset.name}",
                               overrides=list(preset.suite_overrides))
    return load_suite(preset.suite, list(preset.suite_overrides))


# Text that may change without changing what runs (a preset that gained a method describes itself anew).
_DESCRIPTIVE = ("description", "budget", "data_note")
# A study's second stage: it adds seeds and evaluations beside the first stage's and changes none of its runs,
# so a folder written before presets had it (or with another margin) goes on.
_SECOND_STAGE = ("close_margin", "close_examples", "close_seeds")


def _core(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A folder's fingerprint without its seed count, method list, descriptive text and second stage.

    A fingerprint written before presets had ``switches`` was trained when train.* defaulted to fp32 without
    channels_last: its missing key reads as those pins (``FP32_SWITCHES``), so a folder of a preset that pins
    them goes on, and one of a preset that leaves them to the machine (auto) is refused as other settings."""
    preset = {k: v for k, v in fingerprint.get("preset", {}).items()
              if k not in (*_DESCRIPTIVE, *_SECOND_STAGE, "methods")}
    preset.setdefault("switches", list(FP32_SWITCHES))
    return {**{k: v for k, v in fingerprint.items() if k != "seeds"}, "preset": preset}


def _check_preset_file(output: Path, preset: Preset, overrides: list[str], seeds: int = 1,
                       partial: bool = False) -> int:
    """Check (or write) the folder's fingerprint; return the folder's seed count.

    A folder may grow: more seeds (seeds 0..before-1 are the same runs, skipped as finished) and methods the
    preset gained (every method the folder has must be in the preset, unchanged). ``partial`` (``--only``):
    fewer seeds than the folder has are fine, since the call runs some methods only (a study gives its best
    methods more seeds than the rest).
    """
    wanted = {"preset": preset.to_dict(), "overrides": list(overrides)}
    path = output / PRESET_FILE
    before = 1
    if path.is_file():
        previous = json.loads(path.read_text())
        before = int(previous.get("seeds", 1))
        old, new = previous.get("preset", {}).get("methods", []), wanted["preset"]["methods"]
        if _core(previous) != _core(wanted) or any(m not in new for m in old):
            name = previous.get("preset", {}).get("name", "?")
            raise UserError(f"{output} holds a reproduction of preset {name} with other settings; "
                            f"choose another --output (or delete {output} to start over)")
        if seeds < before and not partial:
            raise UserError(f"{output} holds a reproduction of preset {preset.name} with other settings (it has "
                            f"{before} seeds; --seeds {seeds} would report only some of them); choose another "
                            f"--output (or delete {output} to start over)")
        if seeds <= before and old == new and previous.get("preset") == wanted["preset"]:
            return before
    total = max(seeds, before)
    if total > 1:  # a one-seed folder keeps the layout it had before seeds existed
        wanted["seeds"] = total
    write_atomic(path, json.dumps(wanted, indent=1, sort_keys=True))
    return total


def _record_invocation(output: Path, outcomes: list[MethodOutcome], wall_s: float) -> list[dict[str, Any]]:
    """Append this call to the folder's invocations when it trained or evaluated anything; all of them.

    The report's total wall time is their sum: a reproduction resumed after a stop, or re-run only to
    rewrite the report, still reports what the whole reproduction cost.
    """
    path = output / INVOCATIONS_FILE
    trained = sum(o.training != "skipped" for o in outcomes)
    evaluated = sum(o.evaluation != "skipped" for o in outcomes)
    if trained or evaluated:
        append_jsonl(path, {"wall_s": wall_s, "trained": trained, "evaluated": evaluated})
    return read_jsonl(path)


# ---------------------------------------------------------------- MLflow

def _parent_tracker(output: Path, preset: Preset, *, uri: str | None, experiment: str, enabled: bool):
    from mat_dist.plumbing.tracking import NullTracker, Tracker, git_commit

    if not enabled:
        return NullTracker()
    path = output / PARENT_RUN_FILE
    run_id = json.loads(path.read_text())["run_id"] if path.is_file() else None
    tracker = Tracker.start(uri=uri, experiment=experiment, run_name=f"reproduce-{preset.name}", run_id=run_id,
                            tags={"mat_dist.kind": "reproduce", "mat_dist.preset": preset.name,
                                  "mat_dist.output": str(output.resolve())})
    if run_id is None:
        write_atomic(path, json.dumps({"run_id": tracker.run_id}))
        tracker.log_params({"preset": preset.name, "suite": preset.suite if isinstance(preset.suite, str)
                            else preset.suite.get("name", "inline"), "methods": [m.name for m in preset.methods],
                            "base_config": preset.base_config, "base_overrides": list(preset.base_overrides),
                            "suite_overrides": list(preset.suite_overrides), "examples": preset.examples})
        tracker.set_tags({"mat_dist.git_commit": git_commit(Path(__file__).parent) or "unknown"})
    return tracker


def _nest_training_run(cfg: RunConfig, run_dir: Path, *, parent_run_id: str | None, uri: str | None,
                       preset: Preset, spec: MethodSpec) -> None:
    """Create the training's MLflow run under the parent before the runner opens it (through run.json).

    The runner resumes the run named in ``run.json``; creating it here is how
    it gets its ``mlflow.parentRunId`` without the runner knowing of parents.
    """
    from mat_dist.plumbing.tracking import Tracker, git_commit

    run = RunFolder(run_dir)
    if parent_run_id is None or not cfg.tracking.enabled or run.run_record.is_file():
        return
    tracker = Tracker.start(uri=uri or cfg.tracking.uri, experiment=cfg.tracking.experiment, run_name=cfg.name,
                            parent_run_id=parent_run_id,
                            tags={"mat_dist.output": str(run_dir.resolve()), "mat_dist.kind": "training",
                                  "mat_dist.preset": preset.name, "mat_dist.reproduce_method": spec.name})
    with tracker:
        tracker.log_params(config_to_dict(cfg))
        tracker.set_tags({"mat_dist.git_commit": git_commit(Path(__file__).parent) or "unknown",
                          "mat_dist.method": cfg.method.name})
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run.run_record, json.dumps({"run_id": tracker.run_id}))


# ---------------------------------------------------------------- train and evaluate

def _recorded(cfg: RunConfig, run_dir: Path, eval_dir: Path, fingerprint: dict[str, Any]) -> bool:
    """Whether this method's results are on disk without its weights: a run folder whose config is ``cfg`` and
    whose metrics reach the last epoch, and an evaluation of the same suite, data and images. What a study
    commits (weights stay out of git), so a reproduction continued on another machine skips it."""
    from mat_dist.evaluate.evaluator import FINGERPRINT

    run = RunFolder(run_dir)
    if not (run.config.is_file() and run.metrics.is_file() and (eval_dir / "summary.json").is_file()
            and (eval_dir / "results.parquet").is_file() and (eval_dir / FINGERPRINT).is_file()):
        return False
    try:
        same_config = _comparable(config_from_dict(read_yaml(run.config))) == _comparable(cfg)
    except UserError:
        return False
    epochs = [int(r.get("epoch", 0)) for r in read_jsonl(run.metrics)]
    previous = json.loads((eval_dir / FINGERPRINT).read_text())
    return same_config and max(epochs, default=0) >= cfg.train.epochs \
        and all(previous.get(k) == v for k, v in fingerprint.items())


def _comparable(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its fine-tuning source as an absolute path: the same study continued with --output spelt
    another way (absolute, or from another folder) names the same source."""
    if not cfg.train.init_from:
        return cfg
    return replace(cfg, train=replace(cfg.train, init_from=str(Path(cfg.train.init_from).resolve())))


def _train(cfg: RunConfig, run_dir: Path, *, cluster: str | None, tracking_uri: str | None, log: Log) -> str:
    """Train one method unless finished; returns trained, resumed or skipped."""
    from mat_dist.cluster import load_cluster
    from mat_dist.training import train

    run = RunFolder(run_dir)
    if run.model.is_file():
        return "skipped"
    resume = run.config.is_file()

    def on_epoch(m: dict[str, Any]) -> None:  # called on the in-process path; on Ray rank 0 prints its lines
        log(f"  {cfg.name} epoch {int(m['epoch'])}/{cfg.train.epochs}: loss {m['train/loss']:.3f}, "
            f"clean {100 * m['val/clean_acc']:.1f}%, {cfg.eval.attack.value.upper()} all norms {100 * m.get('val/robust_all', 0):.1f}% "
            f"({m['epoch_time_s']:.0f} s)")

    # --cluster: a Ray Train job on it; without, the in-process loop (reproduce's default)
    train(cfg, run_dir, load_cluster(cluster) if cluster is not None else None, resume=resume,
          tracking_uri=tracking_uri, on_epoch=on_epoch)
    return "resumed" if resume else "trained"


def _eval_finished(eval_dir: Path, weights: Path, fingerprint: dict[str, Any]) -> bool:
    from mat_dist.evaluate.evaluator import FINGERPRINT
    from mat_dist.evaluate.model_source import file_digest

    if not (eval_dir / "summary.json").is_file() or not (eval_dir / FINGERPRINT).is_file():
        return False
    previous = json.loads((eval_dir / FINGERPRINT).read_text())
    return all(previous.get(k) == v for k, v in fingerprint.items()) \
        and previous.get("model_sha256") == file_digest(weights)


def _evaluate(run_dir: Path, eval_dir: Path, cfg: RunConfig, suite, *, examples: int, workers: int,
              cluster: str | None, tracking, log: Log) -> str:
    from mat_dist.evaluate.evaluator import evaluate

    weights = RunFolder(run_dir).model
    if _eval_finished(eval_dir, weights, {"dataset": cfg.data.name.value, "examples": examples,
                                          "suite": suite.to_dict()}):
        return "skipped"
    started = (eval_dir / "shards").is_dir()

    def on_progress(done: int, total: int, name: str) -> None:
        if name:
            log(f"  {cfg.name} evaluation: shard {done}/{total} ({name})")

    try:
        evaluate(model_path=weights, suite=suite, output=eval_dir, dataset=cfg.data.name.value,
                 data_root=cfg.data.root, examples=examples, workers=workers, cluster=cluster,
                 on_progress=on_progress, tracking=tracking)
    except UserError as err:
        if "holds an evaluation with another" in str(err):
            raise UserError(f"{eval_dir} holds an evaluation of another model or suite; delete that folder "
                            f"to evaluate {cfg.name} again") from None
        raise
    return "resumed" if started else "evaluated"


def _source_override(preset: Preset, spec: MethodSpec, seed: int, output: Path) -> tuple[str, ...]:
    """``train.init_from`` of a fine-tuned method: its source method's run folder of the same seed."""
    if spec.init_from is None:
        return ()
    return (f"train.init_from={output / RUNS / run_label(spec.init_from, seed)}",)


def run_configs(preset: Preset, runs: list[tuple[MethodSpec, int]], *, output: Path, overrides: list[str],
                tracking: bool) -> dict[str, RunConfig]:
    """The run config of every (method, seed) of a reproduction into ``output``, keyed by run label."""
    return {run_label(spec.name, seed): _seed_config(preset, spec, seed, output, overrides, tracking)
            for spec, seed in runs}


def evaluation_fingerprint(configs: Mapping[str, RunConfig], suite: Any, examples: int) -> dict[str, Any]:
    """What a committed evaluation must match to count as done (``_recorded``): data, images and suite."""
    return {"dataset": next(iter(configs.values())).data.name.value, "examples": examples, "suite": suite.to_dict()}


def _selected(preset: Preset, only: list[str] | None) -> list[MethodSpec]:
    """The preset's methods to run (``--only``: those named, with the methods they are fine-tuned from)."""
    if not only:
        return list(preset.methods)
    for name in only:
        preset.method(name)  # an unknown name is one line naming the preset's methods
    wanted = set(only) | {source for name in only for source in preset.sources(name)}
    return [spec for spec in preset.methods if spec.name in wanted]


# ---------------------------------------------------------------- the driver and its steps

def reproduce(preset: Preset, *, output: Path, cluster: str | None = None, overrides: list[str] | None = None,
              tracking: bool = True, tracking_uri: str | None = None, workers: int | None = None,
              report_dir: Path | None = None, log: Log | None = None, seeds: int = 1,
              only: list[str] | None = None) -> ReproduceResult:
    """Train, evaluate and report every method of ``preset`` into ``output``; finished work is skipped.

    ``seeds``: every method is trained and evaluated with run seeds 0..seeds-1 (weights, data order and
    attack noise all differ), and the report gives each figure's mean and spread over the seeds.
    ``only``: just these methods (and the ones they are fine-tuned from); the paper-shaped report, which
    needs every method, is then not written (a study's report is: it reports what is finished).
    """
    log = log or (lambda _: None)
    started = time.perf_counter()
    plan = plan_runs(preset, output, overrides=list(overrides or []), tracking=tracking, tracking_uri=tracking_uri,
                     workers=workers, seeds=seeds, only=only)
    return run_plans(plan, plan, started=started, cluster=cluster, tracking=tracking, report_dir=report_dir, log=log)


def run_plans(training: ReproducePlan, evaluation: ReproducePlan, *, started: float, cluster: str | None,
              tracking: bool, report_dir: Path | None, log: Log) -> ReproduceResult:
    """Train ``training``'s runs, evaluate ``evaluation``'s (each of them among the trained), write the reports,
    all under one MLflow parent run. One plan for both in the first stage; a study's second stage trains the
    sources of its fine-tuned runs too, without evaluating them."""
    output = evaluation.output
    parent = _parent_tracker(output, evaluation.preset, uri=evaluation.uri, experiment=evaluation.experiment,
                             enabled=tracking)
    with parent:
        trained = train_all(training, parent_run_id=parent.run_id, cluster=cluster, log=log)
        outcomes = evaluate_all(evaluation, trained, parent_run_id=parent.run_id, cluster=cluster, tracking=tracking,
                                log=log)
        wall = time.perf_counter() - started
        report, figures = write_reports(evaluation, outcomes, target=report_dir or output, wall_s=wall,
                                        parent=parent)
    log(f"report: {report}")
    return ReproduceResult(output=output, report=report, methods=outcomes, wall_s=wall,
                           parent_run_id=parent.run_id, figures=figures)


def plan_runs(preset: Preset, output: Path, *, overrides: list[str], tracking: bool, tracking_uri: str | None,
              workers: int | None, seeds: int, only: list[str] | None) -> ReproducePlan:
    """Every run's config and the suite, built (and validated) before anything trains; the folder's
    fingerprint checked (or written)."""
    check_writable(output)
    if seeds < 1:
        raise UserError(f"--seeds {seeds} must be at least 1")
    runs = [(spec, seed) for spec in _selected(preset, only) for seed in range(seeds)]
    configs = run_configs(preset, runs, output=output, overrides=overrides, tracking=tracking)
    suite = preset_suite(preset)
    folder_seeds = _check_preset_file(output, preset, overrides, seeds, partial=bool(only))
    examples = preset.examples if preset.examples is not None else suite.examples
    n_workers = preset.workers if workers is None else workers
    if n_workers < 0:
        raise UserError(f"--workers {n_workers} must be 0 (in this process) or more")
    first = next(iter(configs.values()))
    fingerprint = evaluation_fingerprint(configs, suite, examples)
    recorded = {label for label in configs
                if _recorded(configs[label], output / RUNS / label, output / EVALS / label, fingerprint)}
    return ReproducePlan(preset=preset, output=output, runs=runs, configs=configs, suite=suite, seeds=seeds,
                         folder_seeds=folder_seeds, partial=bool(only), examples=examples, workers=n_workers,
                         recorded=recorded, experiment=first.tracking.experiment,
                         uri=tracking_uri or first.tracking.uri)


def _seed_config(preset: Preset, spec: MethodSpec, seed: int, output: Path, overrides: list[str],
                 tracking: bool) -> RunConfig:
    """One method's run config for one seed: seed 0 as before seeds existed, seed s named ``<method>-seed<s>``;
    a fine-tuned method starts from its source's run of the same seed."""
    seeded = (f"seed={seed}", f"name={preset.name}-{run_label(spec.name, seed)}") if seed else ()
    return method_config(preset, spec, overrides=[*overrides, *seeded, *_source_override(preset, spec, seed, output)],
                         tracking=tracking)


def train_all(plan: ReproducePlan, *, parent_run_id: str | None, cluster: str | None,
              log: Log) -> dict[str, tuple[str, float]]:
    """Train every run (skip finished ones, resume interrupted ones); run label -> (status, seconds spent)."""
    trained: dict[str, tuple[str, float]] = {}
    for i, (spec, seed) in enumerate(plan.runs, 1):
        label = run_label(spec.name, seed)
        cfg, run_dir = plan.configs[label], plan.output / RUNS / label
        _nest_training_run(cfg, run_dir, parent_run_id=parent_run_id, uri=plan.uri, preset=plan.preset, spec=spec)
        t0 = time.perf_counter()
        log(f"[{i}/{len(plan.runs)}] train {label} ({cfg.method.name}, M={cfg.model.num_members}, "
            f"K={cfg.attack.steps}, {plural(cfg.train.epochs, 'epoch')}, seed {cfg.seed}) -> {run_dir}")
        status = "skipped" if label in plan.recorded else \
            _train(cfg, run_dir, cluster=cluster, tracking_uri=plan.uri, log=log)
        trained[label] = (status, time.perf_counter() - t0)
        if status == "skipped":
            log(f"  {label}: already trained, skipped")
    return trained


def evaluate_all(plan: ReproducePlan, trained: Mapping[str, tuple[str, float]], *, parent_run_id: str | None,
                 cluster: str | None, tracking: bool, log: Log) -> list[MethodOutcome]:
    """Evaluate every trained model with the same suite (one Ray runtime for all, when Ray is used)."""
    from mat_dist.evaluate.evaluator import TrackingOptions
    from mat_dist.evaluate.runner import ray_runtime

    outcomes: list[MethodOutcome] = []
    needs_ray = cluster is not None or plan.workers > 0
    with (ray_runtime(workers=plan.workers, cluster=cluster) if needs_ray else contextlib.nullcontext()):
        for i, (spec, seed) in enumerate(plan.runs, 1):
            label = run_label(spec.name, seed)
            cfg, run_dir, eval_dir = plan.configs[label], plan.output / RUNS / label, plan.output / plan.evals / label
            options = TrackingOptions(enabled=tracking, uri=plan.uri, experiment=plan.experiment,
                                      parent_run_id=parent_run_id,
                                      extra_tags={"mat_dist.preset": plan.preset.name,
                                                  "mat_dist.reproduce_method": spec.name})
            t0 = time.perf_counter()
            log(f"[{i}/{len(plan.runs)}] evaluate {label} with suite {plan.suite.name} on {plan.examples} "
                f"images -> {eval_dir}")
            status = "skipped" if label in plan.recorded else \
                _evaluate(run_dir, eval_dir, cfg, plan.suite, examples=plan.examples, workers=plan.workers,
                          cluster=cluster, tracking=options, log=log)
            if status == "skipped":
                log(f"  {label}: already evaluated, skipped")
            outcomes.append(MethodOutcome(spec=spec, run_dir=run_dir, eval_dir=eval_dir,
                                          training=trained[label][0], evaluation=status,
                                          train_wall_s=trained[label][1],
                                          eval_wall_s=time.perf_counter() - t0, seed=seed))
    return outcomes


def write_reports(plan: ReproducePlan, outcomes: list[MethodOutcome], *, target: Path, wall_s: float,
                  parent: Any) -> tuple[Path, list[Path]]:
    """This call's wall time recorded; the paper-shaped report (not with --only: it needs every method) and a
    study preset's study, into ``target``, logged to the parent run; returns (report, figures)."""
    from mat_dist.reproduce.reproduction_report import flat_metrics, write_report

    invocations = _record_invocation(plan.output, outcomes, wall_s)
    report, figures = None, []
    if not plan.partial:
        written = write_report(plan.preset, outcomes, configs=plan.configs, suite=plan.suite, output=target,
                               wall_s=wall_s, invocations=invocations, seeds=plan.seeds)
        parent.log_metrics(flat_metrics(written.data), step=0)
        report, figures = written.report, list(written.figures)
    if plan.preset.study:
        from mat_dist.reproduce.study import write_study

        study = write_study(plan.preset, plan.output, target, seeds=plan.folder_seeds)
        report, figures = report or study.report, figures + list(study.figures)
        if not plan.partial:
            figures.append(study.report)
    for path in [report, *figures]:
        parent.log_artifact(path, "figures" if path != report else None)
    return report, figures
