"""One schema for every YAML file a user writes, and one override syntax.

The five kinds are pydantic 2 models (``extra="forbid"``, strict scalars)
written with the small vocabulary below, next to the types they build:

    run config     mat_dist.core.run_config.RunConfig                 (frozen pydantic dataclasses)
    cluster file   mat_dist.cluster.files.ClusterConfig
    suite          mat_dist.evaluate.suite.SuiteFile         (-> Suite)
    search space   mat_dist.tune.space.SpaceFile             (-> SearchSpace)
    models file    mat_dist.evaluate.models_file.ModelsFile  (-> ModelSources, for matd evaluate)

``parse`` validates parsed YAML against one of them and turns the first
pydantic error into the one ``UserError`` line the CLI prints: where (the
file, or the override to blame), the key as the user writes it, what is
wrong and, where known, the fix. ``read_yaml`` uses the safe loader;
``load_yaml`` also refuses an empty or comment-only file. ``apply_overrides``
and ``set_key`` are the one override syntax: dotted keys, an integer part
indexes a list (``attack.eps.0=5`` sets sub-model 0's radius), for ``matd
train KEY=VALUE`` and a search space's keys alike. ``matd validate``, which
knows all five kinds, is ``mat_dist.file_kinds``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel, ConfigDict, Strict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from mat_dist.plumbing.errors import UserError

T = TypeVar("T")

# ---------------------------------------------------------------- vocabulary

FORBID = ConfigDict(extra="forbid")  # every model: an unknown key is an error, never ignored

Int = Annotated[int, Strict()]             # not a bool, a float or a numeric string
Count = Annotated[int, Strict(), Ge(1)]
NonNegInt = Annotated[int, Strict(), Ge(0)]
Num = Annotated[float, Strict()]           # an int or a float (kept as float), not a bool or a string
Positive = Annotated[float, Strict(), Gt(0)]
NonNegative = Annotated[float, Strict(), Ge(0)]
Share = Annotated[float, Strict(), Ge(0), Le(1)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


@dataclasses.dataclass(frozen=True)
class Hint:
    """Why a bound holds or how to meet it; ``error_line`` appends it in brackets (pydantic ignores it)."""

    text: str


@dataclasses.dataclass(frozen=True)
class _Internal:
    """Marks a field the code sets (where a file was read from), not a YAML key."""


INTERNAL = _Internal()


def must(ok: Callable[[Any], bool], message: str) -> AfterValidator:
    """A constraint with its own words; ``message`` may use ``{key}`` and ``{value}`` (braces doubled)."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise PydanticCustomError("check", "{message}", {"message": message})
        return value

    return AfterValidator(check)


def one_of(registry: Mapping[str, Any]) -> AfterValidator:
    """A name that must be a key of ``registry`` (read when checked, so later registrations count)."""

    def check(value: Any) -> Any:
        if value not in registry:
            raise PydanticCustomError("check", "{message}", {
                "message": "{key} {value!r} is unknown; use one of " + ", ".join(registry)})
        return value

    return AfterValidator(check)


# ---------------------------------------------------------------- walking a model's types

def bare(tp: Any) -> Any:
    """``tp`` without ``Annotated`` metadata and without ``| None``."""
    return _unwrap(tp)[0]


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp, *extra = typing.get_args(tp)
            metadata += extra
        elif origin in (typing.Union, types.UnionType):
            options = [t for t in typing.get_args(tp) if t is not type(None)]
            if len(options) != 1:
                return tp, metadata
            tp = options[0]
        else:
            return tp, metadata


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) or (isinstance(tp, type) and issubclass(tp, BaseModel))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    if dataclasses.is_dataclass(cls):
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return {name: hints[name] for name in cls.model_fields}


def keys_of(model: Any) -> list[str]:
    """The YAML keys of a section type (internal fields left out); [] for anything else."""
    cls = bare(model)
    if not _is_section(cls):
        return []
    return [k for k, tp in _hints(cls).items() if INTERNAL not in _unwrap(tp)[1]]


def _default(cls: type, name: str) -> Any:
    if dataclasses.is_dataclass(cls):
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return f.default_factory() if f.default is dataclasses.MISSING else f.default
    return cls.model_fields[name].get_default(call_default_factory=True)


