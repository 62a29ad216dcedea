"""Downstream heads: the registry (torch-free), one declaring module per head, and, imported
lazily, the torch modules and NMTune's loss.

Public API::

    HEADS, HeadSpec, HParam, register_head, get_head, head_names     the registry
    HParams, resolve_hparams, HPARAM_NAMES, NMTUNE_PRESETS             resolved hyper-parameters
    hparam_label, tiebreak_axes, plot_style, probe_head, contenders    what reporting reads
    LinearHead, ResidualMLPHead, create_head                           modules (torch)
    nmtune_regularisers, NMTuneLoss, NMTunePreset                      NMTune's loss (torch on use)

``from benchmark.heads import get_head`` does not import torch; the module names below do, on
first use, so the suite schema can validate head grids without paying for PyTorch. Importing
this package registers the built-in heads (``registry.BUILTIN_MODULES``); plugins come from the
``nmlbench.heads`` entry points on first need.
"""

from __future__ import annotations

import importlib

from benchmark.heads.hparams import HParam
from benchmark.heads.lookups import (
    DEFAULT_STYLE,
    contenders,
    head_label,
    head_order,
    heads_with_role,
    hparam_label,
    plot_style,
    probe_head,
)
from benchmark.heads.registry import (
    BUILTIN_MODULES,
    EPOCH_SELECTIONS,
    HEADS,
    HPARAM_NAMES,
    HeadMethod,
    HeadSpec,
    HParams,
    default_heads,
    get_head,
    head_names,
    heads_taking,
    hparam_names,
    refresh_plugins,
    register_head,
    resolve_hparams,
    tiebreak_axes,
    unregister_head,
)
from benchmark.lazy import lazy_getattr

for _module in BUILTIN_MODULES:
    importlib.import_module(_module)

from benchmark.heads.nmtune import NMTUNE_PRESETS, NMTuneLoss, NMTunePreset, nmtune_regularisers  # noqa: E402

_LAZY = {
    "LinearHead": "benchmark.heads.modules",
    "ResidualMLPHead": "benchmark.heads.modules",
    "create_head": "benchmark.heads.modules",
}
_getattr = lazy_getattr(__name__, _LAZY)


def __getattr__(name: str):
    if name in ("TIEBREAK_AXES", "PER_MEMBER"):
        from benchmark.heads import registry

        return getattr(registry, name)
    return _getattr(name)


__all__ = [
    "DEFAULT_STYLE",
    "EPOCH_SELECTIONS",
    "HEADS",
    "HPARAM_NAMES",
    "NMTUNE_PRESETS",
    "HParam",
    "HeadMethod",
    "HeadSpec",
    "HParams",
    "NMTuneLoss",
    "NMTunePreset",
    "contenders",
    "default_heads",
    "get_head",
    "head_label",
    "head_names",
    "head_order",
    "heads_with_role",
    "hparam_label",
    "hparam_names",
    "heads_taking",
    "nmtune_regularisers",
    "plot_style",
    "probe_head",
    "refresh_plugins",
    "register_head",
    "resolve_hparams",
    "tiebreak_axes",
    "unregister_head",
    *_LAZY,
]
