"""The head registry: every downstream head is declared once, in its own module, and every other
module asks this registry instead of spelling head names out.

A head is one ``HeadSpec`` (``spec.py``): its name, label, display order and description, the typed
hyper-parameters it takes (``HParam``: defaults, value rules, which a suite may sweep, which may
differ between the members of one batched fit, the tie-break rank of each axis), how to build
its module, its loss (per member, and optionally stacked for G members trained at once), a fitter
where gradient training does not apply, and what reporting needs (how a fit's chosen values are
labelled, a plot style, the roles the paper's claims give it). The built-ins live in
``heads/lp.py``, ``lp_adamw.py``, ``mlp.py``, ``nmtune.py`` and ``lgm.py``; outside packages add heads
through the entry-point group ``nmlbench.heads`` (loaded on first need, like backbone families)::

    [project.entry-points."nmlbench.heads"]
    cosine = "my_package.heads:COSINE"      # a HeadSpec, or a module that registers one

This module imports no torch (the suite schema validates head grids with it). Builders, losses
and fitters are callables or ``"module:function"`` strings resolved on first use.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Sequence, ValuesView
from importlib.metadata import entry_points
from typing import Any

from benchmark.errors import ConfigError, UnknownNameError
from benchmark.heads.gradient import EPOCH_SELECTIONS
from benchmark.heads.hparams import RENAMED, HParam, HParams, as_float, as_int
from benchmark.heads.robust import finish_loss
from benchmark.heads.spec import HEAD_INPUTS, HeadMethod, HeadSpec, Target

ENTRY_POINT_GROUP = "nmlbench.heads"
#: The modules that declare the built-in heads (imported by ``benchmark.heads``).
BUILTIN_MODULES: tuple[str, ...] = (
    "benchmark.heads.lp",
    "benchmark.heads.lp_adamw",
    "benchmark.heads.mlp",
    "benchmark.heads.nmtune",
    "benchmark.heads.lgm",
    "benchmark.heads.finetune",
)


class _HeadTable(dict[str, HeadSpec]):
    """``name -> HeadSpec``; reading it loads the entry-point plugins first (once)."""

    def __getitem__(self, name: str) -> HeadSpec:
        _load_plugins()
        return dict.__getitem__(self, name)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or (_load_plugins() and dict.__contains__(self, name))

    def __iter__(self) -> Iterator[str]:
        _load_plugins()
        return dict.__iter__(self)

    def __len__(self) -> int:
        _load_plugins()
        return dict.__len__(self)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        _load_plugins()
        return dict.keys(self)

    def values(self) -> ValuesView[HeadSpec]:  # type: ignore[override]
        _load_plugins()
        return dict.values(self)

    def items(self) -> ItemsView[str, HeadSpec]:  # type: ignore[override]
        _load_plugins()
        return dict.items(self)


HEADS: dict[str, HeadSpec] = _HeadTable()
_PLUGIN_NAMES: set[str] = set()


def _check(method: HeadSpec) -> None:
    if dict.__contains__(HEADS, method.name):
        raise ConfigError(f"head method {method.name!r} is registered twice")
    for p in method.hparams:
        for other in dict.values(HEADS):
            theirs = other.hparam_specs.get(p.name)
            if theirs is not None and (theirs.kind, theirs.tiebreak) != (p.kind, p.tiebreak):
                raise ConfigError(
                    f"head {method.name!r} declares {p.name!r} as {p.kind} (tie-break rank {p.tiebreak}), but "
                    f"{other.name!r} declares it as {theirs.kind} (rank {theirs.tiebreak}): one name, one meaning; "
                    "rename the hyper-parameter or reuse the existing declaration"
                )


def register_head(method: HeadSpec | None = None, **fields: Any) -> Any:
    """Add a head to the registry; names are unique and a hyper-parameter name means one thing.

    ``register_head(HeadSpec(...))`` registers and returns the declaration. As a decorator,
    ``@register_head(name=..., label=..., ...)`` on a module class (or a builder function)
    registers a head built by it and returns the class unchanged.
    """
    if method is None:

        def decorate(builder: Any) -> Any:
            register_head(HeadSpec(builder=builder, **fields))
            return builder

        return decorate
    if fields:
        raise ConfigError("register_head takes a HeadSpec or keyword fields, not both")
    _check(method)
    dict.__setitem__(HEADS, method.name, method)
    return method


def unregister_head(name: str) -> HeadSpec:
    """Remove a head (tests that declare one for a while); unknown names raise ``UnknownNameError``."""
    head = get_head(name)
    dict.__delitem__(HEADS, name)
    _PLUGIN_NAMES.discard(name)
    return head


@functools.lru_cache(maxsize=1)
def _plugin_entry_points() -> bool:
    """Load every ``nmlbench.heads`` entry point once per process; a broken one only warns."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
        existing = dict.get(HEADS, ep.name)
        if existing is not None and ep.name not in _PLUGIN_NAMES:
            warnings.warn(
                f"head plugin {ep.name!r} from {dist} is ignored: it would shadow the built-in head of "
                "that name; rename its entry point",
                stacklevel=3,
            )
            continue
        try:
            obj = ep.load()
            if isinstance(obj, HeadSpec) and dict.get(HEADS, obj.name) is not obj:
                register_head(obj)
        except Exception as e:  # a broken plugin must not break the others
            warnings.warn(
                f"head plugin {ep.name!r} from distribution {dist} failed to load "
                f"({type(e).__name__}: {e}); skipped. Reinstall or fix {dist}.",
                stacklevel=3,
            )
            continue
        if not dict.__contains__(HEADS, ep.name):
            warnings.warn(
                f"head plugin {ep.name!r} from {dist} registered no head named {ep.name!r}; the entry "
                "point must name a HeadSpec (or a module registering one) of that name",
                stacklevel=3,
            )
            continue
        _PLUGIN_NAMES.add(ep.name)
    return True


