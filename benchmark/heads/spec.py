"""One head's declaration (``HeadSpec``): what it is called, what it takes, how it is built and
trained, and what reporting needs; the registry (``registry.py``) holds the declarations.

Kept apart from the registry so a plugin author reads the whole contract of a head in one short
file. This module imports no torch: builders, losses and fitters are callables or
``"module:function"`` strings resolved on first use (``HeadSpec.resolve``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from benchmark.errors import ConfigError
from benchmark.heads.hparams import KEY_ALIASES, HParam

#: What a head trains on: the cached frozen features (every head on a frozen backbone), or the
#: task's images through the backbone's own weights (``finetune``: no feature cache).
HEAD_INPUTS: tuple[str, ...] = ("features", "images")
Target = str | Callable[..., Any]


def _target_id(target: Target | None) -> str:
    if target is None:
        return ""
    if isinstance(target, str):
        return target
    return f"{target.__module__}:{getattr(target, '__qualname__', getattr(target, '__name__', repr(target)))}"


@dataclass(frozen=True)
class HeadSpec:
    """One registered head (see the module docstring).

    ``loss(hp)`` -> ``fn(logits, y, z, f) -> (total, terms)`` for one member (None:
    cross-entropy). ``stacked_loss(hps, device)`` -> ``fn(logits, y, z, f, ce) -> (G,)``: the loss of
    G members of this head at once (tensors G x B x ...; ``ce`` is each member's mean
    cross-entropy, which the batched engine computes for the whole batch anyway: a loss that adds
    to cross-entropy starts from it). A head with a ``loss`` and no ``stacked_loss`` has its loss
    applied member by member in a batch. ``fitter(data, requests) -> results``: fits a batch of
    requests its own way (the converged LP's L-BFGS); None: gradient training. ``finish(values)``:
    a check or fill-in over all resolved values (NMTune's preset, the LP's L2 range).
    ``labelled``: the hyper-parameters shown in a fit's label, in order. ``role``: what the paper's
    claims use it as (``probe``); ``contends_with``: the heads the claims compare it against.
    ``inputs``: ``features`` (cached frozen features) or ``images`` (the head trains the backbone
    too, so its fits load the backbone and the task's images: ``benchmark.finetune_run``).
    """

    name: str
    label: str
    order: int
    description: str
    hparams: tuple[HParam, ...]
    builder: Target
    loss: Target | None = None
    stacked_loss: Target | None = None
    fitter: Target | None = None
    finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    default: bool = True  # run by a suite that lists no methods (built-ins only)
    labelled: tuple[str, ...] = ()
    style: tuple[str, str] | None = None  # (matplotlib colour, marker)
    role: str | None = None
    contends_with: tuple[str, ...] = ()
    inputs: str = "features"  # HEAD_INPUTS: "images" fits skip the feature cache (benchmark.finetune_run)
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = [p.name for p in self.hparams]
        if len(set(names)) != len(names):
            raise ConfigError(f"head {self.name!r} declares a hyper-parameter twice: {', '.join(names)}")
        clash = [f"{new} and {old}" for new, old in KEY_ALIASES.items() if new in names and old in names]
        if clash:
            raise ConfigError(f"head {self.name!r} declares {', '.join(clash)}: fit keys hash both under the old name")
        missing = [n for n in self.labelled if n not in names]
        if missing:
            raise ConfigError(f"head {self.name!r} labels {', '.join(missing)}, which it does not take")
        if self.inputs not in HEAD_INPUTS:
            raise ConfigError(f"head {self.name!r}: inputs {self.inputs!r} is not one of {', '.join(HEAD_INPUTS)}")
        object.__setattr__(self, "hparams", tuple(self.hparams))

    @property
    def hparam_specs(self) -> Mapping[str, HParam]:
        return MappingProxyType({p.name: p for p in self.hparams})

    @property
    def defaults(self) -> Mapping[str, Any]:
        """Every hyper-parameter the head takes, with its default (None: set by ``finish``)."""
        return MappingProxyType({p.name: p.default for p in self.hparams})

    @property
    def grid_axes(self) -> tuple[str, ...]:
        """The hyper-parameters a suite may sweep in ``grid:`` for this head."""
        return tuple(p.name for p in self.hparams if p.grid)

    @property
    def per_member(self) -> frozenset[str]:
        return frozenset(p.name for p in self.hparams if p.per_member)

    @property
    def builder_id(self) -> str:
        return _target_id(self.builder)

    @property
    def fitter_id(self) -> str:
        return _target_id(self.fitter)

    def takes(self, hparam: str) -> bool:
        return any(p.name == hparam for p in self.hparams)

    def sweepable(self, hparam: str) -> bool:
        return hparam in self.grid_axes

    def resolve(self, attr: str) -> Any:
        """The builder, loss, stacked loss or fitter, imported on first use."""
        if attr not in self._cache:
            target = getattr(self, attr)
            if not isinstance(target, str):
                self._cache[attr] = target
            else:
                module, _, path = target.partition(":")
                obj: Any = importlib.import_module(module)
                for part in path.split("."):
                    obj = getattr(obj, part)
                self._cache[attr] = obj
        return self._cache[attr]


#: The name ``HeadSpec`` had before issue 24 gave a head one name (plugins written against it keep working).
HeadMethod = HeadSpec
