"""``evaluate``: model + suite -> shards on Ray -> results.parquet, summary.json, report.md, curves, MLflow.

Output folder:
    eval.json          what this folder evaluates (model file, suite, examples); a re-run must match it
    calls.jsonl        one line per call that ran shards: its wall time (s), workers and shards finished;
                       the report's wall time is their sum, so a resumed evaluation reports its whole cost
    shards/            one Parquet file per finished shard (resume skips these)
    results.parquet    one row per (example, attack) of the suite, on the deployed ensemble
    transfer.parquet   one row per (example, attack, source model, target model)
    curves.parquet, curves.csv, curves.png
    summary.json       clean, per attack, all_linf / all_l2 / all_l1, all_attacks, transfer, warnings
    report.md          the paper's Table 4 shape, transferability, sub-models, curves, warnings
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from mat_dist.plumbing.atomic import append_jsonl, probe_writable, read_jsonl, write_atomic
from mat_dist.data import NUM_CLASSES, load_splits
from mat_dist.plumbing.errors import UserError
from mat_dist.evaluate import curves as curves_mod
from mat_dist.evaluate import metrics, eval_report as report, sanity
from mat_dist.core.autoattack import is_full_strength
from mat_dist.evaluate.contract import CHECK_IMAGES, check_contract
from mat_dist.evaluate.model_source import ModelSource
from mat_dist.evaluate.model_source import parse_source as parse_model
from mat_dist.evaluate.runner import Chaos, ProgressFn, run_shards
from mat_dist.evaluate.shards import SHARDS_DIR, merge_shards, plan_shards
from mat_dist.evaluate.suite import Suite, plan_jobs, without_gradients
from mat_dist.plumbing.schema import differing_leaves

FINGERPRINT = "eval.json"
CALLS = "calls.jsonl"


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    output: Path
    summary: dict[str, Any]
    warnings: list[str]
    shards_run: int
    shards_total: int
    wall_time_s: float
    tracking_run_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class TrackingOptions:
    enabled: bool = True
    uri: str | None = None
    experiment: str = "mat-dist"
    parent_run_id: str | None = None   # the training run, when there is one
    extra_tags: dict[str, str] = field(default_factory=dict)


def _shown(value: Any) -> str:
    """A fingerprint value for one line: digests cut to 12 characters, None as 'unset'."""
    if value is None:
        return "unset"
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return f"{text[:12]}..." if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def fingerprint_mismatch(output: Path, previous: dict[str, Any], fingerprint: dict[str, Any]) -> str:
    """The one line for an output folder that holds another evaluation: each difference, old and new value."""
    diffs = differing_leaves(previous, fingerprint)
    told = "; ".join(f"{key} {_shown(a)} there, {_shown(b)} now" for key, a, b in diffs[:3])
    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
    hint = ""
    if [key for key, _, _ in diffs] == ["examples"]:
        hint = f"rerun with -n {previous['examples']} to resume it, or "
    return (f"{output} holds another evaluation ({told}{more}); {hint}choose another --output "
            f"(finished shards would not match)")


def _check_fingerprint(output: Path, fingerprint: dict[str, Any]) -> None:
    """A folder holds one evaluation: resuming with another model, suite or example count is refused."""
    path = output / FINGERPRINT
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != fingerprint:
            raise UserError(fingerprint_mismatch(output, previous, fingerprint))
        return
    write_atomic(path, json.dumps(fingerprint, indent=1, sort_keys=True))


def check_cluster(cluster: str | os.PathLike | None) -> None:
    """A cluster file that cannot be read, or an address nobody answers at: one line now, before the output
    folder exists (``None``: a private local runtime, nothing to check)."""
    if cluster is None:
        return
    from mat_dist.cluster import load_cluster
    from mat_dist.cluster.runtime import check_reachable

    check_reachable(load_cluster(cluster))


def _finished_shards(output: Path) -> int:
    return sum(1 for _ in (output / SHARDS_DIR).glob("*.parquet")) if (output / SHARDS_DIR).is_dir() else 0


def _record_call(output: Path, *, wall_s: float, workers: int, shards_finished: int) -> None:
    if shards_finished:  # a call that only merged finished shards adds nothing to the evaluation's cost
        append_jsonl(output / CALLS, {"wall_s": wall_s, "workers": workers, "shards_finished": shards_finished})


def _calls(output: Path) -> list[dict[str, Any]]:
    return read_jsonl(output / CALLS)


def trained_as(weights: Path) -> str | None:
    """The training method of the run folder holding ``weights`` as the paper's tables name it (AT with its
    norm: ``at_linf``); None for weights outside a run folder."""
    from mat_dist.core.run_config import read_yaml
    from mat_dist.core.run_folder import CONFIG_FILE

    try:
        raw = read_yaml(weights.parent / CONFIG_FILE) or {}
        method = raw["method"]["name"]
        return f"at_{raw['attack']['norms'][0]}" if method == "at" else str(method)
    except (OSError, UserError, KeyError, IndexError, TypeError):
        return None


def load_test_images(dataset: str, root: str | None, examples: int, spec=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``examples`` test images of ``dataset``, checked against a mat-dist model's input shape
    (``spec``; a foreign model's shape is checked by its contract instead)."""
    images, labels, _ = _test_images(dataset, root, examples, spec)
    return images, labels


