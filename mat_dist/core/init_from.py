"""Fine-tuning's starting point (``train.init_from``): trained weights turned into this run's network.

Sources, read from where the user says (nothing is downloaded):

* a run folder, checkpoint folder or weights file of ours (``model.safetensors``
  with its ModelSpec): the same network is loaded as it is; one network
  (M = 1) can also start a MIMO model or an ensemble of M networks (below);
* a plain state dict of a backbone mat-dist ships: safetensors without our
  metadata, or a ``.pt``/``.pth`` file read with ``torch.load(weights_only=True)``
  (a bare state dict, or one under ``state_dict``/``model``/``model_state_dict``;
  a DataParallel ``module.`` prefix is dropped), including the common ResNet
  layout (``layer1.0``) and RobustBench's layout of PreAct ResNet-18
  (``shortcut.0``, ``bn``, ``linear``). A state dict does not say how its
  network wants its inputs: RobustBench's take [0, 1] pixels, so such a run sets
  ``model.normalize=false`` (this run's normalisation is used otherwise).

**One network into M sub-models.** A MIMO model's stem reads the M slots
stacked on the channel axis, and its head writes M blocks of logits. The
source's stem weights are copied into every slot's input channels divided by
M, and its head is copied for every sub-model: with one image in every slot
(the deployed ensemble), the stem computes exactly the source's sum, so every
sub-model, and the ensemble, predicts what the source did. An ensemble of M
separate networks gets the source in every member.

Every refusal is one ``UserError`` line and happens before the run folder is
written (``check_init_source``): a missing or damaged file, a pickle holding
more than tensors, another architecture (the first key whose shape differs,
with both shapes), a MIMO source into a single-network method.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from mat_dist.core.checkpoint import SPEC_KEY, describe, find_weights
from mat_dist.plumbing.errors import UserError
from mat_dist.core.models.backbones import BACKBONES
from mat_dist.core.models.mimo import ModelKind, ModelSpec, build_model

StateDict = dict[str, torch.Tensor]

KEY = "train.init_from"
_NESTED = ("state_dict", "model_state_dict", "model")  # where checkpoints of other tools keep the weights


def initial_state(source: str, spec: ModelSpec) -> StateDict:
    """The state dict of the network ``spec`` started from ``source`` (UserError of one line if it cannot be)."""
    path = Path(source)
    if not path.exists():
        raise UserError(f"{KEY}: {source} does not exist; give a run folder, a model file or a state dict")
    if path.is_dir():
        try:
            path = find_weights(path)
        except UserError:
            raise UserError(f"{KEY}: {source} holds no model (no model.safetensors and no checkpoint)") from None
    source_spec, state = _read(path)
    if source_spec is not None:
        return _from_our_model(path, source_spec, state, spec)
    return expand(_as_backbone(path, state, spec), spec)


def check_init_source(source: str | None, spec: ModelSpec) -> None:
    """Refuse a bad ``train.init_from`` before anything is written (the same checks as loading it)."""
    if source:
        initial_state(source, spec)


# ---------------------------------------------------------------- reading

def _read(path: Path) -> tuple[ModelSpec | None, StateDict]:
    """(our ModelSpec or None, the tensors) of a safetensors file or a weights-only torch file."""
    try:
        safetensors = _is_safetensors(path)
    except OSError as err:
        raise UserError(f"{KEY}: {path} cannot be read ({err.strerror})") from None
    if safetensors:
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path))
            spec = ModelSpec.from_json(metadata[SPEC_KEY]) if SPEC_KEY in metadata else None
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{KEY}: {path} is damaged ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        return spec, tensors
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a global: the pickle holds objects or code
        raise UserError(f"{KEY}: {path} is a pickle that holds more than plain weights (objects or code, which "
                        f"mat-dist does not run); save a state dict: torch.save(model.state_dict(), path)") from None
    except Exception as err:  # noqa: BLE001  (a truncated or foreign file: EOFError, RuntimeError, ...)
        raise UserError(f"{KEY}: {path} is damaged or not a weights file ({type(err).__name__})") from None
    return None, _tensors_of(path, loaded)


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:  # safetensors: an 8-byte header length, then a JSON header
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _tensors_of(path: Path, loaded: object) -> StateDict:
    for key in _NESTED:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"{KEY}: {path} is not a state dict (a mapping of parameter names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


# ---------------------------------------------------------------- our models

def _from_our_model(path: Path, source: ModelSpec, state: StateDict, spec: ModelSpec) -> StateDict:
    same_shape = (source.num_members, source.kind) == (spec.num_members, spec.kind)
    if source.num_members != 1 and not same_shape:
        target = "a single-network method" if spec.num_members == 1 else f"a model of M={spec.num_members}"
        raise UserError(f"{KEY}: {path} is a {source.kind.value} model of M={source.num_members} sub-models; it "
                        f"cannot start {target} (only one network can start M sub-models)")
    # The normalisation too: the source's predictions hold only under the constants it was trained with.
    for field in ("backbone", "in_channels", "image_size", "num_classes", "mean", "std"):
        if getattr(source, field) != getattr(spec, field):
            raise UserError(f"{KEY}: {path} is a {describe(source)} but this run builds a {describe(spec)} "
                            f"({field} {getattr(source, field)} against {getattr(spec, field)})")
    if same_shape:
        return state  # the same network: loaded as it is
    prefix = "members.0." if source.kind is ModelKind.SEPARATE else "backbone."
    backbone = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return expand(backbone, spec)


# ---------------------------------------------------------------- plain backbones

def _resnet_keys(state: StateDict, preact: bool) -> StateDict:
    """The common (kuangliu / RobustBench) ResNet names in ours: layerN.j -> stages.N-1.j; for PreAct ResNets
    (RobustBench's and fast-adversarial's layout) also shortcut.0 -> shortcut and the final bn -> final_bn."""
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0].startswith("layer") and parts[0][5:].isdigit():
            parts[0] = f"stages.{int(parts[0][5:]) - 1}"
        if preact and len(parts) >= 3 and parts[-2] == "0" and parts[-3] == "shortcut":
            del parts[-2]
        if preact and parts[0] == "bn":
            parts[0] = "final_bn"
        renamed[".".join(parts)] = value
    return renamed


def _as_backbone(path: Path, state: StateDict, spec: ModelSpec) -> StateDict:
    """A plain state dict as the keys of one ``spec.backbone`` network, checked key by key and shape by shape."""
    if any(k.startswith("layer1.") for k in state):
        state = _resnet_keys(state, preact=spec.backbone == "preact_resnet18")
    if all(k.startswith("backbone.") or k.startswith("normalize.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("normalize.")}
    check_backbone(path, state, spec)
    return state


def one_network(spec: ModelSpec) -> torch.nn.Module:
    """A single ``spec.backbone`` network for one image: C input channels, K logits."""
    return BACKBONES[spec.backbone].build(spec.in_channels, spec.num_classes, spec.image_size)


def check_backbone(path: Path, state: StateDict, spec: ModelSpec) -> None:
    expected = one_network(spec).state_dict()
    for key, tensor in expected.items():
        if key not in state and key.endswith("num_batches_tracked"):  # older checkpoints have none: kept at 0
            continue
        if key not in state:
            raise UserError(f"{KEY}: {path} is not a {spec.backbone} for {spec.in_channels}-channel images and "
                            f"{spec.num_classes} classes: it has no {key}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UserError(f"{KEY}: {path} is another architecture: {key} has shape {tuple(state[key].shape)}, "
                            f"this run's {spec.backbone} needs {tuple(tensor.shape)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise UserError(f"{KEY}: {path} is another architecture: {spec.backbone} has no {extra[0]}")


# ---------------------------------------------------------------- one network -> M sub-models

def expand(backbone: StateDict, spec: ModelSpec) -> StateDict:
    """The state dict of ``spec``'s network from one network's ``backbone`` weights (see the module doc)."""
    target = build_model(spec).state_dict()  # the normalisation buffers stay this run's
    m = spec.num_members
    if spec.kind is ModelKind.SEPARATE:
        for i in range(m):
            target.update({f"members.{i}.{k}": v.clone() for k, v in backbone.items()})
        return target
    names = BACKBONES[spec.backbone]
    for key, value in backbone.items():
        if key == f"{names.stem}.weight":  # (out, C, kh, kw) -> (out, M*C, kh, kw): each slot's share 1/M
            value = torch.cat([value / m] * m, dim=1)
        elif key in (f"{names.head}.weight", f"{names.head}.bias"):  # (K, ...) -> (M*K, ...): every head
            value = torch.cat([value] * m, dim=0)
        target[f"backbone.{key}"] = value.clone()
    return target