class _NoSuchKey(Exception):
    """Part ``at`` of a dotted key is no field ("unknown"), not a list index ("list"), or below a value ("scalar")."""

    def __init__(self, at: int, problem: str, known: Sequence[str] = ()) -> None:
        super().__init__(problem)
        self.at, self.problem, self.known = at, problem, list(known)


def _child(tp: Any, part: Any, at: int) -> Any:
    """The type one step down: a field of a section, the item of a list, the value of a mapping."""
    cls = bare(tp)
    if _is_section(cls):
        if part not in keys_of(cls):
            raise _NoSuchKey(at, "unknown", keys_of(cls))
        return _hints(cls)[part]
    origin = typing.get_origin(cls)
    if origin in (list, tuple, Sequence):
        if not (isinstance(part, int) or str(part).isdigit()):
            raise _NoSuchKey(at, "list")
        return typing.get_args(cls)[0]
    if origin in (dict, Mapping):
        return typing.get_args(cls)[1]
    if cls is Any:
        return Any
    raise _NoSuchKey(at, "scalar")


def _type_at(model: Any, loc: Sequence[Any]) -> Any:
    """The annotation at a pydantic error location (``[key]``: the key type of the mapping before it)."""
    tp = model
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        if i + 1 < len(loc) and loc[i + 1] == "[key]":
            return typing.get_args(bare(tp))[0]
        try:
            tp = _child(tp, part, i)
        except _NoSuchKey:
            return Any
    return tp


def key_type(model: Any, key: str, *, voice: Voice, where: str) -> Any:
    """The annotation of dotted ``key`` in ``model`` (integer parts index lists); UserError if no such key."""
    parts = key.split(".")
    tp = model
    try:
        for i, part in enumerate(parts):
            tp = _child(tp, part, i)
    except _NoSuchKey as err:
        so_far = ".".join(parts[:err.at])
        if err.problem == "unknown":
            line = unknown_key(voice, key, err.known)
        elif err.problem == "list":
            line = (f"{so_far} is a list; index it with a number ({so_far}.0, {so_far}.1, ...), "
                    f"not {parts[err.at]!r}")
        else:
            line = f"{so_far} is a single value; it has no part {parts[err.at]!r}"
        raise UserError(f"{where}: {line}") from None
    return tp


# ---------------------------------------------------------------- errors as one line

@dataclasses.dataclass(frozen=True)
class Voice:
    """How one kind words its errors: the forms its users (and tests) know from before the schema."""

    unknown: str = "unknown key {key!r}; known keys here: {known}"
    wrong_type: str = "{key} must be {expected}, got {value!r}"
    section: str = "{key} must be a mapping, got {value!r}"
    choice: str = "{key}: unknown {noun} {value!r}; use {choices}"


def unknown_key(voice: Voice, key: str, known: Sequence[str]) -> str:
    """The unknown-key line: the known keys, and the near one when the key looks like a typo of it."""
    import difflib

    line = voice.unknown.format(key=key, known=", ".join(known))
    last = str(key).rsplit(".", 1)[-1]
    near = difflib.get_close_matches(last, list(known), n=1, cutoff=0.6)
    if near:
        prefix = str(key)[: len(str(key)) - len(last)]
        line += f"; did you mean {prefix}{near[0]}?"
    return line


RUN = Voice(unknown="unknown config key {key!r}; known keys here: {known}",
            wrong_type="config key {key}: expected {expected}, got {value!r}",
            section="config key {key} must be a mapping, got {value!r}",
            choice="config key {key}: {value!r} is not {choices}")
CLUSTER = Voice(unknown="unknown key {key}; known keys here: {known}", choice="{key} must be {choices}, got {value!r}")
SUITE = SPACE = MODELS = Voice()

_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false", "string_type": "a string",
             "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping"}
_SECTION_TYPES = {"model_type", "model_attributes_type", "dataclass_type", "dataclass_exact_type"}
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_UNKNOWN = {"extra_forbidden", "unexpected_keyword_argument"}


def _first(error: ValidationError) -> dict[str, Any]:
    """The error to report: an unknown key first (usually a typo, and what makes the other errors), else
    the first in the file's order."""
    errors = error.errors(include_url=False)
    return next((e for e in errors if e["type"] in _UNKNOWN), errors[0])


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _choices(values: list[str]) -> str:
    return "one of " + ", ".join(values)


