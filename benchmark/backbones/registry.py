"""Backbone families by name: the built-ins plus plugins from the ``nmlbench.backbones`` group.

A third party adds a family without editing this package by declaring, in its pyproject::

    [project.entry-points."nmlbench.backbones"]
    myfamily = "my_package.module:create_backbone"   # callable(spec: dict) -> Backbone

Built-ins are registered the same way (as "module:function" strings resolved on first use), so
``create_backbone`` does not import open_clip to build a timm model. A plugin that fails to
import is skipped with a warning naming its distribution; the others keep working.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from benchmark.errors import ConfigError, UnknownNameError

ENTRY_POINT_GROUP = "nmlbench.backbones"
Factory = Callable[[dict[str, Any]], Any]

#: family -> ("module:function", one-line description)
BUILTIN_FAMILIES: dict[str, tuple[str, str]] = {
    "timm": (
        "benchmark.backbones.timm_family:create_timm_backbone",
        "any timm architecture; seeded random init or a state-dict checkpoint; pooled pre-logits",
    ),
    "open_clip": (
        "benchmark.backbones.open_clip_family:create_open_clip_backbone",
        "image tower of an open_clip config (incl. nml-tiny-clip); encode_image features",
    ),
    "torchvision": (
        "benchmark.backbones.torchvision_family:create_torchvision_backbone",
        "torchvision classifiers; mobilenet_v2 with offline ImageNet weights; pre-logits",
    ),
    "nmlbench": (
        "benchmark.backbones.checkpoint:create_nmlbench_backbone",
        "checkpoints written by the suite's pre-training (model.pt)",
    ),
    "blackbox": (
        "benchmark.backbones.blackbox:create_blackbox_backbone",
        "any embedding function 'module:function' (API setting), identity from 'version'",
    ),
}


def _import_target(target: str) -> Factory:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _describe(factory: Factory) -> str:
    desc = getattr(factory, "description", None) or (factory.__doc__ or "").strip()
    return desc.splitlines()[0].strip() if desc else "(no description)"


@functools.lru_cache(maxsize=1)
def _plugins() -> dict[str, tuple[Factory, str, str]]:
    """family -> (factory, description, distribution), loaded once per process."""
    found: dict[str, tuple[Factory, str, str]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
        if ep.name in BUILTIN_FAMILIES:
            warnings.warn(
                f"backbone plugin {ep.name!r} from {dist} is ignored: it would shadow the "
                "built-in family of that name; rename its entry point",
                stacklevel=2,
            )
            continue
        try:
            factory = ep.load()
        except Exception as e:  # a broken plugin must not break the others
            warnings.warn(
                f"backbone plugin {ep.name!r} from distribution {dist} failed to load "
                f"({type(e).__name__}: {e}); skipped. Reinstall or fix {dist}.",
                stacklevel=2,
            )
            continue
        if not callable(factory):
            warnings.warn(f"backbone plugin {ep.name!r} from {dist} is not callable; skipped", stacklevel=2)
            continue
        found[ep.name] = (factory, _describe(factory), dist)
    return found


def refresh_plugins() -> None:
    """Forget loaded plugins (e.g. after installing one in a running process)."""
    _plugins.cache_clear()


def list_backbones() -> dict[str, str]:
    """family -> one-line description, built-ins first, then plugins (sorted)."""
    out = {name: desc for name, (_, desc) in BUILTIN_FAMILIES.items()}
    for name in sorted(_plugins()):
        factory, desc, dist = _plugins()[name]
        out[name] = f"{desc} [plugin: {dist}]"
    return out


def get_factory(family: str) -> Factory:
    """The factory of a family; unknown -> UnknownNameError listing every family."""
    if family in BUILTIN_FAMILIES:
        return _import_target(BUILTIN_FAMILIES[family][0])
    plugins = _plugins()
    if family in plugins:
        return plugins[family][0]
    raise UnknownNameError(
        "backbone family",
        family,
        list(BUILTIN_FAMILIES) + list(plugins),
        hint=f"plugins register under the entry-point group {ENTRY_POINT_GROUP!r}",
    )


def create_backbone(spec: dict[str, Any]) -> Any:
    """Build a backbone from a spec dict; ``spec['family']`` picks the factory."""
    if not isinstance(spec, dict):
        raise ConfigError(f"backbone spec must be a mapping with a 'family' key, got {spec!r}")
    family = spec.get("family")
    if not family:
        raise ConfigError(f"backbone spec {spec!r} has no 'family'; one of: {', '.join(list_backbones())}")
    return get_factory(str(family))(dict(spec))


def format_backbones_table() -> str:
    """Text table of families for ``nmlbench backbones``."""
    from tabulate import tabulate

    rows = [
        (name, "plugin" if name not in BUILTIN_FAMILIES else "built-in", desc)
        for name, desc in list_backbones().items()
    ]
    return tabulate(rows, headers=["family", "source", "description"], tablefmt="simple")