def _test_images(dataset: str, root: str | None, examples: int, spec) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``load_test_images`` and the data set's number of classes."""
    splits = load_splits(dataset, root=root, val_size=0)
    test = splits.test
    if examples > len(test):
        raise UserError(f"--examples {examples} is more than the {len(test)} test images of {dataset}; "
                        f"use at most {len(test)}")
    shape = tuple(test.images.shape[1:])
    expected = shape if spec is None else (spec.in_channels, *spec.image_size)
    if shape != expected:
        raise UserError(f"the model takes {'x'.join(map(str, expected))} images but {dataset} has "
                        f"{'x'.join(map(str, shape))}; pass the dataset the model was trained on (--data)")
    return test.images[:examples].contiguous(), test.labels[:examples].contiguous(), splits.num_classes


def evaluate(*, model_path: str | os.PathLike | None = None, model: ModelSource | None = None, suite: Suite,
             output: Path, dataset: str, data_root: str | None = None, examples: int | None = None,
             workers: int = 2, cluster: str | os.PathLike | None = None, on_progress: ProgressFn | None = None,
             tracking: TrackingOptions | None = None, chaos: Chaos | None = None,
             data: tuple[torch.Tensor, torch.Tensor] | None = None,
             on_start: Callable[[int], None] | None = None) -> EvalResult:
    """Evaluate one model: a mat-dist checkpoint (``model_path``) or any ``ModelSource`` (``model``).

    ``data`` (images in [0, 1], labels) replaces the data set's test images; ``dataset`` then only names them.
    Every input (model, data, cluster, tracking store, output folder) is checked before the output folder is
    made; ``on_start(examples)`` is called after those checks, before the first shard runs.
    """
    start = time.perf_counter()
    if (model_path is None) == (model is None):
        raise UserError("give exactly one model: a mat-dist checkpoint path or a model source")
    if model is None:
        model = parse_model(Path(model_path))
    net = model.load()  # validates the file here, before any worker sees it
    spec = getattr(net, "spec", None) if model.is_checkpoint else None
    n = examples if examples is not None else suite.examples  # 0 is a mistake, not 'the default'
    if n < 1:
        raise UserError(f"--examples {n} must be at least 1")
    if workers < 0:
        raise UserError(f"--workers {workers} must be 0 (in this process) or more")
    images, labels, num_classes = _images(data, dataset, data_root, n, spec)
    if num_classes is None:  # images given as tensors: the model, not the labels, says how many classes
        num_classes = _model_classes(net, images, spec)
        if num_classes is not None:  # None: the model fails on the images, which the contract reports below
            _check_labels(data[1], num_classes)
    dropped: tuple[str, ...] = ()
    if not model.differentiable:
        suite, dropped = without_gradients(suite)
    if not model.is_checkpoint:
        check_contract(net, images, labels, num_classes=num_classes or NUM_CLASSES, label=model.label,
                       needs_gradients=model.differentiable)
    check_cluster(cluster)
    fingerprint = {**model.fingerprint(), **data_id_of(data, dataset, images), "examples": n,
                   "suite": suite.to_dict()}
    if (output / FINGERPRINT).is_file():
        _check_fingerprint(output, fingerprint)  # another evaluation's folder: refused before anything is written
    try:
        probe_writable(output)
    except OSError as err:
        raise UserError(f"output folder {output} is not writable ({err.strerror}); choose another --output") from None
    if tracking is not None and tracking.enabled:  # last of the checks: it creates the store's experiment
        from mat_dist.plumbing.tracking import check_store

        check_store(tracking.uri, tracking.experiment)  # an unreachable server fails now, not after the attacks
    output.mkdir(parents=True, exist_ok=True)
    _check_fingerprint(output, fingerprint)
    if on_start is not None:
        on_start(n)
    jobs = plan_jobs(suite, num_members=spec.num_members if spec is not None else 0, examples=n)
    shards = plan_shards(jobs, suite.shard_size)
    done_before = _finished_shards(output)
    try:
        shards_run = run_shards(shards, model=model, images=images, labels=labels, out_dir=output,
                                base_seed=suite.seed, resources=suite.resources, workers=workers, cluster=cluster,
                                on_progress=on_progress, chaos=chaos)
    finally:  # an interrupted call's time counts too: its finished shards are not run again
        _record_call(output, wall_s=time.perf_counter() - start, workers=workers,
                     shards_finished=_finished_shards(output) - done_before)
    table = merge_shards(shards, output)
    calls = _calls(output)  # seconds spent running this folder's shards, over every call
    wall = sum(call["wall_s"] for call in calls) or time.perf_counter() - start
    return _write_outputs(table, suite=suite, output=output, model=net, source=model, dataset=dataset,
                          images=images, labels=labels, num_classes=num_classes, workers=workers, wall=wall,
                          calls=max(1, len(calls)),
                          shards_run=shards_run, shards_total=len(shards), dropped=dropped,
                          tracking=tracking or TrackingOptions(enabled=False))


