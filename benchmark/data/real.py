"""Real data sets read from a user-given data root: one table of registry entries, one loader.

The entries live with their formats: ``torchvision_sets`` (the paper's 14 ID tasks, some read by
``own_readers``), ``imagenet`` (ImageNet and its variants), ``domainnet``, ``image_text`` (the
CLIP pre-training corpora, as webdataset shards or a caption table). Each module's
docstring and each entry's ``layout`` give the expected files under ``<root>``. Nothing here
downloads unless ``download_dataset`` is called explicitly.

Sizes listed per entry are the published ones (nominal); the loaded splits are what the files
hold, and class lists come from the files too (a miniature copy with fewer classes loads through
the same code).
"""

from __future__ import annotations

from pathlib import Path

from benchmark.data.base import ImageSplit
from benchmark.data.domainnet import DOMAINNET_DOMAINS, DOMAINNET_SPECS, domainnet_classes
from benchmark.data.files import IMAGE_EXTENSIONS, FileListSplit
from benchmark.data.image_text import IMAGE_TEXT_SPECS
from benchmark.data.imagenet import IMAGENET_SPECS, IMAGENET_VARIANTS, imagenet_wnids
from benchmark.data.spec import FolderSpec, RealSpec, download_command, is_present
from benchmark.data.torchvision_sets import (
    SPLIT_SEED,
    TEST_FRACTION,
    TV_SPECS,
    TorchvisionSplit,
    download_dataset,
    load_torchvision_splits,
)

FOLDER_SPECS: dict[str, RealSpec] = {**IMAGENET_SPECS, **DOMAINNET_SPECS}
REAL_SPECS: dict[str, RealSpec] = {**TV_SPECS, **FOLDER_SPECS, **IMAGE_TEXT_SPECS}


def load_real_splits(spec: RealSpec, root: Path) -> dict[str, ImageSplit]:
    """Every split of ``spec`` under ``root`` (raises DatasetUnavailable when absent)."""
    if spec.builder is not None:
        return spec.builder(root, spec)
    return load_torchvision_splits(spec, root)


__all__ = [
    "DOMAINNET_DOMAINS",
    "FOLDER_SPECS",
    "IMAGE_TEXT_SPECS",
    "IMAGENET_VARIANTS",
    "IMAGE_EXTENSIONS",
    "REAL_SPECS",
    "SPLIT_SEED",
    "TEST_FRACTION",
    "TV_SPECS",
    "FileListSplit",
    "FolderSpec",
    "RealSpec",
    "TorchvisionSplit",
    "domainnet_classes",
    "download_command",
    "download_dataset",
    "imagenet_wnids",
    "is_present",
    "load_real_splits",
    "load_torchvision_splits",
]
