"""Noise kinds by name: the built-ins plus plugins from the ``nmlbench.noise`` entry-point group.

A noise kind is one function registered with :func:`register_noise_kind`; everything else (the
suite schema, the job rules, the corpus that draws the noise, ``flip_labels``) asks this
registry, so a new kind is one file. An outside package declares, in its pyproject::

    [project.entry-points."nmlbench.noise"]
    mykind = "my_package.noise:register"   # a module or callable; importing it registers

Two shapes of kind, one per kind of data (``NoiseKind.data``):

- ``"labels"``: ``fn(labels, num_classes, ratio, seed, **options) -> NoiseResult`` (labels
  already checked, int64; ``ratio`` in [0, 1); extra per-sample ``inputs`` such as
  ``features`` arrive as keyword arguments too);
- ``"captions"``: ``fn(captions, ratio, seed, **options) -> CaptionSwapResult``.

No torch and no Ray here: ``nmlbench validate`` and the suite loader import this module.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from benchmark.errors import ConfigError, UnknownNameError

ENTRY_POINT_GROUP = "nmlbench.noise"
DATA_KINDS = ("labels", "captions")


@dataclass(frozen=True)
class NoiseKind:
    """One way of corrupting a training set, and what it needs.

    ``objectives``: the pre-training objectives it applies to (supervised flips labels, clip
    swaps captions). ``options``: suite option name -> what its value is (``noise.<option>`` in a
    suite, e.g. asymmetric's ``class_map``); ``required`` of them must be given. ``inputs``:
    per-sample data the corpus must compute for it (``"features"``: instance-dependent noise).
    """

    name: str
    fn: Callable[..., Any]
    data: str
    objectives: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    description: str = ""

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self.fn(*args, **kw)


_KINDS: dict[str, NoiseKind] = {}


def register_noise_kind(
    name: str,
    *,
    data: str,
    objectives: tuple[str, ...] | list[str],
    options: dict[str, str] | None = None,
    required: tuple[str, ...] | list[str] = (),
    inputs: tuple[str, ...] | list[str] = (),
    description: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` as the noise kind ``name`` (see the module docstring)."""
    if data not in DATA_KINDS:
        raise ConfigError(f"noise kind {name!r}: data {data!r} must be one of {list(DATA_KINDS)}")
    opts = dict(options or {})
    missing = [o for o in required if o not in opts]
    if missing:
        raise ConfigError(f"noise kind {name!r}: required option(s) {missing} are not declared in options")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _KINDS[name] = NoiseKind(name, fn, data, tuple(objectives), opts, tuple(required), tuple(inputs), doc)
        return fn

    return wrap


def unregister_noise_kind(name: str) -> None:
    """Forget a kind registered in this process (a test's, or a plugin being reloaded)."""
    _KINDS.pop(name, None)


def _builtins() -> None:
    importlib.import_module("benchmark.noise.flips")
    importlib.import_module("benchmark.noise.swap")


@functools.lru_cache(maxsize=1)
def _load_plugins() -> None:
    """Import the built-ins, then every ``nmlbench.noise`` entry point (once per process)."""
    _builtins()
    builtin = set(_KINDS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
        if ep.name in builtin:
            warnings.warn(
                f"noise plugin {ep.name!r} from {dist} is ignored: it would shadow the "
                "built-in kind of that name; rename its entry point",
                stacklevel=2,
            )
            continue
        try:
            target = ep.load()
            if ep.name not in _KINDS and callable(target):
                target()  # a registration function; a module registers on import
        except Exception as e:  # a broken plugin must not break the others
            warnings.warn(
                f"noise plugin {ep.name!r} from distribution {dist} failed to load "
                f"({type(e).__name__}: {e}); skipped. Reinstall or fix {dist}.",
                stacklevel=2,
            )


def refresh_plugins() -> None:
    """Forget loaded plugins (e.g. after installing one in a running process)."""
    _load_plugins.cache_clear()


def noise_kinds(objective: str | None = None) -> dict[str, NoiseKind]:
    """Every registered kind (built-ins first), or those that apply to ``objective``."""
    _load_plugins()
    return {n: k for n, k in _KINDS.items() if objective is None or objective in k.objectives}


def get_noise_kind(name: str) -> NoiseKind:
    """The kind registered as ``name``; unknown -> UnknownNameError listing every kind."""
    kinds = noise_kinds()
    if name in kinds:
        return kinds[name]
    raise UnknownNameError(
        "noise kind", name, list(kinds), hint=f"plugins register under the entry-point group {ENTRY_POINT_GROUP!r}"
    )


def option_problem(kind: NoiseKind, options: dict[str, Any]) -> str | None:
    """What is wrong with the options given to ``kind`` (suite keys ``noise.<option>``), or None."""
    for name in kind.required:
        if not options.get(name):
            return f"noise.kind {kind.name!r} needs noise.{name} ({kind.options[name]})"
    for name, value in options.items():
        if value and name not in kind.options:
            owners = [k for k, v in noise_kinds().items() if name in v.options]
            by = " | ".join(repr(o) for o in owners) or "no registered kind"
            return f"noise.{name} is used only by noise.kind {by}, not {kind.name!r}"
    return None
