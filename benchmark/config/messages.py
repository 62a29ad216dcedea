"""Turn pydantic's validation errors into lines a person can act on.

Each line names the key path (``pretrain[0].noise.ratios[1]``), the bad value and what is
allowed; all problems of a file are reported at once in one ``ConfigError``. Keys that older
suite files used and that moved get a line saying where they went.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel

from benchmark.errors import ConfigError


class SectionProblems(ValueError):
    """Several problems found by one section's validator, each ``"<sub-path>: <message>"``.

    Pydantic lets a model validator raise one error; this one carries a list so that each
    problem still gets its own line and its full key path.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


#: Downstream keys of earlier suite files and where their values go now.
MOVED_KEYS = {
    "lambdas": "grid: {lam: [...]} (NMTune's lambda is called 'lam' everywhere)",
    "depths": "grid: {depth: [...]}",
    "preset": "hparams: {preset: ...}",
    "epochs": "hparams: {epochs: ...} (or grid: {epochs: [...]})",
    "batch_size": "hparams: {batch_size: ...}",
    "lr": "hparams: {lr: ...} or, for one head, hparams: {lp: {lr: ...}}",
}


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def _unwrap(tp: Any) -> Any:
    """Strip Annotated / Optional so the model class (or list/dict) underneath shows."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            field = tp.model_fields.get(part)
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) is list and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


_TYPE_WORDS = {
    "float": "a number",
    "int": "an integer",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping",
    "model": "a mapping",
    "int_from_float": "a whole number",
}


def describe(err: Mapping[str, Any], root: type[BaseModel]) -> list[str]:
    """The problem lines of one pydantic error (one, or several for :class:`SectionProblems`)."""
    section = err.get("ctx", {}).get("error")
    if isinstance(section, SectionProblems):
        where = _path(tuple(err["loc"]))
        return [f"{where}.{p}" for p in section.problems]
    return [_describe_one(err, root)]


def _describe_one(err: Mapping[str, Any], root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    kind, value = err["type"], err.get("input")
    where = _path(loc)
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        allowed = ", ".join(n for n, f in model.model_fields.items() if not f.exclude) if model else "?"
        parent = _path(loc[:-1])
        moved = MOVED_KEYS.get(str(loc[-1])) if loc[:-1] == ("downstream",) else None
        hint = f"; it moved to downstream.{moved}" if moved else ""
        return f"{parent}: unknown key {loc[-1]!r} (allowed: {allowed}){hint}"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "value_error":
        msg = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        if isinstance(value, Mapping):  # a whole-section check: the path is the section
            return f"{where}: {msg}"
        return f"{where} = {value!r}: {msg}"
    if kind == "literal_error" and loc and loc[-1] == "[key]":  # a mapping's key, not a value
        return f"{_path(loc[:-2])}: unknown key {value!r} (allowed: {err['ctx']['expected']})"
    if kind == "literal_error":
        return f"{where} = {value!r}: must be one of {err['ctx']['expected']}"
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "int_from_float":
        word = kind if kind == "int_from_float" else kind.rsplit("_", 1)[0]
        expected = _TYPE_WORDS.get(word, word.replace("_", " "))
        return f"{where} = {value!r}: must be {expected}"
    return f"{where} = {value!r}: {err['msg']}"


def raise_problems(source: str, problems: list[str], stage: str) -> typing.NoReturn:
    n = len(problems)
    head = f"invalid suite file {source} ({n} problem{'s' if n != 1 else ''}, {stage}); nothing was run:"
    raise ConfigError("\n".join([head] + [f"  - {p}" for p in problems]))