_loading = False


def _load_plugins() -> bool:
    """Load the plugins unless loading is under way (a plugin registering reads the table)."""
    global _loading
    if _loading or _plugin_entry_points.cache_info().currsize:
        return True
    _loading = True
    try:
        _plugin_entry_points()
    finally:
        _loading = False
    return True


def refresh_plugins() -> None:
    """Forget loaded plugin heads (e.g. after installing one in a running process)."""
    for name in list(_PLUGIN_NAMES):
        if dict.__contains__(HEADS, name):
            dict.__delitem__(HEADS, name)
    _PLUGIN_NAMES.clear()
    _plugin_entry_points.cache_clear()


def plugin_heads() -> tuple[str, ...]:
    """Names of the heads that came from entry points (display order)."""
    return tuple(n for n in head_names() if n in _PLUGIN_NAMES)


def get_head(name: str) -> HeadSpec:
    """The registered head ``name``; unknown names raise ``UnknownNameError`` listing them all."""
    if name not in HEADS:
        raise UnknownNameError(
            "head method",
            str(name),
            head_names(),
            hint=f"plugins register under the entry-point group {ENTRY_POINT_GROUP!r}",
        )
    return HEADS[name]


def head_names() -> tuple[str, ...]:
    """Registered head names in display order (LP, MLP, NMTune, then plugins by their order)."""
    return tuple(sorted(HEADS, key=lambda n: (HEADS[n].order, n)))


def default_heads() -> tuple[str, ...]:
    """The heads a suite runs when it lists none (display order): built-ins but reproduction variants.

    An installed plugin is never a default: installing a package must not change what existing
    suites run (their fit keys and leaderboards stay as they were). A suite names it to run it.
    """
    return tuple(n for n in head_names() if HEADS[n].default and n not in _PLUGIN_NAMES)


def heads_taking(hparam: str) -> list[str]:
    return [n for n in head_names() if HEADS[n].takes(hparam)]


def hparam_names(methods: Iterable[str] | None = None) -> tuple[str, ...]:
    """Every hyper-parameter name the heads take (``methods``: only theirs): the built-ins' in
    their historical order (``_CANONICAL_ORDER``), then the others in display order."""
    names = head_names() if methods is None else tuple(methods)
    taken = {p.name for n in names for p in HEADS[n].hparams}
    out = [a for a in _CANONICAL_ORDER if a in taken]
    for n in names:
        out += [p.name for p in HEADS[n].hparams if p.name not in out]
    return tuple(out)


#: The order hyper-parameter names are listed in (the historical field order of ``HParams``).
_CANONICAL_ORDER: tuple[str, ...] = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "epoch_selection",
    "width",
    "depth",
    "preset",
    "lam",
    "w_mse",
    "w_cov",
    "w_svd",
    "svd_topk",
    "l2_min",
    "l2_max",
    "l2_steps",
    "l2_refine",
    "standardize",
    "max_iter",
    "tol",
)