def _images(data, dataset: str, root: str | None, n: int,
            spec) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """(images, labels, classes): a data set's first ``n`` test images and its class count, or the first ``n``
    of ``data`` and None (the model's output width gives the classes of images given as tensors)."""
    if data is None:
        return _test_images(dataset, root, n, spec)
    images, labels = data
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or labels.shape != images.shape[:1]:
        raise UserError("data must be (images (N, C, H, W), labels (N,)) tensors")
    if n > len(images):
        raise UserError(f"--examples {n} is more than the {len(images)} images given; use at most {len(images)}")
    if not torch.isfinite(images).all():  # before the range check: NaN compares false to both bounds
        bad = int((~torch.isfinite(images)).flatten(1).any(dim=1).sum())
        raise UserError(f"data images must be finite: {bad} of {len(images)} hold NaN or infinite pixels; "
                        f"give images in [0, 1]")
    if images.min() < 0 or images.max() > 1:
        raise UserError("data images must lie in [0, 1]; the model source normalises (input_mean/input_std)")
    return images[:n].float().contiguous(), labels[:n].long().contiguous(), None


def data_id_of(data, dataset: str, images: torch.Tensor) -> dict[str, str]:
    """What names the evaluated images in eval.json: the data set, and a digest of tensors given directly."""
    return {"dataset": dataset} if data is None else {"dataset": dataset, "data_sha256": _tensor_digest(images)}


