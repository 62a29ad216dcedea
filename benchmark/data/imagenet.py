"""ImageNet-1K and its OOD variants (V2, Sketch, A, R), all in ImageNet's label space.

Layouts (``<root>`` is the data root):

- ImageNet: ``<root>/imagenet/{train,val}/<wnid>/*.JPEG``; class index = position of the wnid in
  the sorted wnid folders of ``imagenet/train``.
- ImageNet-V2: ``<root>/imagenet-v2/<class index>/*.jpeg`` (folders named 0..999).
- ImageNet-Sketch, -A, -R: ``<root>/imagenet-{sketch,a,r}/<wnid>/*``, labels mapped into the
  ImageNet index space by wnid; a set with fewer wnids than ImageNet (A and R: 200) sets
  ``class_subset`` to the indices present.

The class list always comes from the files, never from the nominal 1,000: a copy with ten wnid
folders (the rehearsal root) is a ten-class ImageNet, V2 then has folders 0..9, and the variants
map into those ten classes through the same code.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from benchmark.data.base import ImageSplit
from benchmark.data.files import FileListSplit, scan_class_folders, subdirs
from benchmark.data.spec import FolderSpec, require
from benchmark.errors import DatasetUnavailable

IMAGENET_VARIANTS = ("imagenet-sketch", "imagenet-a", "imagenet-r")


def imagenet_wnids(root: Path) -> tuple[list[str], str]:
    """The ImageNet class list (sorted wnids) and where it came from.

    Derived from the folders of ``imagenet/train``; without it, the sorted union of the wnid
    folders of imagenet/val, -sketch, -A and -R, which matches the real order only if together
    they hold all 1,000 classes (a warning says so).
    """
    train = root / "imagenet" / "train"
    if train.is_dir():
        return subdirs(train), f"folders of {train}"
    union: set[str] = set()
    looked = [root / "imagenet" / "val"] + [root / v for v in IMAGENET_VARIANTS]
    for folder in looked:
        if folder.is_dir():
            union.update(subdirs(folder))
    if not union:
        raise DatasetUnavailable(
            f"imagenet: no wnid folders found: {train} is absent and so are "
            + ", ".join(str(p) for p in looked)
            + f". Expected layout: {root}/imagenet/{{train,val}}/<wnid>/*.JPEG"
        )
    wnids = sorted(union)
    warnings.warn(
        f"{train} is absent: ImageNet class order taken from the sorted union of the "
        f"{len(wnids)} wnid folders in "
        + ", ".join(str(p) for p in looked if p.is_dir())
        + ("" if len(wnids) == 1000 else " (not 1000 classes: indices will not match ImageNet's)"),
        stacklevel=2,
    )
    return wnids, "sorted union of wnid folders present"


def _build_imagenet(root: Path, spec: FolderSpec) -> dict[str, ImageSplit]:
    require(spec, root)
    wnids, _ = imagenet_wnids(root)
    index = {w: i for i, w in enumerate(wnids)}
    out: dict[str, ImageSplit] = {}
    for split, folder in (("train", "train"), ("test", "val")):
        top = root / "imagenet" / folder
        if not top.is_dir():
            continue
        files, labels = scan_class_folders(top, index.get)
        out[split] = FileListSplit(spec.name, split, wnids, files, labels, version="folder1")
    return out


def _build_imagenet_v2(root: Path, spec: FolderSpec) -> dict[str, ImageSplit]:
    require(spec, root)
    try:
        classes, _ = imagenet_wnids(root)
    except DatasetUnavailable:
        warnings.warn(
            "imagenet-v2: no ImageNet wnid folders under the data root, so class names are the indices 0..999",
            stacklevel=2,
        )
        classes = [str(i) for i in range(1000)]

    def class_of(folder: str) -> int | None:
        return int(folder) if folder.isdigit() and int(folder) < len(classes) else None

    files, labels = scan_class_folders(root / spec.marker, class_of)
    return {"test": FileListSplit(spec.name, "test", classes, files, labels, version="folder1")}


def _build_imagenet_variant(root: Path, spec: FolderSpec) -> dict[str, ImageSplit]:
    require(spec, root)
    wnids, _ = imagenet_wnids(root)
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = scan_class_folders(root / spec.marker, index.get)
    present = np.asarray(sorted(index[w] for w in subdirs(root / spec.marker)), dtype=np.int64)
    subset = present if len(present) < len(wnids) else None
    return {"test": FileListSplit(spec.name, "test", wnids, files, labels, version="folder1", class_subset=subset)}


_IMAGENET_HOW = (
    "download ILSVRC2012 from image-net.org (registration) and arrange it as the layout "
    "says; the val images need sorting into wnid folders"
)


def _variant_spec(name: str, num_classes: int, size: int, how: str) -> FolderSpec:
    return FolderSpec(
        name=name,
        num_classes=1000,
        domain=name,
        source="folder",
        marker=name,
        layout=f"<root>/{name}/<wnid>/*.(jpg|jpeg|png) ({num_classes} wnids; needs "
        f"<root>/imagenet/train for the ImageNet class order)",
        sizes={"test": size},
        splits=("test",),
        how_to_get=how,
        builder=_build_imagenet_variant,
    )


IMAGENET_SPECS: dict[str, FolderSpec] = {
    s.name: s
    for s in (
        FolderSpec(
            name="imagenet",
            num_classes=1000,
            domain="imagenet",
            source="folder",
            marker="imagenet",
            layout="<root>/imagenet/{train,val}/<wnid>/*.JPEG (class index = sorted wnid order)",
            sizes={"train": 1281167, "test": 50000},
            how_to_get=_IMAGENET_HOW,
            builder=_build_imagenet,
        ),
        FolderSpec(
            name="imagenet-v2",
            num_classes=1000,
            domain="imagenet-v2",
            source="folder",
            marker="imagenet-v2",
            layout="<root>/imagenet-v2/<class index 0..999>/*.jpeg (the matched-frequency release, folder renamed)",
            sizes={"test": 10000},
            splits=("test",),
            how_to_get="download imagenetv2-matched-frequency.tar.gz (ImageNetV2 release on Hugging Face) "
            "and extract it as <root>/imagenet-v2",
            builder=_build_imagenet_v2,
        ),
        _variant_spec(
            "imagenet-sketch",
            1000,
            50889,
            "download ImageNet-Sketch (its 'sketch' folder) and place it as <root>/imagenet-sketch",
        ),
        _variant_spec(
            "imagenet-a",
            200,
            7500,
            "download imagenet-a.tar from the natural-adv-examples release and extract it as <root>/imagenet-a",
        ),
        _variant_spec(
            "imagenet-r",
            200,
            30000,
            "download imagenet-r.tar from the imagenet-r release and extract it as <root>/imagenet-r",
        ),
    )
}
