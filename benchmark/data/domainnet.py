"""DomainNet: six domains sharing 345 classes, read through the official split files.

Layout: ``<root>/domainnet/<domain>/<class>/*.jpg`` plus ``<root>/domainnet/<domain>_{train,test}.txt``
(lines ``<domain>/<class>/<file>.jpg <label>``). The class list is rebuilt from the split files
(label -> the class folder its lines name), so every domain read from the same files shares one
label space, and a copy listing fewer classes (labels 0..k-1) is a k-class DomainNet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.data.base import ImageSplit
from benchmark.data.files import FileListSplit
from benchmark.data.spec import FolderSpec, require
from benchmark.errors import DatasetUnavailable

DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


def read_domainnet_list(path: Path) -> list[tuple[str, int]]:
    """(relative image path, label) per line of an official split file."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DatasetUnavailable(
                    f"{path}:{n}: expected '<domain>/<class>/<file>.jpg <label>', got {line.strip()!r}"
                )
            rows.append((parts[0], int(parts[1])))
    return rows


def domainnet_classes(root: Path, domain: str) -> list[str]:
    """Class names by label index, read from the domain's split files (folder of each label)."""
    names: dict[int, str] = {}
    for split in ("train", "test"):
        path = root / "domainnet" / f"{domain}_{split}.txt"
        if not path.is_file():
            continue
        for rel, label in read_domainnet_list(path):
            parts = rel.split("/")
            name = parts[1] if len(parts) >= 3 else parts[0]
            if names.setdefault(label, name) != name:
                raise DatasetUnavailable(f"{path}: label {label} names two classes, {names[label]!r} and {name!r}")
    size = max(names, default=-1) + 1
    return [names.get(i, f"label-{i}") for i in range(size)]


def _build_domainnet(root: Path, spec: FolderSpec) -> dict[str, ImageSplit]:
    require(spec, root)
    domain = spec.domain
    base = root / "domainnet"
    classes = domainnet_classes(root, domain)
    out: dict[str, ImageSplit] = {}
    for split in ("train", "test"):
        path = base / f"{domain}_{split}.txt"
        if not path.is_file():
            raise DatasetUnavailable(
                f"{spec.name}: split file {path} not found. Expected layout: "
                f"{spec.layout_text(root)}. {spec.how_to_get}"
            )
        rows = read_domainnet_list(path)
        out[split] = FileListSplit(
            spec.name,
            split,
            classes,
            [base / r for r, _ in rows],
            np.asarray([lab for _, lab in rows], dtype=np.int64),
            version="official1",
        )
    return out


#: Published (train, test) sizes of each domain's official split.
DOMAINNET_SIZES = {
    "clipart": (33525, 14604),
    "infograph": (36023, 15582),
    "painting": (50416, 21850),
    "quickdraw": (120750, 51750),
    "real": (120906, 52041),
    "sketch": (48212, 20916),
}

DOMAINNET_SPECS: dict[str, FolderSpec] = {
    f"domainnet-{d}": FolderSpec(
        name=f"domainnet-{d}",
        num_classes=345,
        domain=d,
        source="folder",
        marker=f"domainnet/{d}",
        layout=f"<root>/domainnet/{d}/<class>/*.jpg with <root>/domainnet/{d}_train.txt and "
        f"{d}_test.txt (lines '{d}/<class>/<file>.jpg <label>')",
        sizes={"train": train, "test": test},
        how_to_get=f"download {d}.zip, {d}_train.txt and {d}_test.txt "
        "from the DomainNet site (ai.bu.edu/M3SDA) and unzip into <root>/domainnet",
        builder=_build_domainnet,
    )
    for d, (train, test) in DOMAINNET_SIZES.items()
}
