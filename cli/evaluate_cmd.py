"""``matd evaluate``: options -> model, data, suite -> sharded evaluation, with a progress bar over shards."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import typer

from mat_dist.errors import UserError
from mat_dist.training.run_folder import RunFolder

DATASETS = "mnist5k, mnist, cifar10, digits, arrays"


def _run_folder_of(path: Path) -> Path | None:
    """The run folder a weights file or checkpoint folder belongs to (it holds config.yaml), if any."""
    for folder in [path, *path.parents][:4]:
        if RunFolder(folder).config.is_file():
            return folder
    return None


def _source_run_folder(source) -> Path | None:
    """The run folder of a mat-dist checkpoint source (its config names the data set); None otherwise."""
    return _run_folder_of(Path(source.location)) if source.is_checkpoint else None


def resolve_model(run: Path | None, checkpoint: Path | None) -> tuple[Path, Path | None]:
    """(model path, run folder or None) from exactly one of --run / --checkpoint."""
    if (run is None) == (checkpoint is None):
        raise UserError("give exactly one of --run DIR (a training run folder) or --checkpoint PATH")
    if run is not None:
        if not run.is_dir():
            raise UserError(f"--run {run} is not a folder; give a training run folder (it holds model.safetensors)")
        if not RunFolder(run).config.is_file():
            raise UserError(f"--run {run} is not a training run folder (no config.yaml); give the --output of "
                            f"matd train, or --model / --checkpoint for other weights")
        return run, run
    if not checkpoint.exists():
        raise UserError(f"--checkpoint {checkpoint} does not exist; give a .safetensors file or a checkpoint folder")
    return checkpoint, _run_folder_of(checkpoint.resolve())


def resolve_data(data: str | None, data_root: str | None, run_folder: Path | None) -> tuple[str, str | None]:
    if data is not None:
        return data, data_root
    if run_folder is not None:
        from mat_dist.config import read_yaml

        raw = read_yaml(RunFolder(run_folder).config) or {}
        section = raw.get("data") or {}
        return str(section.get("name", "mnist5k")), data_root or section.get("root")
    raise UserError("the checkpoint is not inside a run folder, so its dataset is unknown; pass --data NAME "
                    f"({DATASETS})")


def parent_run_id(run_folder: Path | None) -> str | None:
    run_file = RunFolder(run_folder).run_record if run_folder is not None else None
    if run_file is None or not run_file.is_file():
        return None
    try:
        return json.loads(run_file.read_text()).get("run_id")
    except (json.JSONDecodeError, AttributeError):
        return None


def parse_models(specs: list[str], *, weights: Path | None, input_mean: str | None, input_std: str | None):
    """ModelSources from --model values (NAME=SPEC names one; a .yaml file lists several)."""
    from mat_dist.evaluate.model_source import parse

    mean, std = _floats(input_mean, "--input-mean"), _floats(input_std, "--input-std")
    if len(specs) > 1 and weights is not None:
        raise UserError("--weights belongs to one model; with several --model give a models YAML file "
                        "(models: [{name, model, weights, input_mean, input_std}])")
    sources = []
    for text in specs:
        if text.endswith((".yaml", ".yml")) and Path(text).is_file():
            sources += _models_file(Path(text))
            continue
        label, spec = _named(text)
        sources.append(parse(spec, weights=weights, input_mean=mean, input_std=std, label=label))
    return sources


def _named(text: str) -> tuple[str | None, str]:
    name, sep, rest = text.partition("=")
    if sep and re.fullmatch(r"[A-Za-z0-9][\w.-]*", name) and not Path(text).exists():
        return name, rest
    return None, text


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{option} {text!r}: give numbers separated by commas, one per channel") from None


def _models_file(path: Path):
    from mat_dist.config import read_yaml
    from mat_dist.evaluate.model_source import parse

    raw = read_yaml(path)
    entries = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: expected 'models:' with a list of {{name, model, weights, input_mean, input_std}}")
    known = {"name", "model", "weights", "input_mean", "input_std"}
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "model" not in entry:
            raise UserError(f"{path}: models[{i}] must be a mapping with a 'model' key (the SPEC)")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise UserError(f"{path}: models[{i}]: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        weights = entry.get("weights")
        base = path.parent  # relative files in the list are relative to the list
        spec = str(entry["model"])
        if (base / spec).exists():
            spec = str(base / spec)
        out.append(parse(spec, weights=(base / weights) if weights else None, input_mean=entry.get("input_mean"),
                         input_std=entry.get("input_std"), label=entry.get("name")))
    return out


def check_options(*, examples: int | None, workers: int | None, cluster: str | None) -> tuple[int | None, str | None]:
    """(workers, cluster) after the checks that need nothing loaded; ``--cluster none`` is ``--workers 0``."""
    from mat_dist.cluster.files import IN_PROCESS

    if examples is not None and examples < 1:
        raise UserError(f"--examples {examples} must be at least 1 (the first N test images; default: the suite's)")
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers} must be 0 (in this process) or more")
    if cluster == IN_PROCESS:
        if workers:
            raise UserError(f"--cluster {IN_PROCESS} runs in this process; drop --workers {workers} (or the cluster)")
        return 0, None
    return workers, cluster


def run_evaluate(*, run: Path | None, checkpoint: Path | None, suite: str, examples: int | None,
                 cluster: str | None, workers: int | None, output: Path | None, data: str | None,
                 data_root: str | None, tracking_uri: str | None, tracking: bool, overrides: list[str],
                 models: list[str] | None = None, weights: Path | None = None, input_mean: str | None = None,
                 input_std: str | None = None) -> None:
    from mat_dist.evaluate.evaluator import check_cluster
    from mat_dist.evaluate.suite import load_suite

    if models and (run is not None or checkpoint is not None):
        raise UserError("give --model, or one of --run / --checkpoint, not both (a run folder is a --model too)")
    if not models and (weights is not None or input_mean is not None or input_std is not None):
        raise UserError("--weights and --input-mean/--input-std apply to --model only")
    workers, cluster = check_options(examples=examples, workers=workers, cluster=cluster)
    the_suite = load_suite(suite, overrides)
    check_cluster(cluster)  # a bad file or an address nobody answers at: before any model or data is read
    n_workers = workers if workers is not None else len(os.sched_getaffinity(0))
    if not models:
        model_path, run_folder = resolve_model(run, checkpoint)
        from mat_dist.evaluate.model_source import parse

        source = parse(model_path)
        dataset, root = resolve_data(data, data_root, run_folder)
        if output is None:
            base = run_folder if run_folder is not None else model_path.resolve().parent
            output = base / f"eval-{the_suite.name}"
        _evaluate_one(source, output, suite=the_suite, dataset=dataset, root=root, examples=examples,
                      cluster=cluster, workers=n_workers, tracking=tracking, tracking_uri=tracking_uri,
                      run_folder=run_folder)
        return
    sources = parse_models(models, weights=weights, input_mean=input_mean, input_std=input_std)
    dataset, root = _data_for(sources, data, data_root)
    if len(sources) == 1:
        output = output or Path("runs") / f"eval-{sources[0].label}-{the_suite.name}"
        _evaluate_one(sources[0], output, suite=the_suite, dataset=dataset, root=root, examples=examples,
                      cluster=cluster, workers=n_workers, tracking=tracking, tracking_uri=tracking_uri,
                      run_folder=_source_run_folder(sources[0]))
        return
    from mat_dist.evaluate.leaderboard import LEADERBOARD_MD, evaluate_models, ranked

    output = output or Path("runs") / f"leaderboard-{the_suite.name}"

    def one(source, out_dir: Path):
        return _evaluate_one(source, out_dir, suite=the_suite, dataset=dataset, root=root, examples=examples,
                             cluster=cluster, workers=n_workers, tracking=tracking, tracking_uri=tracking_uri,
                             run_folder=_source_run_folder(source))

    entries = evaluate_models(sources, suite=the_suite, output=output, workers=n_workers, cluster=cluster,
                              evaluate_one=one)
    typer.echo("leaderboard (all_attacks, 95% interval):")
    for i, e in enumerate(ranked(entries), 1):
        lo, hi = e.summary["intervals"]["all_attacks"]
        typer.echo(f"  {i}. {e.source.label}: {100 * e.summary['all_attacks']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
    typer.echo(f"done: {output / LEADERBOARD_MD}")


def _data_for(sources, data: str | None, data_root: str | None) -> tuple[str, str | None]:
    """--data, else the data set of the models' run folders (mat-dist models), which must agree."""
    if data is not None:
        return data, data_root
    folders = [_source_run_folder(s) for s in sources]
    found = {resolve_data(None, data_root, f) for f in folders if f is not None}
    if len(found) == 1 and all(s.is_checkpoint for s in sources):
        return found.pop()
    raise UserError(f"pass --data NAME ({DATASETS}): the images to attack the models on")