def _noun(cls: type) -> str:
    """``Norm`` -> 'norm', ``DatasetName`` -> 'dataset name'."""
    return "".join(f" {c.lower()}" if c.isupper() else c for c in cls.__name__).strip()


def _bounds(metadata: list[Any]) -> str:
    low = next(((m.ge, "[") for m in metadata if isinstance(m, Ge)), None) \
        or next(((m.gt, "(") for m in metadata if isinstance(m, Gt)), None)
    high = next(((m.le, "]") for m in metadata if isinstance(m, Le)), None) \
        or next(((m.lt, ")") for m in metadata if isinstance(m, Lt)), None)
    if low and high:
        return f"in {low[1]}{_show(low[0])}, {_show(high[0])}{high[1]}"
    if low:
        value, bracket = low
        if bracket == "(":
            return "positive" if value == 0 else f"above {_show(value)}"
        return f"at least {_show(value)}" if value >= 1 else f">= {_show(value)}"
    value, bracket = high
    return f"<= {_show(value)}" if bracket == "]" else f"below {_show(value)}"


def error_line(error: ValidationError, model: Any, voice: Voice) -> str:
    """The first error of ``error`` as one line (without the where), worded in ``voice``."""
    e = _first(error)
    loc, value, kind, ctx = e["loc"], e.get("input"), e["type"], e.get("ctx") or {}
    key = ".".join(str(p) for p in loc if p != "[key]")
    if kind in _UNKNOWN:
        return unknown_key(voice, key, keys_of(_type_at(model, loc[:-1])))
    if kind in ("missing", "missing_keyword_argument"):
        return f"{key} is missing; add it"
    if kind == "check":
        return ctx["message"].format(key=key, value=value)
    if kind in _EXPECTED:
        return voice.wrong_type.format(key=key, expected=_EXPECTED[kind], value=value)
    if kind in _SECTION_TYPES:
        return voice.section.format(key=key or "(top level)", value=value)
    tp, metadata = _unwrap(_type_at(model, loc))
    if kind == "enum" and isinstance(tp, type) and issubclass(tp, enum.Enum):
        return voice.choice.format(key=key, value=value, noun=_noun(tp),
                                   choices=_choices([str(m.value) for m in tp]))
    if kind in _BOUNDS:
        hints = "".join(f" ({m.text})" for m in metadata if isinstance(m, Hint))
        return f"{key}={_show(value)} must be {_bounds(metadata)}{hints}"
    return f"{key}: {e['msg']}"


def _at(where: str | None, line: str) -> str:
    return f"{where}: {line}" if where else line


@contextmanager
def located(where: str | None, overrides: Sequence[str] = ()):
    """Prefix the UserErrors raised inside with ``where`` (and the overrides applied, which may be the cause)."""
    try:
        yield
    except UserError as err:
        if overrides:
            where = f"{where or 'the config'} with {' '.join(overrides)}"
        raise UserError(_at(where, str(err))) from None


@functools.cache
def _adapter(model: type) -> TypeAdapter:
    return TypeAdapter(model)


def _drop_empty_sections(model: Any, raw: dict) -> dict:
    """A section left empty in YAML (every line commented out: null) takes its defaults, as ``{}`` does."""
    out = {}
    for key, value in raw.items():
        tp = bare(_hints(bare(model)).get(key, Any)) if isinstance(key, str) else Any
        if _is_section(tp) and value is None:
            continue
        out[key] = _drop_empty_sections(tp, value) if _is_section(tp) and isinstance(value, dict) else value
    return out