def _model_classes(net, images: torch.Tensor, spec) -> int | None:
    """K, the classes of the model: a mat-dist checkpoint's spec, else the width of the logits (N, K) it returns
    on the images the contract checks; None when that call fails or gives no (N, K) tensor (the contract then
    says what is wrong, in its words)."""
    if spec is not None:
        return int(spec.num_classes)
    try:
        with torch.no_grad():
            out = net(images[:CHECK_IMAGES])
    except Exception:  # noqa: BLE001 - the user's model: check_contract turns the failure into one line
        return None
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Labels given as a tensor must be class indices of the model, 0..K-1; one line names the first that is
    not (a label of 12 for a 10-class model is a mistake in the data, not an 11th class)."""
    bad = (labels < 0) | (labels >= num_classes)
    if labels.is_floating_point():
        bad |= labels != labels.round()  # a fraction, or NaN (never equal to itself)
    if bad.any():
        value = labels[bad][0].item()
        raise UserError(f"data labels must be class indices 0..{num_classes - 1}, the {num_classes} classes the "
                        f"model scores; {int(bad.sum())} of {len(labels)} are not (the first: {value:g})")


def _tensor_digest(images: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


def _write_outputs(table, *, suite: Suite, output: Path, model, source: ModelSource, dataset: str, images, labels,
                   num_classes: int, workers: int, wall: float, calls: int, shards_run: int, shards_total: int,
                   dropped: tuple[str, ...], tracking: TrackingOptions) -> EvalResult:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    group = table.column("group")
    suite_rows = table.filter(pc.equal(group, "suite"))
    transfer_rows = table.filter(pc.equal(group, "transfer"))
    curve_rows = table.filter(pc.starts_with(group, "curve_"))
    pq.write_table(suite_rows, output / "results.parquet")
    summary = metrics.union_summary(suite_rows)
    attack_info = {a.name: {"attack": a.attack, "norm": a.norm.value, "eps": a.eps, "library": a.kind.library,
                            "full_strength_autoattack": a.attack == "autoattack" and is_full_strength(a.params)}
                   for a in suite.attacks}
    transfer = {}
    if transfer_rows.num_rows:
        pq.write_table(transfer_rows, output / "transfer.parquet")
        transfer = metrics.transfer_tables(transfer_rows)
    points: list[dict[str, Any]] = []
    figure = None
    if curve_rows.num_rows:
        pq.write_table(curve_rows, output / "curves.parquet")
        points = metrics.curve_points(curve_rows)
        curves_mod.write_curves_csv(points, output / "curves.csv")
        radii = {a.name: a.eps for a in suite.attacks}
        figure = curves_mod.plot_curves(points, output / "curves.png", radii=radii, title=source.label,
                                        subtitle=f"{dataset}, suite {suite.name}; bands: 95% Wilson intervals")
    found = sanity.chance_warnings(summary, num_classes=num_classes)
    found += sanity.gradient_warnings(model, images, labels, seed=suite.seed) if source.differentiable else []
    found += sanity.black_box_warnings(summary, attack_info, suite.sanity.black_box_margin)
    found += sanity.curve_warnings(points, max_final_accuracy=suite.sanity.max_final_accuracy,
                                   tolerance=suite.sanity.curve_tolerance)
    spec = getattr(model, "spec", None) if source.is_checkpoint else None
    meta = {"suite": suite.name, "model": source.location, "model_kind": source.kind, "label": source.label,
            "dataset": dataset, "num_members": spec.num_members if spec is not None else None,
            "ensemble_output": spec.ensemble_output.value if spec is not None else None,
            "workers": workers, "wall_time_s": wall, "machine": report.machine(), "versions": _versions(),
            "trained_as": trained_as(Path(source.location)) if source.is_checkpoint else None, "calls": calls,
            "white_box": source.differentiable, "dropped_attacks": list(dropped)}
    full = {**summary, "attack_info": attack_info, "transfer": transfer, "curves": points, "warnings": found,
            "meta": meta}
    write_atomic(output / "summary.json", json.dumps(full, indent=1))
    shown = {**meta, "model": report.shown_location(source.location)}  # no absolute path of this machine
    write_atomic(output / "report.md", report.render(summary=summary, attack_info=attack_info, meta=shown,
                                                     transfer=transfer, curves=points, warnings=found))
    run_id = _log_to_mlflow(output, summary, suite, meta, figure, tracking)
    if figure is not None:
        import matplotlib.pyplot as plt

        plt.close(figure)
    return EvalResult(output=output, summary=summary, warnings=found, shards_run=shards_run,
                      shards_total=shards_total, wall_time_s=wall, tracking_run_id=run_id)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "foolbox", "pyautoattack", "ray"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "?"
    return out


def metric_dict(summary: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics: clean, acc/<attack>, all_<norm>, all_attacks."""
    out = {"clean": summary["clean"]}
    out.update({f"acc/{a}": v for a, v in summary["attacks"].items()})
    out.update({k: v for k, v in summary.items() if k.startswith("all_")})
    return out


def _log_to_mlflow(output: Path, summary: dict[str, Any], suite: Suite, meta: dict[str, Any], figure,
                   tracking: TrackingOptions) -> str | None:
    if not tracking.enabled:
        return None
    from mat_dist.plumbing.tracking import Tracker

    tags = {"mat_dist.kind": "evaluation", "mat_dist.suite": suite.name, "mat_dist.model": meta["model"],
            "mat_dist.output": str(output.resolve()), **tracking.extra_tags}
    tracker = Tracker.start(uri=tracking.uri, experiment=tracking.experiment, run_name=f"evaluate-{suite.name}",
                            parent_run_id=tracking.parent_run_id, tags=tags)
    with tracker:
        tracker.log_params({"suite": suite.to_dict(), "examples": summary["examples"], "workers": meta["workers"]})
        tracker.log_metrics({**metric_dict(summary), "wall_time_s": meta["wall_time_s"]}, step=0)
        for name in ("results.parquet", "transfer.parquet", "curves.csv", "summary.json", "report.md"):
            if (output / name).is_file():
                tracker.log_artifact(output / name)
        if figure is not None:
            tracker.log_figure(figure, "plots/curves.png")
    return tracker.run_id
