"""Checkpoints that load without running pickled code, written so a crash never leaves half of one.

Layout of a checkpoint folder ``epoch-0007/``:
    model.safetensors   weights; its metadata holds the ModelSpec as JSON
    state.pt            optimiser state, epoch, step and RNG states: tensors and
                        plain containers only, read with torch.load(weights_only=True)

A checkpoint is written into a temporary folder and renamed into place, so a
folder named ``epoch-*`` is always whole; older ones are removed only after a
newer one exists. ``model.safetensors`` alone (the final model) is written to a
temporary file and renamed the same way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from mat_dist.plumbing.atomic import atomic_path
from mat_dist.plumbing.errors import UserError
from mat_dist.core.models.mimo import DeployedEnsemble, ModelSpec, build_model

SPEC_KEY = "mat_dist.model_spec"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
PREFIX = "epoch-"
CHECKPOINTS_DIR = "checkpoints"  # where a run folder keeps its epoch-NNNN checkpoints (mat_dist.core.run_folder)


def save_weights(net: nn.Module, path: Path, *, extra: dict[str, str] | None = None) -> None:
    """Write ``net``'s weights and ModelSpec to ``path`` atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    metadata = {SPEC_KEY: net.spec.to_json(), **(extra or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def read_spec(path: Path) -> ModelSpec:
    """The ModelSpec stored in a weights file (UserError if it is not one of ours or is damaged)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"checkpoint {path} is damaged or not a safetensors file ({err}); "
                        f"use a whole checkpoint") from None
    if SPEC_KEY not in metadata:
        raise UserError(f"{path} holds no mat-dist model description; it was not written by mat-dist")
    return ModelSpec.from_json(metadata[SPEC_KEY])


def load_weights(path: Path, *, expect: ModelSpec | None = None) -> nn.Module:
    """Rebuild the training-view network stored at ``path``.

    With ``expect``, a file of another architecture, M or class count is refused.
    """
    spec = read_spec(path)
    if expect is not None and spec != expect:
        raise UserError(f"checkpoint {path} is a {describe(spec)}, but this run builds a {describe(expect)}; "
                        f"point to a matching checkpoint or start a new output folder")
    net = build_model(spec)
    try:
        state = load_file(str(path))
        net.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise UserError(f"checkpoint {path} does not load ({str(err).splitlines()[0]}); "
                        f"it is damaged or of another architecture") from None
    return net


def describe(spec: ModelSpec) -> str:
    return (f"{spec.kind.value} {spec.backbone} with M={spec.num_members}, "
            f"{spec.in_channels}x{spec.image_size[0]}x{spec.image_size[1]} inputs, {spec.num_classes} classes")


def load_model(path: str | os.PathLike, *, member: int | None = None) -> nn.Module:
    """The trained model at ``path`` as a plain module in eval mode.

    ``path`` is a weights file (``model.safetensors``), a checkpoint folder, or
    a run folder (its final model, else its latest checkpoint). The module maps
    images (N, C, H, W) in [0, 1] to the deployed ensemble's class scores
    (N, K): log of the heads' mean probability, or the mean logits, as the
    model was configured. ``member=m`` gives sub-model m's logits instead.
    """
    net = load_weights(find_weights(Path(path)))
    deployed = DeployedEnsemble(net)
    module = deployed if member is None else deployed.member(member)
    return module.eval()


def find_weights(path: Path) -> Path:
    """Resolve a weights file, a checkpoint folder or a run folder to a weights file."""
    if path.is_file():
        return path
    if (path / WEIGHTS).is_file():
        return path / WEIGHTS
    latest = latest_checkpoint(path / CHECKPOINTS_DIR)
    if latest is not None:
        return latest / WEIGHTS
    raise UserError(f"no model found at {path}: expected a .safetensors file, a checkpoint folder or a run folder")


# ----------------------------------------------------------- training checkpoints

@dataclass(frozen=True)
class TrainingCheckpoint:
    path: Path
    net: nn.Module
    state: dict[str, Any]  # optimizer, epoch, step, rng states


def save_checkpoint(folder: Path, *, net: nn.Module, state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``folder/epoch-NNNN`` atomically, then prune to the newest ``keep``."""

    def write(tmp: Path) -> None:
        save_weights(net, tmp / WEIGHTS)
        torch.save(state, tmp / STATE)

    return _install(folder, int(state["epoch"]), write, keep=keep)


def copy_checkpoint(src: Path, folder: Path, *, epoch: int, keep: int) -> Path:
    """Copy the training checkpoint in ``src`` (a Ray checkpoint's folder) to ``folder/epoch-NNNN`` the same way."""

    def write(tmp: Path) -> None:
        for name in (WEIGHTS, STATE):
            shutil.copyfile(src / name, tmp / name)

    return _install(folder, epoch, write, keep=keep)


def _install(folder: Path, epoch: int, write: Callable[[Path], None], *, keep: int) -> Path:
    """``write`` a checkpoint into a temporary folder, rename it to ``folder/epoch-NNNN``, prune to ``keep``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".tmp-*"):  # left by a writer killed mid-write; never a whole checkpoint
        shutil.rmtree(stale, ignore_errors=True)
    final = folder / f"{PREFIX}{epoch:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        write(tmp)
        if final.exists():  # a re-run of the same epoch after a restart: replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in _checkpoint_dirs(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoint_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(folder: Path) -> Path | None:
    dirs = _checkpoint_dirs(folder)
    return dirs[-1] if dirs else None


def check_same_model(saved: TrainingCheckpoint, expect: ModelSpec) -> None:
    """Refuse a checkpoint loaded without ``expect`` whose network is not the one this run builds."""
    spec = saved.net.spec
    if spec != expect:
        raise UserError(f"checkpoint {saved.path} is a {describe(spec)}, but this run builds a {describe(expect)}; "
                        f"point to a matching checkpoint or start a new output folder")


def load_checkpoint(path: Path, *, expect: ModelSpec | None = None) -> TrainingCheckpoint:
    net = load_weights(path / WEIGHTS, expect=expect)
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} has no {STATE}; it is not a whole training checkpoint") from None
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError for bad files
        raise UserError(f"checkpoint {path}/{STATE} does not load safely ({type(err).__name__}); "
                        f"it is damaged or holds code, which mat-dist refuses to run") from None
    return TrainingCheckpoint(path=path, net=net, state=state)


def load_latest_checkpoint(folder: Path, *, expect: ModelSpec | None = None) -> TrainingCheckpoint | None:
    """The newest checkpoint that loads; damaged newer ones are skipped with a warning."""
    for path in reversed(_checkpoint_dirs(folder)):
        try:
            return load_checkpoint(path, expect=expect)
        except UserError as err:
            if expect is not None and "but this run builds" in str(err):
                raise
            warnings.warn(f"skipping checkpoint {path}: {err}", stacklevel=2)
    return None


def save_final_model(checkpoint: Path, dst: Path) -> None:
    """Write a training checkpoint's model to ``dst``: the best epoch's weights when the checkpoint
    carries them (``eval.select=best``), else the checkpoint's own."""
    state = load_checkpoint(checkpoint).state
    best = state.get("best")
    if best is None:
        with atomic_path(dst) as tmp:
            shutil.copyfile(checkpoint / WEIGHTS, tmp)
        return
    net = build_model(read_spec(checkpoint / WEIGHTS))
    net.load_state_dict(best["weights"])
    save_weights(net, dst)
