"""Shards: one job over one range of examples, run by one thin function, written atomically.

Nothing here imports Ray: ``run_shard`` is a plain function that the Ray runner
(``mat_dist.evaluate.runner``) calls inside a task, and tests call directly.
Each shard loads its model from a ``ModelSource`` (a file, a factory), so only
that small description travels to the worker.
A shard's rows go to ``OUT/shards/<job>__<start>-<end>.parquet`` through a
temporary file and ``os.replace``, so a file with that name is always whole
and a retried shard simply replaces it; resume skips shards whose file exists.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mat_dist.plumbing.atomic import atomic_path
from mat_dist.plumbing.errors import UserError
from mat_dist.evaluate.gate import GateResult, gate, predict
from mat_dist.evaluate.model_source import ModelSource
from mat_dist.evaluate.suite import ENSEMBLE, AttackSpec, Job
from mat_dist.core.fast_path import evaluation_channels_last, to_channels_last
from mat_dist.core.run_config import AUTO
from mat_dist.core.threats import clip_to_box, make_threat

SHARDS_DIR = "shards"

# Column order of every results table (suite, transfer and curve rows alike).
COLUMNS = ["example_id", "attack", "job", "group", "norm", "eps", "library", "source", "target", "success",
           "clean_correct", "flipped", "within_radius", "in_box", "perturbation_norm", "label", "pred_clean",
           "pred_adv", "source_success", "source_clean_correct", "x_value", "shard"]


@dataclass(frozen=True)
class Shard:
    job: Job
    start: int  # first example id
    end: int    # one past the last

    @property
    def name(self) -> str:
        return f"{self.job.name}__{self.start}-{self.end}"

    @property
    def file_name(self) -> str:
        return f"{self.name}.parquet"


def plan_shards(jobs: list[Job], shard_size: int) -> list[Shard]:
    """Cut every job into ranges of ``shard_size`` examples; the cut does not depend on the worker count."""
    return [Shard(job, start, min(start + shard_size, job.examples))
            for job in jobs for start in range(0, job.examples, shard_size)]


def shard_seed(base_seed: int, shard: Shard) -> int:
    """A seed fixed by the suite seed, the job and the range: the same with 1 worker or 20."""
    return (base_seed * 1_000_003 + zlib.crc32(shard.job.name.encode()) + shard.start) % (2 ** 31)


# ------------------------------------------------------------------ attack + gate

def attack_and_gate(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                    seed: int) -> tuple[torch.Tensor, GateResult]:
    """Run ``spec`` against ``model`` with its restarts; return x_adv and the gate's verdict.

    Only clean-correct examples are attacked. Restart r (seed + r) runs on the
    examples no earlier restart broke, and an example keeps the first
    adversarial that passes the gate (else the last attempt, so that its
    perturbation norm is reported). Minimisation attacks' raw outputs are
    also tried projected onto the ball (and into the box).
    """
    kind = spec.kind
    pred_clean = predict(model, x)
    broken = pred_clean != y
    x_final = x.clone()
    for r in range(int(spec.params["restarts"])):
        idx = (~broken).nonzero().squeeze(1)
        if len(idx) == 0:
            break
        torch.manual_seed(seed + r)  # libraries that draw from torch's global RNG
        x_adv = kind.run(model, x[idx], y[idx], norm=spec.norm, eps=spec.eps, params=spec.params, seed=seed + r)
        x_adv = x_adv.to(device=x.device, dtype=x.dtype)
        if kind.minimization:
            x_adv = _raw_or_projected(spec, model, x[idx], y[idx], x_adv, pred_clean[idx])
        verdict = gate(model, x[idx], y[idx], x_adv, norm=spec.norm, eps=spec.eps, pred_clean=pred_clean[idx])
        x_final[idx] = x_adv
        broken[idx[verdict.success]] = True
    return x_final, gate(model, x, y, x_final, norm=spec.norm, eps=spec.eps, pred_clean=pred_clean)


def _raw_or_projected(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      x_adv: torch.Tensor, pred_clean: torch.Tensor) -> torch.Tensor:
    """Per example: the raw minimal adversarial if it passes the gate, else its projection onto the ball."""
    raw = gate(model, x, y, x_adv, norm=spec.norm, eps=spec.eps, pred_clean=pred_clean)
    finite = torch.nan_to_num(x_adv - x, nan=0.0, posinf=0.0, neginf=0.0)
    projected = x + clip_to_box(x, make_threat(spec.norm, eps=spec.eps, alpha=spec.eps).project(finite))
    proj = gate(model, x, y, projected, norm=spec.norm, eps=spec.eps, pred_clean=pred_clean)
    use_projected = (~raw.success & proj.success).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(use_projected, projected, x_adv)


# ------------------------------------------------------------------ the shard function

def models_for(model: ModelSource, targets: tuple[str, ...], device: torch.device, *,
               channels_last: bool = False) -> dict[str, nn.Module]:
    """The deployed model and the sub-models named in ``targets`` ("ensemble", "m0", "m1", ...); with
    ``channels_last``, their conv weights in NHWC (the sub-models share the ensemble's weights)."""
    ensemble = model.load(device)
    if channels_last:
        to_channels_last(ensemble)
    for p in ensemble.parameters():
        p.requires_grad_(False)  # attacks need input gradients only
    out: dict[str, nn.Module] = {}
    for name in targets:
        out[name] = ensemble if name == ENSEMBLE else ensemble.member(int(name[1:])).eval()
    return out


def run_shard(shard: Shard, *, model: ModelSource, images: torch.Tensor, labels: torch.Tensor, out_dir: str,
              base_seed: int, threads: int = 1, device: str = "cpu", channels_last: bool | str = AUTO) -> str:
    """Attack the shard's examples, gate, score on every target, write the rows; return the file path.
    ``channels_last``: the suite's ``resources.channels_last`` (true, false or auto)."""
    torch.set_num_threads(max(1, threads))
    job = shard.job
    dev = torch.device(device)
    models = models_for(model, tuple(dict.fromkeys((job.source, *job.targets))), dev,
                        channels_last=evaluation_channels_last(channels_last, dev))
    x = images[shard.start:shard.end].to(dev)
    y = labels[shard.start:shard.end].to(dev)
    seed = shard_seed(base_seed, shard)
    x_adv, source_verdict = attack_and_gate(job.spec, models[job.source], x, y, seed=seed)
    columns: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for target in job.targets:
        verdict = source_verdict if target == job.source else gate(
            models[target], x, y, x_adv, norm=job.spec.norm, eps=job.spec.eps)
        _append_rows(columns, shard, y, verdict, source_verdict, target)
    path = Path(out_dir) / SHARDS_DIR / shard.file_name
    write_rows_atomic(columns, path)
    return str(path)


def _append_rows(columns: dict[str, list[Any]], shard: Shard, y: torch.Tensor, v: GateResult, src: GateResult,
                 target: str) -> None:
    n = shard.end - shard.start
    job, spec = shard.job, shard.job.spec
    const = {"attack": spec.name, "job": job.name, "group": job.group, "norm": spec.norm.value, "eps": float(spec.eps),
             "library": spec.kind.library, "source": job.source, "target": target,
             "x_value": float(job.x_value), "shard": shard.name}
    for key, value in const.items():
        columns[key].extend([value] * n)
    columns["example_id"].extend(range(shard.start, shard.end))
    per_example = {"success": v.success, "clean_correct": v.clean_correct, "flipped": v.flipped,
                   "within_radius": v.within_radius, "in_box": v.in_box, "perturbation_norm": v.perturbation_norm,
                   "label": y, "pred_clean": v.pred_clean, "pred_adv": v.pred_adv,
                   "source_success": src.success, "source_clean_correct": src.clean_correct}
    for key, t in per_example.items():
        columns[key].extend(t.cpu().tolist())


def write_rows_atomic(columns: dict[str, list[Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: columns[c] for c in COLUMNS}, schema=ROW_SCHEMA())
    with atomic_path(path, suffix=".tmp") as tmp:
        pq.write_table(table, tmp)


def ROW_SCHEMA():  # noqa: N802 - a constant built lazily (pyarrow import)
    import pyarrow as pa

    return pa.schema([
        ("example_id", pa.int64()), ("attack", pa.string()), ("job", pa.string()), ("group", pa.string()),
        ("norm", pa.string()),
        ("eps", pa.float64()), ("library", pa.string()), ("source", pa.string()), ("target", pa.string()),
        ("success", pa.bool_()), ("clean_correct", pa.bool_()), ("flipped", pa.bool_()),
        ("within_radius", pa.bool_()), ("in_box", pa.bool_()), ("perturbation_norm", pa.float64()),
        ("label", pa.int64()), ("pred_clean", pa.int64()), ("pred_adv", pa.int64()),
        ("source_success", pa.bool_()), ("source_clean_correct", pa.bool_()), ("x_value", pa.float64()),
        ("shard", pa.string()),
    ])


# ------------------------------------------------------------------ merge

def pending_shards(shards: list[Shard], out_dir: Path) -> list[Shard]:
    """The shards whose file does not exist yet (resume skips the others)."""
    folder = out_dir / SHARDS_DIR
    return [s for s in shards if not (folder / s.file_name).is_file()]


def merge_shards(shards: list[Shard], out_dir: Path):
    """Concatenate the shards' files and check that each (job, target, example) appears exactly once.

    Returns one pyarrow table with every row, sorted by job order, target and example id.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = out_dir / SHARDS_DIR
    missing = [s.name for s in shards if not (folder / s.file_name).is_file()]
    if missing:
        raise UserError(f"{len(missing)} shards have no results yet (first: {missing[0]}); "
                        f"re-run the same command to finish them")
    tables = []
    for s in shards:
        try:
            tables.append(pq.read_table(folder / s.file_name, schema=ROW_SCHEMA()))
        except (OSError, pa.ArrowInvalid) as err:
            raise UserError(f"shard file {folder / s.file_name} is unreadable ({err}); delete it and re-run") from None
    table = pa.concat_tables(tables) if tables else ROW_SCHEMA().empty_table()
    check_exactly_once(table, shards)
    return table


def check_exactly_once(table, shards: list[Shard]) -> None:
    """Every planned (job, target, example) appears once: no duplicate, no gap, nothing else."""
    jobs = {s.job.name: s.job for s in shards}
    job_of_row = table.column("job").to_pylist()
    targets = table.column("target").to_pylist()
    examples = table.column("example_id").to_numpy()
    seen: dict[tuple[str, str], np.ndarray] = {}
    for job_name, target, example in zip(job_of_row, targets, examples):
        job = jobs.get(job_name)
        if job is None or target not in job.targets or not 0 <= example < job.examples:
            raise RuntimeError(f"merge: unexpected row (job {job_name}, target {target}, example {example})")
        counts = seen.setdefault((job_name, target), np.zeros(job.examples, dtype=np.int64))
        counts[example] += 1
    for job in jobs.values():
        for target in job.targets:
            counts = seen.get((job.name, target), np.zeros(job.examples, dtype=np.int64))
            if (counts > 1).any():
                raise RuntimeError(f"merge: job {job.name}, target {target}: example "
                                   f"{int(np.flatnonzero(counts > 1)[0])} appears {int(counts.max())} times")
            if (counts == 0).any():
                raise RuntimeError(f"merge: job {job.name}, target {target}: example "
                                   f"{int(np.flatnonzero(counts == 0)[0])} is missing")

