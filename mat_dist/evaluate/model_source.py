"""Where the evaluated model comes from: a mat-dist checkpoint, or a model mat-dist did not train.

A ``ModelSource`` is small, frozen and picklable: the driver parses the user's
SPEC into one, and every shard's worker calls ``load()`` on its own copy, so
no module object travels to workers (except for ``kind="module"``, the Python
API's in-memory module, which Ray pickles by value). The kinds:

    checkpoint   a mat-dist weights file, checkpoint folder or run folder
    torchscript  a file written by ``torch.jit.save``
    export       a ``torch.export`` program (``.pt2``, ``torch.export.save``)
    factory      ``package.module:function`` or ``path/to/file.py:function`` returning an nn.Module,
                 with optional weights (safetensors, or a state dict read with ``weights_only=True``)
    onnx         an ONNX file, run by onnxruntime: no gradients, so only gradient-free attacks apply
    module       an ``nn.Module`` object (Python API only)

Every foreign model maps images (N, C, H, W) in [0, 1] to logits (N, classes).
``input_mean``/``input_std`` wrap a model that expects normalised inputs, so the
attacks still see [0, 1] pixels and radii keep their pixel units.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mat_dist.plumbing.errors import UserError

KINDS = ("checkpoint", "torchscript", "export", "factory", "onnx", "module")
_FACTORY = re.compile(r"^(?P<target>[A-Za-z_][\w.]*|.+\.py):(?P<function>[A-Za-z_]\w*)$")


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    kind: str                                   # one of KINDS
    location: str                               # file path, or "module:function"
    label: str                                  # the model's name in reports and leaderboards
    weights: str | None = None                  # factory only: a weights file
    input_mean: tuple[float, ...] | None = None  # per channel, for models that expect normalised inputs
    input_std: tuple[float, ...] | None = None
    search_path: str | None = None              # factory: the sys.path entry its module was found under
    module: nn.Module | None = field(default=None, compare=False, repr=False)  # kind "module" only

    @property
    def differentiable(self) -> bool:
        """Whether input gradients exist (ONNX models run outside autograd)."""
        return self.kind != "onnx"

    @property
    def is_checkpoint(self) -> bool:
        return self.kind == "checkpoint"

    def load(self, device: torch.device | str = "cpu") -> nn.Module:
        """The model in eval mode on ``device``, mapping [0, 1] images to logits."""
        device = torch.device(device)
        if self.kind == "checkpoint":
            from mat_dist.core.checkpoint import load_model

            return load_model(self.location).to(device)
        if self.kind == "onnx":
            inner: nn.Module = OnnxModule(self.location)
        elif self.kind == "torchscript":
            inner = _load_torchscript(Path(self.location))
        elif self.kind == "export":
            inner = _load_export(Path(self.location))
        elif self.kind == "factory":
            inner = _build_factory(self)
        elif self.kind == "module":
            inner = self.module
        else:  # pragma: no cover - parse_source() only makes the kinds above
            raise ValueError(self.kind)
        # a torch.export program keeps the mode it was captured in (it refuses train()/eval())
        wrapped = ForeignModel(inner, self.input_mean, self.input_std, fixed_mode=self.kind == "export")
        return wrapped.to(device).eval()

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this model in an output folder's eval.json (a re-run must match it)."""
        if self.kind == "checkpoint":  # the keys of evaluations made before other kinds existed
            return {"model": self.location, "model_sha256": file_digest(Path(self.location))}
        out: dict[str, Any] = {"model": self.location, "model_kind": self.kind}
        if self.kind == "module":
            out["model_sha256"] = state_digest(self.module)
        elif self.kind != "factory":
            out["model_sha256"] = file_digest(Path(self.location))
        if self.weights is not None:
            out["weights_sha256"] = file_digest(Path(self.weights))
        if self.input_mean is not None:
            out["input_mean"], out["input_std"] = list(self.input_mean), list(self.input_std)
        return out


# ------------------------------------------------------------------ parsing a SPEC