class _LiveNames(Sequence[str]):
    """``hparam_names()`` read at each use, so a plugin's hyper-parameters count as known."""

    def _names(self) -> tuple[str, ...]:
        return hparam_names()

    def __getitem__(self, i: Any) -> Any:
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (tuple, list, _LiveNames)) else NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(self._names())


#: Every known hyper-parameter name (a live view of ``hparam_names()``).
HPARAM_NAMES: Sequence[str] = _LiveNames()


def tiebreak_axes(methods: Iterable[str] | None = None) -> tuple[str, ...]:
    """The grid axes that break validation ties, in order (declared ``tiebreak`` ranks; the
    smaller value along an axis is the simpler head). ``methods``: only the axes these heads take."""
    names = head_names() if methods is None else tuple(m for m in methods if m in HEADS)
    ranked: dict[str, int] = {}
    for n in names:
        for p in HEADS[n].hparams:
            if p.tiebreak is not None:
                ranked.setdefault(p.name, p.tiebreak)
    return tuple(sorted(ranked, key=lambda a: (ranked[a], a)))


def per_member_hparams(methods: Iterable[str] | None = None) -> frozenset[str]:
    """Hyper-parameters that may differ between the members of one batched fit."""
    names = head_names() if methods is None else tuple(methods)
    return frozenset().union(*(HEADS[n].per_member for n in names))


def builtin_heads() -> tuple[str, ...]:
    return tuple(n for n in head_names() if n not in _PLUGIN_NAMES)


def __getattr__(name: str) -> Any:
    """``TIEBREAK_AXES`` and ``PER_MEMBER``: the built-in heads' values, computed from their
    declarations (fixed: an installed plugin must not change how existing suites are selected)."""
    if name == "TIEBREAK_AXES":
        return tiebreak_axes(builtin_heads())
    if name == "PER_MEMBER":
        return per_member_hparams(builtin_heads())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- resolving one fit's values ------------------------------------------------------------------


def resolve_hparams(method: str, **given: Any) -> HParams:
    """``method``'s defaults merged with ``given`` (None means "not given"), validated.

    Names no registered head takes raise ``ConfigError`` listing the allowed ones; a known name
    that ``method`` does not take must be None or absent (the message says which methods take
    it). Values are checked by each declaration, then by the head's ``finish`` (NMTune's preset
    fills ``lam`` and the ``w_*`` weights that were not given).
    """
    head = get_head(method)
    known = hparam_names()
    unknown = sorted(set(given) - set(known))
    moved = [f"{k} was renamed {RENAMED[k]}" for k in unknown if k in RENAMED]
    if moved:
        raise ConfigError(f"{'; '.join(moved)} (method {method!r}); allowed: {', '.join(head.defaults)}")
    if unknown:
        raise ConfigError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for method {method!r}; "
            f"allowed: {', '.join(head.defaults)}"
        )
    wrong = sorted(k for k, v in given.items() if not head.takes(k) and v is not None)
    if wrong:
        detail = "; ".join(f"{k} applies to {', '.join(heads_taking(k)) or 'no method'}" for k in wrong)
        raise ConfigError(
            f"hyper-parameter(s) {', '.join(wrong)} do not apply to method {method!r} "
            f"({detail}); allowed for {method!r}: {', '.join(head.defaults)}"
        )
    hp = dict(head.defaults)
    hp.update({k: v for k, v in given.items() if v is not None})
    for p in sorted(head.hparams, key=lambda p: p.phase):  # stable: declared order within a phase
        if hp[p.name] is not None:
            hp[p.name] = p.validate(hp[p.name])
    if head.takes("loss"):  # every gradient head: ce stored as unset, a robust loss's values filled
        hp = finish_loss(hp)
    if head.finish is not None:
        hp = head.finish(hp)
    return HParams(method, hp)


__all__ = [
    "BUILTIN_MODULES",
    "ENTRY_POINT_GROUP",
    "EPOCH_SELECTIONS",
    "HEADS",
    "HEAD_INPUTS",
    "HPARAM_NAMES",
    "HParam",
    "HParams",
    "HeadMethod",
    "HeadSpec",
    "Target",
    "as_float",
    "as_int",
    "builtin_heads",
    "default_heads",
    "get_head",
    "head_names",
    "hparam_names",
    "heads_taking",
    "per_member_hparams",
    "plugin_heads",
    "refresh_plugins",
    "register_head",
    "resolve_hparams",
    "tiebreak_axes",
    "unregister_head",
]
