"""Typed hyper-parameter declarations and the resolved values of one fit (no torch).

A head declares each hyper-parameter it takes as an ``HParam``: its type, default and value
rule, whether a suite may sweep it in ``grid:``, whether it may differ between the members of one
batched fit (``per_member``: the batched engine keeps one value per member, e.g. learning
rates and loss weights), whether it shapes the module (``arch``: passed to the builder), and its
rank among the selection's tie-break axes (``tiebreak``: smaller ranks break ties first, and
along an axis the smaller value is the simpler head).

``HParams`` is what ``resolve_hparams`` returns: the method and its values, frozen. It is read
by attribute (``hp.lr``); a hyper-parameter some registered head takes but this one does not
reads as None, so code that reads ``hp.lam`` of an MLP keeps working. ``as_dict()`` (the non-None
values in the head's declared order) is what MLflow records; ``key_dict()`` (the same values under
the names keys were first computed with, ``KEY_ALIASES``) is what fit keys and batch keys hash.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from benchmark.errors import ConfigError

#: How a value of each declared type is checked and coerced (custom ``check`` callables win).
KINDS = ("int", "float", "bool", "choice", "str")
#: Values are checked in phases (all integers, then all numbers, then the rest), so the first
#: error a doubly wrong fit reports does not depend on the order a head lists its values in.
_PHASE = {"int": 0, "float": 1}

#: Hyper-parameters renamed after fit keys were first published: new name -> the name keys hash.
#: Why: a fit key is the sha256 of the resolved values *with their names*; renaming a value
#: (the MLP width multiplier was ``ratio``, which also meant the noise ratio) must not re-key,
#: and so re-run, every stored fit. Only ``key_dict`` (fit keys, batch keys) reads this table;
#: suites, MLflow params and reports use the new name (old suites' ``ratio`` is mapped on load,
#: old MLflow params on read: ``tracking.store.OLD_PARAM_NAMES``).
KEY_ALIASES: Mapping[str, str] = MappingProxyType({"width": "ratio"})
#: The reverse: an old hyper-parameter name -> its name now (for messages and old suite files).
RENAMED: Mapping[str, str] = MappingProxyType({old: new for new, old in KEY_ALIASES.items()})


def as_int(name: str, val: Any, minimum: int) -> int:
    """An integer hyper-parameter (a whole float such as 2.0 is accepted), checked >= minimum."""
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not float(val).is_integer():
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {val!r}")
    if int(val) < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {val!r}")
    return int(val)


def as_float(name: str, val: Any, *, positive: bool) -> float:
    """A finite number, > 0 (``positive``) or >= 0."""
    try:
        ok = not isinstance(val, bool) and math.isfinite(float(val))
    except (TypeError, ValueError):
        ok = False
    if not ok or float(val) < 0 or (positive and float(val) == 0):
        raise ConfigError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {val!r}")
    return float(val)


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter a head takes (see the module docstring).

    ``kind``: ``int`` (``minimum``), ``float`` (``positive``: > 0, else >= 0; ``maximum``: an
    exclusive upper bound), ``bool``, ``choice`` (``choices``) or ``str``. ``check(name, value)``
    replaces the kind's rule (return the value to keep; raise ``ConfigError``). A default of None
    means "not set unless given" (e.g. NMTune's weights, filled by its preset). ``label``: how
    the value shows in a fit's name and in the leaderboard's ``selected`` column (a format
    string such as ``"λ{:g}"``), for the hyper-parameters the head lists in ``labelled``.
    """

    name: str
    kind: str
    default: Any = None
    doc: str = ""
    minimum: int = 0
    positive: bool = False
    maximum: float | None = None
    choices: tuple[Any, ...] = ()
    check: Callable[[str, Any], Any] | None = None
    grid: bool = True
    per_member: bool = False
    arch: bool = False
    tiebreak: int | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"hyper-parameter {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "choice" and not self.choices:
            raise ConfigError(f"hyper-parameter {self.name!r}: a choice needs its choices")

    @property
    def phase(self) -> int:
        return 2 if self.check is not None else _PHASE.get(self.kind, 2)

    def validate(self, val: Any) -> Any:
        """The checked, coerced value (``ConfigError`` naming the rule otherwise)."""
        if self.check is not None:
            return self.check(self.name, val)
        if self.kind == "int":
            return as_int(self.name, val, self.minimum)
        if self.kind == "float":
            out = as_float(self.name, val, positive=self.positive)
            if self.maximum is not None and not out < self.maximum:
                raise ConfigError(f"{self.name} must be below {self.maximum:g}, got {val!r}")
            return out
        if self.kind == "bool":
            if not isinstance(val, bool):
                raise ConfigError(f"{self.name} must be true or false, got {val!r}")
            return val
        if self.kind == "choice":
            if val not in self.choices:
                raise ConfigError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {val!r}")
            return val
        if not isinstance(val, str):
            raise ConfigError(f"{self.name} must be a string, got {val!r}")
        return val

    def format(self, val: Any) -> str | None:
        """``label`` filled with ``val`` (a number or its text); None where there is no value to show."""
        if self.label is None or val is None:
            return None
        if self.kind in ("int", "float"):
            try:
                num = float(val)
            except (TypeError, ValueError):
                return None
            if math.isnan(num) or (self.kind == "int" and num <= 0):
                return None
            return self.label.format(int(num) if self.kind == "int" else num)
        return self.label.format(val)