def parse_source(spec: str | nn.Module, *, weights: str | Path | None = None, input_mean: Sequence[float] | None = None,
          input_std: Sequence[float] | None = None, label: str | None = None) -> ModelSource:
    """A ``ModelSource`` from what the user named; anything that cannot be a model is refused with one line."""
    mean, std = _normalisation(input_mean, input_std)
    if isinstance(spec, nn.Module):
        return ModelSource(kind="module", location=f"<{type(spec).__name__}>", label=label or type(spec).__name__,
                           module=spec, input_mean=mean, input_std=std, weights=_weights(weights))
    text = str(spec)
    path = Path(text)
    if path.exists():
        kind = _file_kind(path)
        if kind == "checkpoint":
            if weights is not None or mean is not None:
                raise UserError(f"--model {text} is a mat-dist model, which takes [0, 1] images and holds its "
                                f"weights; drop --weights and --input-mean/--input-std")
            from mat_dist.core.checkpoint import find_weights

            _check_run_has_model(path)
            found = find_weights(path).resolve()
            return ModelSource(kind="checkpoint", location=str(found), label=label or _checkpoint_label(found))
        if weights is not None:
            raise UserError(f"--weights applies to a factory (package.module:function); {text} is a "
                            f"{kind} file that holds its own weights")
        if kind in ("torchscript", "export"):
            _check_archive(path, kind)
        return ModelSource(kind=kind, location=str(path.resolve()), label=label or path.stem,
                           input_mean=mean, input_std=std)
    match = _FACTORY.match(text)
    if match is None:
        raise UserError(f"--model {text}: no such file, and not package.module:function; give a TorchScript "
                        f"file, a .pt2 export, an .onnx file, a mat-dist run folder or checkpoint, or a factory")
    target, function = match["target"], match["function"]
    search_path = None
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise UserError(f"--model {text}: {target} does not exist")
        target = str(file.resolve())
    else:
        search_path = _find_module(target, text)
    source = ModelSource(kind="factory", location=f"{target}:{function}", label=label or function,
                         weights=_weights(weights), input_mean=mean, input_std=std, search_path=search_path)
    _build_factory(source)  # fail now, in one line, rather than in every worker
    return source


def _check_run_has_model(path: Path) -> None:
    """A training run folder with neither a final model nor a checkpoint: training has not finished an epoch."""
    from mat_dist.core.checkpoint import CHECKPOINTS_DIR, WEIGHTS, latest_checkpoint

    if path.is_dir() and (path / "config.yaml").is_file() and not (path / WEIGHTS).is_file() \
            and latest_checkpoint(path / CHECKPOINTS_DIR) is None:
        raise UserError(f"{path}: this run has no model yet (training unfinished? no {WEIGHTS} and no checkpoint); "
                        f"finish it with matd train --output {path} --resume")


def _check_archive(path: Path, kind: str) -> None:
    """TorchScript and torch.export files are zip archives: anything else is refused before it is loaded."""
    import zipfile

    if zipfile.is_zipfile(path):
        return
    head = path.read_bytes()[:200]
    try:
        what = f"a text file starting {head.decode('utf-8').splitlines()[0][:30]!r}" if head.strip() else \
            "an empty file"
    except UnicodeDecodeError:
        what = "bytes of no model format (not a zip archive)"
    raise UserError(f"--model {path} is not a TorchScript file (torch.jit.save) nor a .pt2 export, .onnx file or "
                    f"mat-dist checkpoint: it is {what}; save the model with torch.jit.save or torch.export.save")


def _file_kind(path: Path) -> str:
    if path.is_dir() or path.suffix == ".safetensors":
        return "checkpoint"
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".pt2":
        return "export"
    return "torchscript"  # .pt / .ts / .jit or no suffix: torch.jit.load says whether it is one


def _checkpoint_label(weights: Path) -> str:
    """A run's folder name (runs/<name>/model.safetensors), else the file's stem."""
    from mat_dist.core.checkpoint import PREFIX, WEIGHTS

    if weights.name == WEIGHTS:
        return weights.parent.name if not weights.parent.name.startswith(PREFIX) else weights.parent.parent.parent.name
    return weights.stem


def _weights(weights: str | Path | None) -> str | None:
    if weights is None:
        return None
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights {weights} does not exist; give a .safetensors file or a state dict (.pt)")
    return str(path.resolve())


def _normalisation(mean: Sequence[float] | None, std: Sequence[float] | None):
    if (mean is None) != (std is None):
        raise UserError("give both --input-mean and --input-std (per channel, e.g. 0.1307 and 0.3081) or neither")
    if mean is None:
        return None, None
    mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean_t) != len(std_t) or not mean_t:
        raise UserError(f"--input-mean has {len(mean_t)} values but --input-std {len(std_t)}; give one per channel")
    if any(s <= 0 for s in std_t):
        raise UserError(f"--input-std {list(std_t)} must be positive")
    return mean_t, std_t


