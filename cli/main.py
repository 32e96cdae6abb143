"""``matd``: train, evaluate and tune MIMO ensembles against several attack norms.

Each command is thin: parse options, call the library, print. A ``UserError``
and a usage mistake (unknown option, bad value, missing argument) become one
line on stderr and exit code 2; anything else is a bug and keeps its
traceback. Each short flag means one option on every command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from mat_dist.plumbing.errors import UserError


def _flags_without_type(params: list) -> list:
    """A flag takes no value: its ``--help`` row shows none (a ``<bool>`` there invites ``--resume true``)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


app = typer.Typer(
    name="matd",
    help="mat-dist: adversarially trained MIMO ensembles (MAT) robust to l_inf, l_2 and l_1 attacks at once.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"matd (mat-dist) {version('mat-dist')}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print mat-dist's version and exit.")) -> None:
    """mat-dist: adversarially trained MIMO ensembles (MAT) robust to l_inf, l_2 and l_1 attacks at once."""


@app.command("train", cls=_Command, context_settings={"allow_extra_args": False})
def train_command(
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="Config YAML file, or the name of a shipped config (e.g. mnist5k-mat)."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last checkpoint."),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    tracking: bool = typer.Option(True, "--tracking/--no-tracking", help="Log the run to MLflow (the same as "
                                  "tracking.enabled=true/false)."),
    cluster: Optional[str] = typer.Option(
        None, "--cluster", help="Ray cluster file (YAML path, or a shipped name: local, multi-gpu), or HOST:PORT / "
        "ray://HOST:PORT of a running cluster. Default: clusters/local.yaml, a local Ray runtime with 1 worker. "
        "'none': the in-process loop, without Ray."),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="Config overrides key.sub=value, e.g. train.epochs=3 attack.eps=[5,1,0.1]."),
) -> None:
    """Train a model as a Ray Train job (DDP over the cluster file's workers); writes config, metrics.jsonl,
    checkpoints and the final model to --output."""
    from mat_dist.cli.train_cmd import run_train

    run_train(config=config, output=output, resume=resume, tracking_uri=tracking_uri,
              overrides=list(overrides or []) + ([] if tracking else ["tracking.enabled=false"]), cluster=cluster)


@app.command("evaluate", cls=_Command, context_settings={"allow_extra_args": False})
def evaluate_command(
    run: Optional[Path] = typer.Option(None, "--run", help="Training run folder (its model.safetensors)."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="A .safetensors weights file or a checkpoint folder."),
    model: Optional[list[str]] = typer.Option(
        None, "--model", "-m", help="Any model mapping [0, 1] images to logits: a TorchScript file, a "
        "torch.export .pt2, an .onnx file (gradient-free attacks only), package.module:function or file.py:function "
        "returning an nn.Module, or a mat-dist run folder. NAME=SPEC names it. Repeat for a leaderboard."),
    weights: Optional[Path] = typer.Option(
        None, "--weights", help="With a factory --model: its weights (.safetensors, or a state dict)."),
    input_mean: Optional[str] = typer.Option(
        None, "--input-mean", help="Per-channel mean the model expects its inputs normalised by, e.g. 0.1307 "
        "or 0.4914,0.4822,0.4465 (attacks still work on [0, 1] pixels)."),
    input_std: Optional[str] = typer.Option(None, "--input-std", help="Per-channel std, with --input-mean."),
    suite: str = typer.Option("quick", "--suite", "-s", help="Suite YAML file, or a shipped suite: quick, field, "
                              "field-cifar10, blackbox, paper, full."),
    examples: Optional[int] = typer.Option(None, "--examples", "-n", help="Evaluate the first N test images "
                                           "(default: the suite's)."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Ray cluster file or HOST:PORT, as for training "
                                          "(default: a local Ray runtime with --workers CPUs; 'none': in this "
                                          "process, as --workers 0)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="CPUs of the local Ray runtime "
                                          "(default: all of this machine's; 0: no Ray, in this process)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default: <run>/eval-<suite>; "
                                          "--model: runs/eval-<name>-<suite>, several: runs/leaderboard-<suite>); "
                                          "re-running the same command resumes it."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset: mnist5k, mnist, cifar10, digits, arrays "
                                       "(default: the run's; needed for a model mat-dist did not train)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Folder of MNIST / CIFAR-10 files, or the "
                                            ".npz file of --data arrays."),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    tracking: bool = typer.Option(True, "--tracking/--no-tracking", help="Log the evaluation to MLflow."),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="Suite overrides key.sub=value, e.g. eps.linf=0.3 attacks.pgd_linf.params.steps=50."),
) -> None:
    """Attack a model with a suite, sharded over Ray; writes results.parquet, summary.json, report.md (several
    --model: one folder each and leaderboard.md / leaderboard.parquet)."""
    from mat_dist.cli.evaluate_cmd import run_evaluate

    run_evaluate(run=run, checkpoint=checkpoint, models=list(model or []), weights=weights,
                 input_mean=input_mean, input_std=input_std, suite=suite, examples=examples, cluster=cluster, workers=workers,
                 output=output, data=data, data_root=data_root, tracking_uri=tracking_uri, tracking=tracking,
                 overrides=list(overrides or []))