def _evaluate_one(source, output: Path, *, suite, dataset: str, root: str | None, examples: int | None,
                  cluster: str | None, workers: int, tracking: bool, tracking_uri: str | None,
                  run_folder: Path | None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mat_dist.data import check_data
    from mat_dist.evaluate.evaluator import TrackingOptions, evaluate

    check_data(dataset, root)  # a missing data folder: one line before the model is loaded
    where = f"cluster {cluster}" if cluster else f"{workers} local Ray worker{'s' if workers != 1 else ''}" \
        if workers else "this process"
    options = TrackingOptions(enabled=tracking, uri=tracking_uri, parent_run_id=parent_run_id(run_folder))
    # The banner and the bar come after every check (evaluate's on_start): a refused command prints one line.
    bar = Progress(TextColumn("shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[last]}"))
    task = bar.add_task("shards", total=None, last="")

    def on_start(n: int) -> None:
        typer.echo(f"evaluating {source.location} with suite {suite.name} on {n} {dataset} test images, "
                   f"{where} -> {output}")
        bar.start()

    def on_progress(done: int, total: int, name: str) -> None:
        bar.update(task, completed=done, total=total, last=name)

    try:
        result = evaluate(model=source, suite=suite, output=output, dataset=dataset, data_root=root,
                          examples=examples, workers=workers, cluster=cluster, on_progress=on_progress,
                          tracking=options, on_start=on_start)
    finally:
        if bar.live.is_started:
            bar.stop()
    typer.echo(summary_table(result.summary))
    for w in result.warnings:
        typer.echo(f"warning: {w}", err=True)
    skipped = result.shards_total - result.shards_run
    # wall_time_s sums every call that ran shards: after a resume it is the whole evaluation's cost
    progress = (f"{result.shards_run} shards run, {skipped} already finished; {result.wall_time_s:.0f} s in all"
                if skipped else f"{result.shards_run} shards run in {result.wall_time_s:.0f} s")
    typer.echo(f"done ({progress}): {output / 'report.md'}"
               + (f"; MLflow run {result.tracking_run_id}" if result.tracking_run_id else ""))
    return result


def summary_table(summary: dict) -> str:
    """The console's final table: every figure with its 95% Wilson interval (n images are few: say so)."""
    rows = [("clean", summary["clean"])] + list(summary["attacks"].items()) \
        + [(k, v) for k, v in summary.items() if k.startswith("all_")]
    intervals = summary.get("intervals", {})
    width = max(len(k) for k, _ in rows)
    lines = [f"robust accuracy on {summary['examples']} examples (95% interval)"]
    for key, value in rows:
        bounds = intervals.get(key)
        told = f"  [{100 * bounds[0]:5.1f}, {100 * bounds[1]:5.1f}]" if bounds is not None else ""
        lines.append(f"  {key:<{width}}  {100 * value:5.1f}%{told}")
    return "\n".join(lines)