def parse(model: type[T], raw: Any, *, voice: Voice, where: str | None = None, overrides: Sequence[str] = (),
          internal: Mapping[str, Any] | None = None) -> T:
    """``raw`` (parsed YAML) validated into ``model``, or a UserError of one line.

    ``where`` starts the line (a file); an error at a key that an override set
    names the override instead. ``internal`` gives the fields that are not YAML
    keys (``INTERNAL``). Cross-field rules raise UserError from the model's
    ``__post_init__``; their line gets ``where`` too.
    """
    if not isinstance(raw, dict):
        shown = "null" if raw is None else f"a {type(raw).__name__}"
        raise UserError(f"{where or 'the input'} must be a YAML mapping ({', '.join(keys_of(model))}), not {shown}")
    for key in raw:
        if key in _hints(model) and key not in keys_of(model):
            raise UserError(_at(where, unknown_key(voice, key, keys_of(model))))
    raw = {**_drop_empty_sections(model, raw), **(internal or {})}
    with located(where, overrides):  # the rules' UserErrors
        try:
            return _adapter(model).validate_python(raw)
        except ValidationError as err:
            error = err
    loc = [str(p) for p in _first(error)["loc"]]
    blamed = where
    for item in overrides:
        parts = item.partition("=")[0].split(".")
        if loc[:len(parts)] == parts:
            blamed = f"override {item!r}"
    raise UserError(_at(blamed, error_line(error, model, voice)))


# ---------------------------------------------------------------- files

def read_yaml(path: Path) -> Any:
    """Parsed YAML (the safe loader: no Python tags); one UserError line if unreadable or malformed."""
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise UserError(f"{path} is malformed YAML{where}: {problem}") from None


def empty_file(path: Path | str, what: str, model: Any, shipped: str) -> UserError:
    """The error for a file of kind ``what`` that holds nothing (empty, or only comments)."""
    return UserError(f"{path} is empty (nothing but comments or blank lines); a {what} sets some of "
                     f"{', '.join(keys_of(model))}: write them, or start from a shipped one ({shipped})")


def load_yaml(path: Path, what: str, model: Any, shipped: str) -> Any:
    """``read_yaml``, refusing an empty or comment-only file (it would otherwise mean every default)."""
    raw = read_yaml(path)
    if raw is None:
        raise empty_file(path, what, model, shipped)
    return raw


# ---------------------------------------------------------------- overrides

def differing_leaves(old: Mapping[str, Any], new: Mapping[str, Any],
                     prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every leaf where two nested mappings of plain data differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differing_leaves(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def plain(value: Any) -> Any:
    """Python data YAML can hold: enums -> their values, tuples -> lists, numpy scalars (Ray samples them)
    -> Python numbers."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def set_key(raw: dict, key: str, value: Any, *, model: Any, voice: Voice, where: str) -> None:
    """Set dotted ``key`` of ``model`` in plain data ``raw``; an integer part replaces one element of a list.

    A list the data leaves out (at its default) is filled with the default
    first, so ``attack.eps.0=5`` works on a config that never wrote attack.eps.
    """
    key_type(model, key, voice=voice, where=where)
    parts = key.split(".")
    node: Any = raw
    tp: Any = model
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or "(top level)"
        if isinstance(node, list):
            index = int(part)
            if index >= len(node):
                raise UserError(f"{where}: {key} indexes element {index} but {here} has {len(node)} elements")
            if i == len(parts) - 1:
                node[index] = plain(value)
                return
            child = node[index]
        elif isinstance(node, dict):
            if i == len(parts) - 1:
                node[part] = plain(value)
                return
            child = node.get(part)
            if child is None:  # left out or null: the default list, or an empty section
                indexed = parts[i + 1].isdigit()
                child = plain(_default(bare(tp), part)) if indexed and _is_section(bare(tp)) else {}
                if indexed and not isinstance(child, list):
                    raise UserError(f"{where}: {'.'.join(parts[:i + 1])} is not set; give the whole list "
                                    f"({'.'.join(parts[:i + 1])}=[...])")
                node[part] = child
        else:
            raise UserError(f"{where}: cannot set {key}: {here} is {node!r}, not a section or a list")
        node, tp = child, _child(tp, part, i)
    raise AssertionError("unreachable: the last part returns")


_FLAG_VALUES = {"true", "false", "yes", "no", "on", "off", "1", "0"}  # what a user types after a flag


def apply_overrides(raw: dict, overrides: Iterable[str], *, model: Any, voice: Voice) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to parsed data of ``model``, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep and item.lower() in _FLAG_VALUES:
            raise UserError(f"{item!r} is not an override (key.sub=value): a flag takes no value; write --resume, "
                            f"not --resume {item}")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"override {item!r}: the value is not valid YAML") from None
        set_key(raw, key, value, model=model, voice=voice, where=f"override {item!r}")
    return raw


CLUSTER_SECTION = "mat_dist"  # a Ray launcher file or KubeRay manifest carries the cluster settings here
