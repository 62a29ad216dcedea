"""Pre-training objectives by name: the built-ins (``supervised``, ``clip``) plus plugins from the
``nmlbench.objectives`` entry-point group.

An objective is one module holding one :class:`Objective` subclass registered with
:func:`register_objective`; it owns everything that differs between objectives, and the rest of
``benchmark.pretrain`` asks it instead of testing the objective's name:

- its noise (``default_noise_kind``, ``noise_hint``; which kinds apply is each noise kind's
  ``objectives``, ``benchmark.noise``), and its training set (:meth:`Objective.training_set`:
  the label table and noise record the driver makes, numpy only);
- its model (:meth:`Objective.build_model`, :meth:`Objective.check_model`, the checkpoint
  ``family`` the ``nmlbench`` backbone family reloads it with);
- its training step and per-epoch sums (:meth:`Objective.batch_step`, ``sums``) and the
  memorisation metrics made of them (:meth:`Objective.epoch_metrics`).

This module and the objectives' modules import neither torch nor Ray at import time (the suite
loader and ``nmlbench validate`` read the noise rules); the torch parts load inside methods.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from benchmark.errors import UnknownNameError

ENTRY_POINT_GROUP = "nmlbench.objectives"
BUILTIN = ("supervised", "clip")


class Objective:
    """What one pre-training objective owns (see the module docstring). Subclass and register."""

    name: str = ""
    #: The noise kind a block gets when it names none.
    default_noise_kind: str = ""
    #: How this objective corrupts its data, for the message that rejects a kind of another one.
    noise_hint: str = ""
    #: ``save_pretrain_checkpoint`` family of its models (``timm``, ``open_clip``).
    family: str = ""
    #: Names of the per-epoch sums its step returns, in order (one float64 vector, all-reduced).
    sums: tuple[str, ...] = ()
    #: Whether its model needs the corpus' class count (built after the training set).
    needs_classes: bool = True

    def training_set(
        self, job: Any, split: Any, idx: Any, clean: Any, classes: list[str], base: dict[str, Any]
    ) -> tuple[Any, float, dict[str, Any], dict[str, Any], bool]:
        """(LabelTable, realised ratio, noise record arrays, summary, has_caption_table) of the
        job's noise on its corpus subset ``split`` (positions ``idx`` in the corpus, true labels
        ``clean``; the record holds ``indices`` and ``clean_labels``); driver, no torch."""
        raise NotImplementedError

    def build_model(self, cfg: dict[str, Any]) -> tuple[Any, Any]:
        """The job's freshly initialised model (seeded) and its tokenizer (or None)."""
        raise NotImplementedError

    def check_model(self, job: Any, model: Any) -> None:
        """Reject, in the driver, a model the job cannot train (ConfigError)."""

    def batch_step(
        self, split: Any, table: Any, cfg: dict[str, Any], tokenizer: Any, device: Any, on: Any, rank: int, world: int
    ) -> Any:
        """A worker's step for one job: ``step(model, x, pos_on, pos) -> (loss, sums)`` and
        ``step.after_update(model)`` (called after each optimiser step)."""
        raise NotImplementedError

    def epoch_metrics(self, sums: Sequence[float]) -> dict[str, float]:
        """The per-epoch scalars from the all-reduced sums (memorisation metrics included)."""
        raise NotImplementedError


_OBJECTIVES: dict[str, Objective] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: register an instance of ``cls`` under ``cls.name``."""
    _OBJECTIVES[cls.name] = cls()
    return cls


@functools.lru_cache(maxsize=1)
def _load() -> None:
    for name in BUILTIN:
        importlib.import_module(f"{__name__}.{name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
        if ep.name in BUILTIN:
            warnings.warn(
                f"objective plugin {ep.name!r} from {dist} is ignored: it would shadow "
                "the built-in objective of that name",
                stacklevel=2,
            )
            continue
        try:
            target = ep.load()
            if ep.name not in _OBJECTIVES and isinstance(target, type):
                register_objective(target)
        except Exception as e:  # a broken plugin must not break the others
            warnings.warn(
                f"objective plugin {ep.name!r} from {dist} failed to load ({type(e).__name__}: {e}); skipped",
                stacklevel=2,
            )


def objectives() -> dict[str, Objective]:
    """Every registered objective, built-ins first in ``BUILTIN`` order (not import order: a test
    that imports ``clip`` first must not reorder them), then plugins."""
    _load()
    first = {n: _OBJECTIVES[n] for n in BUILTIN if n in _OBJECTIVES}
    return {**first, **{n: o for n, o in _OBJECTIVES.items() if n not in first}}


def objective_names() -> tuple[str, ...]:
    return tuple(objectives())


def get_objective(name: str) -> Objective:
    """The objective registered as ``name``; unknown -> UnknownNameError listing them."""
    known = objectives()
    if name in known:
        return known[name]
    raise UnknownNameError(
        "objective", name, list(known), hint=f"plugins register under the entry-point group {ENTRY_POINT_GROUP!r}"
    )


def lazy(target: str) -> Callable[..., Any]:
    """``"module:function"`` resolved on call (keeps torch out of an objective's import)."""
    module, _, attr = target.partition(":")

    def call(*args: Any, **kw: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kw)

    return call
