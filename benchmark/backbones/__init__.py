"""Frozen feature extractors behind one protocol; families are plugins (see ``registry``).

Public API::

    create_backbone(spec) -> Backbone        list_backbones() -> {family: description}
    format_backbones_table() -> str          Backbone, TorchBackbone, make_transform, ...
    create_timm_classifier(...), create_open_clip_model(...), save_pretrain_checkpoint(...)

Family modules (and so timm / open_clip) are imported lazily, on first use of a name from them,
so ``nmlbench backbones`` and the CLI start fast.
"""

from __future__ import annotations

from benchmark.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SUITE_MEAN,
    SUITE_STD,
    Backbone,
    TorchBackbone,
    describe_transform,
    make_transform,
    transform_images,
    transform_spec,
)
from benchmark.backbones.registry import (
    ENTRY_POINT_GROUP,
    create_backbone,
    format_backbones_table,
    list_backbones,
    refresh_plugins,
)
from benchmark.lazy import lazy_getattr

_LAZY = {
    "create_timm_classifier": "benchmark.backbones.timm_family",
    "timm_features": "benchmark.backbones.timm_family",
    "create_open_clip_model": "benchmark.backbones.open_clip_family",
    "open_clip_preprocess": "benchmark.backbones.open_clip_family",
    "save_pretrain_checkpoint": "benchmark.backbones.checkpoint",
    "load_pretrain_checkpoint": "benchmark.backbones.checkpoint",
    "BlackBoxBackbone": "benchmark.backbones.blackbox",
    "mobilenet_v2_weights_path": "benchmark.backbones.torchvision_family",
    "WeightsUnavailable": "benchmark.backbones.torchvision_family",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SUITE_MEAN",
    "SUITE_STD",
    "Backbone",
    "TorchBackbone",
    "describe_transform",
    "make_transform",
    "transform_images",
    "transform_spec",
    "ENTRY_POINT_GROUP",
    "create_backbone",
    "format_backbones_table",
    "list_backbones",
    "refresh_plugins",
    *_LAZY,
]