@app.command("tune", cls=_Command, context_settings={"allow_extra_args": False})
def tune_command(
    space: Optional[str] = typer.Option(
        None, "--space", help="Search space YAML, or a shipped space: mnist5k-cpu, mnist5k-paper, mnist5k-paper-pbt,"
        " mnist-paper, cifar10-paper."),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="Base config (file or shipped name); default: the space's base:."),
    cluster: Optional[str] = typer.Option(
        None, "--cluster", help="Ray cluster file, as for training; its workers section is ONE trial "
        "(1 worker: the core loop in the trial's process; more: each trial a Ray Train job). Default: local, 1 CPU."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Random trials (per grid point); "
                                         "default: the space's trials:."),
    time_budget: Optional[float] = typer.Option(
        None, "--time-budget", help="Wall seconds for the trials; then Tune stops them and the sweep ranks what "
        "finished (default: the space's time_budget_s:, none)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Sweep folder (default: runs/tune-<space>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted sweep in --output; finished "
                                "trials are not run again."),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    tracking: bool = typer.Option(True, "--tracking/--no-tracking", help="Log the sweep and its trials to MLflow "
                                  "(the same as the override tracking.enabled=true/false)."),
    fidelity: Optional[int] = typer.Option(
        None, "--fidelity", help="Re-train the top K trials (and the space's fidelity.random more, drawn at "
        "random) at the full budget and report the proxy's Spearman rank correlation (fidelity.csv, .png); "
        "default: the space's fidelity.top (0: none). Works on a finished sweep with --resume."),
    confirm: int = typer.Option(
        0, "--confirm", help="Train the best config and the base config with N seeds each at the full budget and "
        "evaluate them on the test images with --confirm-suite, in one table with intervals (confirm.json)."),
    confirm_suite: str = typer.Option("field", "--confirm-suite", help="Suite of --confirm (name or file)."),
    confirm_examples: Optional[int] = typer.Option(
        None, "--confirm-examples", help="Test images of --confirm (default: the suite's examples)."),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="Base config overrides key.sub=value, applied after the space's overrides."),
) -> None:
    """Search attack step sizes, radii, loss weights, K, lr with Ray Tune (random or TPE with ASHA, or PBT for a
    per-epoch schedule); writes trials.csv, a plot, the Pareto front against training cost, best_config.yaml and
    report.md to --output."""
    from mat_dist.cli.tune_cmd import run_tune

    run_tune(space=space, config=config, cluster=cluster, trials=trials, output=output, resume=resume,
             tracking_uri=tracking_uri, overrides=list(overrides or []), tracking=tracking, fidelity=fidelity,
             confirm=confirm, confirm_suite=confirm_suite, confirm_examples=confirm_examples, time_budget=time_budget)


