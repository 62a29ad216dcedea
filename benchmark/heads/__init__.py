"""Downstream heads: the registry (torch-free) and, imported lazily, the modules and NMTune's loss.

Public API::

    HEADS, HeadMethod, register_head, get_head, head_names     the registry
    HParams, resolve_hparams, HPARAM_NAMES, NMTUNE_PRESETS     resolved hyper-parameters
    LinearHead, ResidualMLPHead, create_head                   modules (torch)
    nmtune_regularisers, NMTuneLoss, NMTunePreset              NMTune's loss (torch)

``from benchmark.heads import get_head`` does not import torch; the module names below do, on
first use, so the suite schema can validate head grids without paying for PyTorch.
"""

from __future__ import annotations

from benchmark.heads.registry import (
    HEADS,
    HPARAM_NAMES,
    NMTUNE_PRESETS,
    TIEBREAK_AXES,
    HeadMethod,
    default_methods,
    HParams,
    get_head,
    head_names,
    methods_taking,
    register_head,
    resolve_hparams,
)
from benchmark.lazy import lazy_getattr

_LAZY = {
    "LinearHead": "benchmark.heads.modules",
    "ResidualMLPHead": "benchmark.heads.modules",
    "create_head": "benchmark.heads.modules",
    "nmtune_regularisers": "benchmark.heads.nmtune",
    "NMTuneLoss": "benchmark.heads.nmtune",
    "NMTunePreset": "benchmark.heads.nmtune",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["HEADS", "HPARAM_NAMES", "NMTUNE_PRESETS", "TIEBREAK_AXES", "HeadMethod", "HParams", "default_methods",
           "get_head",
           "head_names", "methods_taking", "register_head", "resolve_hparams", *_LAZY]