def unchecked(name: str, val: Any) -> Any:
    """A ``check`` that keeps the value: the head's ``finish`` hook validates it with the others."""
    return val


class HParams(Mapping[str, Any]):
    """Every hyper-parameter one fit reads, resolved (defaults applied) and validated; frozen.

    Build it with ``resolve_hparams``; ``HParams(head, values)`` takes the values as they are.
    ``head`` is the registered head's name (``method`` before issue 24 gave a head one name; the
    old attribute still reads, for plugins written against it).
    """

    __slots__ = ("head", "_values")
    head: str
    _values: Mapping[str, Any]

    def __init__(self, head: str, values: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "head", str(head))
        object.__setattr__(self, "_values", dict(values or {}))

    @property
    def method(self) -> str:
        """The old name of ``head`` (kept so outside plugins written against it keep working)."""
        return self.head

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        values = self._values
        if name in values:
            return values[name]
        from benchmark.heads.registry import hparam_names

        if name in hparam_names():
            return None  # another head's hyper-parameter: this one does not take it
        raise AttributeError(f"no registered head takes a hyper-parameter {name!r} (head {self.head!r})")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"HParams is frozen: resolve_hparams({self.head!r}, {name}=...) makes a new one")

    def __reduce__(self) -> tuple[Any, ...]:
        return (HParams, (self.head, dict(self._values)))

    # Mapping: the values this head takes (None for those it leaves unset)
    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HParams):
            return NotImplemented
        return self.head == other.head and list(self._values.items()) == list(other._values.items())

    def __hash__(self) -> int:
        return hash((self.head, tuple(self._values.items())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"HParams(head={self.head!r}{', ' if inner else ''}{inner})"

    def as_dict(self) -> dict[str, Any]:
        """Non-None hyper-parameters (without ``head``), in the head's declared order."""
        return {k: v for k, v in self._values.items() if v is not None}

    def key_dict(self) -> dict[str, Any]:
        """``as_dict()`` under the names keys hash (``KEY_ALIASES``: ``width`` as ``ratio``), same order."""
        return {KEY_ALIASES.get(k, k): v for k, v in self.as_dict().items()}

    def arch(self) -> dict[str, Any]:
        """The keywords that shape the module (the head's ``arch`` hyper-parameters), for the builder."""
        from benchmark.heads.registry import get_head

        spec = get_head(self.head).hparam_specs
        return {k: v for k, v in self._values.items() if v is not None and spec[k].arch}

    def batch_key(self) -> tuple[Any, ...]:
        """What fits must share to be trained as one batched computation on the same rows.

        Everything but the per-member values (each head's ``per_member`` hyper-parameters:
        learning rate, weight decay and the loss weights) and the seed: the same fitter and
        module (so MLP and NMTune, one residual MLP with or without regularisers, share a batch),
        the same architecture, epochs, batch size and epoch selection. Torch-free, so the plan
        can group trials by it.
        """
        from benchmark.heads.registry import get_head

        head = get_head(self.head)
        spec = head.hparam_specs
        shared = tuple((KEY_ALIASES.get(k, k), v) for k, v in self.as_dict().items() if not spec[k].per_member)
        return (head.fitter_id, head.builder_id, shared)