@app.command("bench", cls=_Command)
def bench_command(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results as JSON here."),
    parts: str = typer.Option("methods,switches", "--parts", help="Comma-separated: methods (every training "
                              "method and the floor), switches (the fast path's train.* switches), projection (the l_1 "
                              "projection, sort against fixed point, and the l_1 step), evaluator "
                              "(examples/s per attack, 2 vs 1 workers), ray_train (Ray Train vs in-process, 2 vs "
                              "1 workers); or all."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods of the methods part "
                                          "(default: all; at brings AT in l_2 and l_1 along)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto (methods, switches, projection)."),
    backbone: str = typer.Option("mnist_cnn", "--backbone", help="Backbone of every method's model."),
    batch_size: int = typer.Option(64, "--batch-size", help="Rows per batch (each row carries M images)."),
    members: int = typer.Option(3, "--members", help="M, the sub-models of the MIMO methods."),
    steps: int = typer.Option(10, "--steps", help="K, attack steps per batch."),
    repeats: int = typer.Option(7, "--repeats", help="Timed rounds (after 2 warm-up rounds)."),
    image_size: int = typer.Option(28, "--image-size", help="Input height and width (pixels)."),
    channels: int = typer.Option(1, "--channels", help="Input channels."),
    model: Path = typer.Option(Path("runs/mnist5k-mat"), "--model", "-m", help="Trained run folder or weights file "
                               "the evaluator part attacks (default: the README's main run)."),
    suite: str = typer.Option("quick", "--suite", help="Suite whose attacks the evaluator part times."),
    eval_examples: int = typer.Option(100, "--eval-examples", help="Test images per evaluator measurement."),
    train_config: str = typer.Option("mnist5k-mat", "--train-config", help="Config of the ray_train part's runs "
                                     "(shortened by --train-override)."),
    train_overrides: list[str] = typer.Option(
        ["train.epochs=2", "data.limit_train=1024", "eval.examples=100"], "--train-override",
        help="key.sub=value for the ray_train part's config (repeatable; replaces the defaults)."),
) -> None:
    """Time every training method, the fast path, the evaluator and Ray Train, interleaved; medians and ratios."""
    from mat_dist.cli.bench_cmd import run_bench

    run_bench(output=output, parts=parts, device=device, backbone=backbone, batch_size=batch_size,
              members=members, steps=steps, repeats=repeats, image_size=image_size, channels=channels, model=model,
              suite=suite, eval_examples=eval_examples, train_config=train_config,
              train_overrides=list(train_overrides), methods=methods)


@app.command("reproduce", cls=_Command, context_settings={"allow_extra_args": False})
def reproduce_command(
    preset: Optional[str] = typer.Option(
        None, "--preset", "-p", help="Preset: tiny, tiny-paper-radii, tiny-study, mnist5k-cpu, mnist5k-paper-radii, "
                                     "mnist5k-study, mnist-paper, cifar10-paper (--list shows them)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default: "
                                          "runs/reproduce-<preset>); re-running the same command resumes it."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Ray cluster file or HOST:PORT for training and "
                                          "evaluation (default: train in this process, evaluate as the preset says; "
                                          "'none': everything in this process)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Local Ray workers of the evaluator "
                                          "(default: the preset's; 0: in this process)."),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="Write report.md and the figures here "
                                              "(default: --output)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Train and evaluate every method with run seeds "
                                        "0..N-1 (default 1); the report gives mean and spread over them. A larger N "
                                        "on a finished --output adds the new seeds. With --close, the first N of the "
                                        "preset's close_seeds now (default all), e.g. 1 to evaluate the first "
                                        "stage's weights before training new seeds."),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    tracking: bool = typer.Option(True, "--tracking/--no-tracking", help="Log to MLflow (one parent run)."),
    list_presets: bool = typer.Option(False, "--list", help="List the presets and exit; with --close, print the "
                                      "close set's methods (one a line; their unions on stderr) and exit."),
    close: bool = typer.Option(False, "--close", help="A study's second stage: the methods within the preset's "
                               "close_margin points of the best first-seed union (and mat_rotate) get seeds "
                               "0..close_seeds-1, every one evaluated on close_examples images into "
                               "<output>/evals-<N>; needs every method's first seed finished in --output (or --provisional)."),
    provisional: bool = typer.Option(False, "--provisional", help="With --close: draw the close set from the "
                                     "methods whose first seed is finished so far (the others may change it later); "
                                     "seed 0's weights are only where the first stage ran, so evaluate them first."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated methods of the preset to train and "
                                       "evaluate now (with the ones they are fine-tuned from); a study's report "
                                       "covers every finished method."),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="Config overrides for every method, key.sub=value, e.g. data.root=/data/mnist."),
) -> None:
    """Train every method of the paper, evaluate each with one suite, write a paper-shaped report with figures."""
    from mat_dist.cli.reproduce_cmd import run_reproduce

    run_reproduce(preset=preset, output=output, cluster=cluster, workers=workers, report_dir=report_dir,
                  tracking_uri=tracking_uri, tracking=tracking, list_presets=list_presets,
                  overrides=list(overrides or []), seeds=seeds, close=close, provisional=provisional,
                  only=[m.strip() for m in only.split(",") if m.strip()] if only else None)