def _find_module(target: str, text: str) -> str | None:
    """The sys.path entry ``target`` is found under (the current folder counts), for workers to import it too."""
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` would: a factory module next to the user is found
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        found = None
    if found is None or found.origin is None:
        raise UserError(f"--model {text}: cannot import module {target}; run from the folder that holds it "
                        f"or install it")
    top = Path(found.origin).resolve()
    for _ in target.split("."):
        top = top.parent
    if found.origin.endswith("__init__.py"):
        top = top.parent
    return str(top)


def _build_factory(source: ModelSource) -> nn.Module:
    target, function = source.location.rsplit(":", 1)
    try:
        if target.endswith(".py"):
            spec = importlib.util.spec_from_file_location(f"matd_factory_{Path(target).stem}", target)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if source.search_path and source.search_path not in sys.path:
                sys.path.insert(0, source.search_path)  # a worker started elsewhere finds the user's module
            module = importlib.import_module(target)
    except Exception as err:  # noqa: BLE001 - the user's code: any failure is one line
        raise UserError(f"--model {source.location}: importing {target} failed ({type(err).__name__}: {err})") \
            from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise UserError(f"--model {source.location}: {target} has no function {function}")
    try:
        net = factory()
    except Exception as err:  # noqa: BLE001
        raise UserError(f"--model {source.location}: {function}() failed ({type(err).__name__}: {err})") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"--model {source.location}: {function}() returned {type(net).__name__}, not a "
                        f"torch.nn.Module")
    if source.weights is not None:
        _load_state(net, Path(source.weights), source.location)
    return net


def _load_state(net: nn.Module, path: Path, where: str) -> None:
    """Weights into ``net``: safetensors, or a state dict read without pickle code execution."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file
        raise UserError(f"--weights {path} is not a readable safetensors file or state dict "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # the common {"state_dict": ..., "epoch": ...} checkpoint layout
    if not isinstance(state, dict):
        raise UserError(f"--weights {path} holds a {type(state).__name__}, not a state dict")
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise UserError(f"--weights {path} does not fit the network of {where} "
                        f"({first[1].strip() if len(first) > 1 else first[0]})") from None


def _load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - anything that is not a TorchScript archive
        raise UserError(f"--model {path} is not a TorchScript file (torch.jit.save) nor a .pt2 export, "
                        f".onnx file or mat-dist checkpoint: torch.jit.load says {_first_line(err)}") from None


def _load_export(path: Path) -> nn.Module:
    try:
        program = torch.export.load(str(path))
    except Exception as err:  # noqa: BLE001
        raise UserError(f"--model {path} is not a torch.export program (torch.export.save): torch.export.load "
                        f"says {_first_line(err)}") from None
    return program.module()


def _first_line(err: BaseException) -> str:
    """An exception as a short phrase: its first line (no C++ stack), else its type."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{lines[0][:120]!r}" if lines else type(err).__name__


# ------------------------------------------------------------------ wrappers

class ForeignModel(nn.Module):
    """A foreign network seen as mat-dist sees every model: [0, 1] images -> logits.

    ``device_anchor`` is an empty parameter so that ``next(model.parameters())``
    (which AutoAttack and the adapters use to find the device) works for models
    without parameters of their own, such as ONNX sessions.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...] | None, std: tuple[float, ...] | None, *,
                 fixed_mode: bool = False) -> None:
        super().__init__()
        self.fixed_mode = fixed_mode
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self.net = net
        self.normalise = mean is not None
        if mean is not None:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def train(self, mode: bool = True) -> "ForeignModel":
        self.training = mode
        if not self.fixed_mode:
            self.net.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            x = (x - self.mean) / self.std
        return self.net(x)


class OnnxModule(nn.Module):
    """An ONNX model run by onnxruntime on CPU: forward only, outside autograd."""

    def __init__(self, path: str) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("ONNX models need onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UserError(f"--model {path} is not a readable ONNX model ({type(err).__name__})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise UserError(f"--model {path} takes {len(inputs)} inputs; mat-dist evaluates models of one "
                            f"image batch")
        self.input_name = inputs[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: array})[:1]
        return torch.from_numpy(logits).to(x.device)

    def __getstate__(self):  # an InferenceSession does not pickle; nothing needs to (workers load the file)
        raise TypeError("an ONNX model is loaded in each worker from its file, never pickled")


# ------------------------------------------------------------------ digests

def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_digest(module: nn.Module) -> str:
    """A digest of a module's class and tensors (the Python API's in-memory models)."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
