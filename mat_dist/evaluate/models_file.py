"""The models file: several models for ``matd evaluate --model FILE.yaml`` (a leaderboard), in the one schema.

    # Run: matd evaluate --model models.yaml --data mnist5k --suite field
    models:
      - {name: plain, model: plain-cnn.ts}
      - {name: mine, model: mymodels:resnet18, weights: w.safetensors,
         input_mean: [0.1307], input_std: [0.3081]}
      - {name: mat, model: runs/mnist5k-paper-mat}

Each entry is what one ``--model NAME=SPEC`` (with ``--weights``,
``--input-mean``, ``--input-std``) says. Relative files in it are relative to
the models file. ``matd validate`` checks a models file as ``matd evaluate``
reads it: the schema, then every model parsed (files there, factories
importable, weights readable as files).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import pydantic
from pydantic import BaseModel
from pydantic_core import PydanticCustomError

from mat_dist.plumbing import schema
from mat_dist.plumbing.errors import UserError
from mat_dist.evaluate.model_source import ModelSource, parse_source
from mat_dist.plumbing.schema import FORBID, Num, Positive, Str, must

# A model's name (a models file's name:, the NAME of --model NAME=SPEC) is its folder under the
# leaderboard's output and its row in leaderboard.md.
NAME = re.compile(r"[A-Za-z0-9][\w.-]*")
ENTRY_KEYS = "{name, model, weights, input_mean, input_std}"


class ModelEntry(BaseModel):
    """One model: ``model`` is a SPEC as ``--model`` takes it; the rest as its options."""

    model_config = FORBID
    model: Str
    name: Annotated[Str, must(lambda n: NAME.fullmatch(n) is not None,
                              "{key} {value!r} must start with a letter or digit and hold only letters, digits, "
                              "'_', '.', '-' (it names the model's folder)")] | None = None
    weights: Str | None = None                     # a factory's weights (.safetensors, or a state dict)
    input_mean: tuple[Num, ...] | None = None      # per channel, for a model that expects normalised inputs
    input_std: tuple[Positive, ...] | None = None

    @pydantic.model_validator(mode="after")
    def _normalisation(self) -> "ModelEntry":
        if (self.input_mean is None) != (self.input_std is None):
            raise PydanticCustomError("check", "{message}", {
                "message": "{key}: give both input_mean and input_std (one number per channel) or neither"})
        if self.input_mean is not None and (len(self.input_mean) != len(self.input_std) or not self.input_mean):
            raise PydanticCustomError("check", "{message}", {
                "message": f"{{key}}: input_mean has {len(self.input_mean)} values and input_std "
                           f"{len(self.input_std)}; give one per channel"})
        return self


class ModelsFile(BaseModel):
    model_config = FORBID
    models: Annotated[list[ModelEntry], must(bool, "{key} must list at least one model, each "
                                                   + ENTRY_KEYS.replace("{", "{{").replace("}", "}}"))]


def read_models_file(path: Path) -> ModelsFile:
    """The file validated against the schema; one UserError line naming the file and the key."""
    raw = schema.read_yaml(path)
    if raw is None:
        raise UserError(f"{path} is empty (nothing but comments or blank lines); a models file lists "
                        f"models: [{ENTRY_KEYS}]")
    return schema.parse(ModelsFile, raw, voice=schema.MODELS, where=str(path))


def load_models_file(path: str | Path) -> list[ModelSource]:
    """A ``ModelSource`` per entry; relative files are relative to the models file's folder."""
    path = Path(path)
    base = path.parent
    sources = []
    for i, entry in enumerate(read_models_file(path).models):
        with schema.located(f"{path}: models.{i}"):
            sources.append(parse_source(_beside(base, entry.model), weights=base / entry.weights if entry.weights else None,
                                 input_mean=entry.input_mean, input_std=entry.input_std, label=entry.name))
    return sources


def _beside(base: Path, spec: str) -> str:
    """A SPEC with its file taken from ``base`` when it is there: a model file, or a factory's
    ``file.py`` of ``file.py:function``; anything else (a module, a file only the current folder has) as given."""
    file, colon, function = spec.rpartition(":")
    if colon and file.endswith(".py") and (base / file).is_file():
        return f"{base / file}:{function}"
    return str(base / spec) if (base / spec).exists() else spec