@app.command("validate", cls=_Command, context_settings={"allow_extra_args": False})
def validate_command(
    file: str = typer.Argument(..., help="The YAML file to check (with --kind, also a shipped name)."),
    # The values of mat_dist.file_kinds.FileKind, not imported here so that every other command starts without pydantic.
    kind: Optional[Literal["run", "cluster", "suite", "space", "models"]] = typer.Option(
        None, "--kind", "-k", help="What the file is. Default: detected from its top-level keys, the kind that "
        "knows most of them: params: a search space; attacks:, eps: a suite; workers:, address:, storage:, several "
        "YAML documents or a mat_dist: section: a cluster file; data:, model:, attack:, train: ...: a run config; "
        "models: a models file (matd evaluate --model FILE)."),
) -> None:
    """Check a run config, cluster file, suite, search space (its values against its base config) or models
    file (every model found): prints 'FILE: valid <kind> (...)', or the one error line and exits 2, as every
    mistake does."""
    from mat_dist.cli.validate_cmd import run_validate

    run_validate(file=file, kind=kind)


@app.command("configs", cls=_Command)
def list_configs() -> None:
    """List the configs that ship with mat-dist."""
    from mat_dist.core.run_config import SHIPPED_CONFIGS

    for path in sorted(SHIPPED_CONFIGS.glob("*.yaml")):
        first = path.read_text().splitlines()[0].lstrip("# ").strip()
        typer.echo(f"{path.stem:24s} {first}")


@app.command("methods", cls=_Command)
def list_methods() -> None:
    """List the training methods."""
    from mat_dist.core.methods import METHODS

    for method in METHODS.values():
        typer.echo(f"{method.name:14s} {method.description}")


INTERRUPTED = "matd: interrupted; --resume continues from the last whole checkpoint"


def _from_ctrl_c(exc: BaseException) -> bool:
    """True when ``exc`` was raised while handling a KeyboardInterrupt (Typer turns one into a silent exit 130)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _usage_line(err) -> str:
    """A usage mistake (unknown option, bad value, missing argument) as the one line every other mistake gets."""
    message = " ".join(err.format_message().split()).rstrip(".")
    where = err.ctx.command_path if getattr(err, "ctx", None) is not None else "matd"
    return f"{message[0].lower()}{message[1:]}; see `{where} -h`"


# Packages a machine may lack (a GPU machine without Ray or MLflow, say): what to do instead, in one line.
OPTIONAL_PACKAGES = {
    "ray": "Ray is not installed: train in this process with --cluster none, evaluate with --workers 0",
    "mlflow": "MLflow is not installed: turn tracking off (tracking.enabled=false for train and tune, "
              "--no-tracking for evaluate)",
}


def missing_package_line(err: ModuleNotFoundError) -> str | None:
    """One line for a missing optional package (None for any other missing module: a bug, with traceback)."""
    root = (err.name or "").split(".")[0]
    return OPTIONAL_PACKAGES.get(root)


def main() -> None:
    """``matd``: every user mistake is one line on stderr and exit code 2; Ctrl-C is exit 130."""
    try:  # typer >= 0.25 carries its own copy of click
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException
    try:
        code = app(standalone_mode=False)
    except ClickException as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # a bare ``matd``: the help, as asked
            typer.echo(err.ctx.get_help())
            sys.exit(2)
        typer.echo(f"matd: error: {_usage_line(err)}", err=True)
        sys.exit(2)
    except UserError as err:
        typer.echo(f"matd: error: {err}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as err:
        line = missing_package_line(err)
        if line is None:
            raise
        typer.echo(f"matd: error: {line}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except SystemExit as exit_:
        if exit_.code == 130 and _from_ctrl_c(exit_):
            typer.echo(INTERRUPTED, err=True)
        raise
    if code == 130:  # Typer turns a KeyboardInterrupt into an exit code of 130
        typer.echo(INTERRUPTED, err=True)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
