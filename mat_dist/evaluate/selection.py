"""What ``matd evaluate`` evaluates: the models named, the run folders they come from, the data set, the folders.

    choose(run=..., checkpoint=..., models=[...], data=..., output=..., suite_name="field") -> EvaluationPlan

- ``--run DIR`` / ``--checkpoint PATH``: one mat-dist model; its run folder
  (the folder above it that holds config.yaml) names the data set and the
  MLflow run the evaluation nests under; output ``<run>/eval-<suite>``.
- ``--model SPEC`` (``NAME=SPEC`` names it; a ``.yaml`` file lists several,
  ``mat_dist.evaluate.models_file``): any model; ``--data`` names the images,
  unless every model is a mat-dist run whose configs agree on one. One model:
  output ``runs/eval-<name>-<suite>``; several: a leaderboard in
  ``runs/leaderboard-<suite>``, one folder per model.

Nothing here attacks or loads data: every mistake is one UserError line before the work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mat_dist.plumbing.errors import UserError
from mat_dist.evaluate.model_source import ModelSource, parse_source
from mat_dist.evaluate.models_file import NAME, load_models_file
from mat_dist.core.run_folder import RunFolder

DATASETS = "mnist5k, mnist, cifar10, digits, arrays"


@dataclass(frozen=True)
class Target:
    """One model to evaluate into ``output``; ``run_folder``: the mat-dist run it belongs to, if any."""

    source: ModelSource
    output: Path
    run_folder: Path | None = None

    @property
    def parent_run_id(self) -> str | None:
        """The MLflow run of the training run folder (its run.json), which the evaluation nests under."""
        run_file = RunFolder(self.run_folder).run_record if self.run_folder is not None else None
        if run_file is None or not run_file.is_file():
            return None
        try:
            return json.loads(run_file.read_text()).get("run_id")
        except (json.JSONDecodeError, AttributeError):
            return None


@dataclass(frozen=True)
class EvaluationPlan:
    targets: tuple[Target, ...]
    dataset: str
    data_root: str | None
    leaderboard: Path | None = None  # several models: the folder of leaderboard.md, above theirs


def check_choice(*, run: Path | None, checkpoint: Path | None, models: Sequence[str], weights: Path | None,
                 input_mean: Sequence[float] | None, input_std: Sequence[float] | None) -> None:
    """The options that cannot go together, before anything is read."""
    if models and (run is not None or checkpoint is not None):
        raise UserError("give --model, or one of --run / --checkpoint, not both (a run folder is a --model too)")
    if not models and (weights is not None or input_mean is not None or input_std is not None):
        raise UserError("--weights and --input-mean/--input-std apply to --model only")
    if len(models) > 1 and weights is not None:
        raise UserError("--weights belongs to one model; with several --model give a models YAML file "
                        "(models: [{name, model, weights, input_mean, input_std}])")


def choose(*, suite_name: str, run: Path | None = None, checkpoint: Path | None = None,
           models: Sequence[str] = (), weights: Path | None = None, input_mean: Sequence[float] | None = None,
           input_std: Sequence[float] | None = None, data: str | None = None, data_root: str | None = None,
           output: Path | None = None) -> EvaluationPlan:
    """The models, data set and output folders of one ``matd evaluate``; a UserError line for any mistake."""
    check_choice(run=run, checkpoint=checkpoint, models=models, weights=weights, input_mean=input_mean,
                 input_std=input_std)
    if not models:
        model_path, run_folder = _mat_dist_model(run, checkpoint)
        source = parse_source(model_path)
        dataset, root = _data_of_run(data, data_root, run_folder)
        if output is None:
            base = run_folder if run_folder is not None else model_path.resolve().parent
            output = base / f"eval-{suite_name}"
        return EvaluationPlan(targets=(Target(source, output, run_folder),), dataset=dataset, data_root=root)
    sources = parse_models(models, weights=weights, input_mean=input_mean, input_std=input_std)
    dataset, root = _data_of_models(sources, data, data_root)
    if len(sources) == 1:
        output = output or Path("runs") / f"eval-{sources[0].label}-{suite_name}"
        return EvaluationPlan(targets=(Target(sources[0], output, run_folder_of_source(sources[0])),), dataset=dataset,
                         data_root=root)
    check_labels(sources)
    board = output or Path("runs") / f"leaderboard-{suite_name}"
    return EvaluationPlan(targets=tuple(Target(s, board / s.label, run_folder_of_source(s)) for s in sources),
                     dataset=dataset, data_root=root, leaderboard=board)


# ------------------------------------------------------------------ the models

def parse_models(specs: Sequence[str], *, weights: Path | None = None, input_mean: Sequence[float] | None = None,
                 input_std: Sequence[float] | None = None) -> list[ModelSource]:
    """ModelSources from --model values (NAME=SPEC names one; a .yaml file lists several)."""
    sources = []
    for text in specs:
        if text.endswith((".yaml", ".yml")) and Path(text).is_file():
            sources += load_models_file(Path(text))
            continue
        label, spec = _named(text)
        sources.append(parse_source(spec, weights=weights, input_mean=input_mean, input_std=input_std, label=label))
    return sources


def check_labels(sources: Sequence[ModelSource]) -> None:
    """Several models need several names: each is a folder of the leaderboard and a row of its table."""
    seen: set[str] = set()
    for s in sources:
        if s.label in seen:
            raise UserError(f"two models are named {s.label!r}; name them with NAME=SPEC (e.g. --model "
                            f"mine={s.location})")
        seen.add(s.label)


def _named(text: str) -> tuple[str | None, str]:
    """(NAME, SPEC) of NAME=SPEC; (None, text) for a bare SPEC (a file whose name holds '=' included)."""
    name, sep, rest = text.partition("=")
    if sep and NAME.fullmatch(name) and not Path(text).exists():
        return name, rest
    return None, text


def _mat_dist_model(run: Path | None, checkpoint: Path | None) -> tuple[Path, Path | None]:
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
    return checkpoint, run_folder_of(checkpoint.resolve())


# ------------------------------------------------------------------ run folders and data sets

def run_folder_of(path: Path) -> Path | None:
    """The run folder a weights file or checkpoint folder belongs to (it holds config.yaml), if any."""
    for folder in [path, *path.parents][:4]:  # run/, run/checkpoints/epoch-N/, and the files in them
        if RunFolder(folder).config.is_file():
            return folder
    return None


def run_folder_of_source(source: ModelSource) -> Path | None:
    """The run folder of a mat-dist checkpoint source (its config names the data set); None otherwise."""
    return run_folder_of(Path(source.location)) if source.is_checkpoint else None


def _data_of_run(data: str | None, data_root: str | None, run_folder: Path | None) -> tuple[str, str | None]:
    """--data, else the data set (and folder) the run folder's config trained on."""
    if data is not None:
        return data, data_root
    if run_folder is not None:
        from mat_dist.plumbing.schema import read_yaml

        raw = read_yaml(RunFolder(run_folder).config) or {}
        section = raw.get("data") or {}
        return str(section.get("name", "mnist5k")), data_root or section.get("root")
    raise UserError("the checkpoint is not inside a run folder, so its dataset is unknown; pass --data NAME "
                    f"({DATASETS})")


def _data_of_models(sources: list[ModelSource], data: str | None, data_root: str | None) -> tuple[str, str | None]:
    """--data, else the data set of the models' run folders (mat-dist models), which must agree."""
    if data is not None:
        return data, data_root
    folders = [run_folder_of_source(s) for s in sources]
    found = {_data_of_run(None, data_root, f) for f in folders if f is not None}
    if len(found) == 1 and all(s.is_checkpoint for s in sources):
        return found.pop()
    raise UserError(f"pass --data NAME ({DATASETS}): the images to attack the models on")
