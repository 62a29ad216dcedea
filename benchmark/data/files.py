"""Splits given as image files on disk, and the folder scans that find them.

A ``FileListSplit`` holds paths and labels only, so it pickles as a file list (cheap to send to
a DataLoader worker or a Ray task) and decodes an image only when an item is asked for. The scan
helpers sort every listing, so the same files give the same item order on every machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.base import ImageSplit
from benchmark.errors import DatasetUnavailable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")


class FileListSplit(ImageSplit):
    """A split given as a list of image files and their labels (ImageFolder-like layouts)."""

    def __init__(
        self,
        dataset: str,
        split: str,
        classes: Sequence[str],
        files: Sequence[Path | str],
        labels: np.ndarray,
        version: str = "1",
        class_subset: np.ndarray | None = None,
    ) -> None:
        super().__init__(dataset, split, classes, labels, version=version, class_subset=class_subset)
        self.files = [str(f) for f in files]

    def _load(self, raw_index: int) -> Image.Image:
        with Image.open(self.files[raw_index]) as img:
            return img.convert("RGB")


def is_image(name: str) -> bool:
    """An image file by extension (hidden files never count)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def subdirs(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder``."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def images_in(folder: Path) -> list[str]:
    """Sorted names of the image files directly inside ``folder``."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and is_image(e.name))


def scan_class_folders(top: Path, class_of: Callable[[str], int | None]) -> tuple[list[Path], np.ndarray]:
    """Images under ``top/<folder>/``, labelled by ``class_of(folder)`` (None: an unknown folder)."""
    files: list[Path] = []
    labels: list[int] = []
    for folder in subdirs(top):
        label = class_of(folder)
        if label is None:
            raise DatasetUnavailable(
                f"{top / folder}: folder name {folder!r} is not a class of this "
                f"data set's label space; remove it or fix the layout"
            )
        names = images_in(top / folder)
        files += [top / folder / n for n in names]
        labels += [label] * len(names)
    return files, np.asarray(labels, dtype=np.int64)
