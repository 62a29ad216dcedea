"""What a data-root registry entry is: its name, nominal sizes, expected layout and loader.

Every set read from a user-given data root (torchvision-format ID sets, ImageNet and its
variants, DomainNet, image-text corpora) is one ``RealSpec``. The spec alone answers the
questions ``nmlbench datasets`` asks (is it there, how to get it) without loading anything; its
``builder`` turns the files into splits when a run needs them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.data.base import ImageSplit
from benchmark.errors import DatasetUnavailable


def download_command(name: str, root: str | Path = "<DIR>") -> str:
    """The one command that downloads a torchvision-backed set (shown in errors and tables)."""
    return f"python -m benchmark.data.install --download {name} --data-root {root}"


@dataclass(frozen=True)
class RealSpec:
    """A registry entry for a data set read from the data root.

    Sizes are the published ones (nominal); loaded splits hold what the files hold, so a
    miniature copy in the same layout loads through the same code with fewer items and classes.
    """

    name: str
    num_classes: int
    domain: str
    source: str
    marker: str  # path under the root whose presence means "installed"
    layout: str  # the expected layout, as shown in errors
    sizes: dict[str, int]
    splits: tuple[str, ...] = ("train", "test")
    how_to_get: str = ""
    description: str = ""
    # torchvision specifics
    tv_class: str = ""  # set: torchvision can download it (and opens it unless ``builder`` is set)
    tv_args: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # our split -> tv kwargs per part
    holdout: bool = False  # one torchvision set split here into train/test
    fixed_classes: tuple[str, ...] | None = None
    needs: str = ""  # an optional Python module it needs (pcam: h5py)
    #: Own loader ``builder(root, spec) -> {split: ImageSplit}``; None: opened through torchvision.
    builder: Callable[[Path, Any], dict[str, ImageSplit]] | None = None  # (root, its own spec)

    def layout_text(self, root: Path | str) -> str:
        return self.layout.replace("<root>", str(root))

    def how_to_get_text(self, root: Path | str) -> str:
        return self.how_to_get.replace("<DIR>", str(root))


@dataclass(frozen=True)
class FolderSpec(RealSpec):
    """A RealSpec read by its own ``builder`` from a folder layout (ImageNet, DomainNet ...)."""


def require(spec: RealSpec, root: Path) -> None:
    """Raise DatasetUnavailable naming the set, the path, the layout and the fix if absent."""
    path = root / spec.marker
    if not path.exists():
        raise DatasetUnavailable(
            f"{spec.name}: not found at {path}. Expected layout: {spec.layout_text(root)}. "
            f"To get it: {spec.how_to_get_text(root)}"
        )
    if spec.needs and importlib.util.find_spec(spec.needs) is None:
        raise DatasetUnavailable(
            f"{spec.name}: reading it needs the Python package {spec.needs}; install it with: pip install {spec.needs}"
        )


def is_present(spec: RealSpec, root: Path | None) -> bool:
    """Cheap check (no scan): does the set's top folder exist under ``root``?"""
    return root is not None and (root / spec.marker).exists()
