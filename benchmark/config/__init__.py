"""Suite files: the schema (``schema``), readable validation errors (``messages``) and loading (``load``).

Public API::

    load_suite(path) -> Suite          validate_suite(data, source) -> Suite
    check_data_available(suite)        default_tracking_uri(work_dir) -> str
    Suite, PretrainBlock, FrozenBackbone, Downstream, Selection, Tracking, RaySpec
"""

from __future__ import annotations

from benchmark.config.load import check_data_available, load_suite, validate_suite
from benchmark.config.schema import (
    Downstream,
    FrozenBackbone,
    NoiseSpec,
    PretrainBlock,
    RaySpec,
    Selection,
    Suite,
    Tracking,
    default_tracking_uri,
)

__all__ = [
    "Downstream",
    "FrozenBackbone",
    "NoiseSpec",
    "PretrainBlock",
    "RaySpec",
    "Selection",
    "Suite",
    "Tracking",
    "check_data_available",
    "default_tracking_uri",
    "load_suite",
    "validate_suite",
]
