"""The one shape every data set takes: splits of (PIL image, label) with a stable fingerprint.

Backbones see only PIL images through their own eval transform, so a data set never needs to
know which backbone reads it. The fingerprint is part of every feature-cache key: two splits
with equal fingerprints must yield identical images in identical order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmark.hashing import array_digest


@dataclass(frozen=True)
class DatasetInfo:
    """What a registry entry is, independent of whether its files are present."""

    name: str
    classes: tuple[str, ...]
    domain: str
    source: str
    embedded: bool
    description: str = ""
    version: str = "1"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ImageSplit(torch.utils.data.Dataset):
    """A split of a data set. Subclasses implement ``_load(i) -> PIL.Image`` and ``__len__``.

    ``labels`` is the whole label vector up front, so noise injection, stratified splitting and
    few-shot subsampling never have to decode images. ``class_subset`` (optional) lists the label
    indices a test set can contain, for sets such as ImageNet-A whose 200 classes live inside a
    1000-class label space; heads then score only those logits.
    """

    def __init__(
        self,
        dataset: str,
        split: str,
        classes: Sequence[str],
        labels: np.ndarray,
        version: str = "1",
        indices: np.ndarray | None = None,
        class_subset: np.ndarray | None = None,
    ) -> None:
        self.dataset = dataset
        self.split = split
        self.classes = list(classes)
        self.version = version
        self._all_labels = np.asarray(labels, dtype=np.int64)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.class_subset = None if class_subset is None else np.asarray(class_subset, dtype=np.int64)

    # -- subclass hooks ---------------------------------------------------------------------
    def _load(self, raw_index: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def _raw_len(self) -> int:
        return len(self._all_labels)

    # -- public API -------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        return self._all_labels if self.indices is None else self._all_labels[self.indices]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> str:
        subset = "all" if self.indices is None else array_digest(self.indices)
        return f"{self.dataset}/{self.split}/v{self.version}/{subset}"

    def __len__(self) -> int:
        return self._raw_len() if self.indices is None else len(self.indices)

    def _raw_index(self, i: int) -> int:
        return int(i) if self.indices is None else int(self.indices[i])

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        raw = self._raw_index(i)
        img = self._load(raw)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return img, int(self._all_labels[raw])

    def subset(self, indices: np.ndarray | Sequence[int], split: str | None = None) -> ImageSplit:
        """A view on some of this split's items (indices relative to this split)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"subset indices out of range for {self.fingerprint} (len {len(self)})")
        raw = idx if self.indices is None else self.indices[idx]
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.indices = raw
        if split is not None:
            clone.split = split
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fingerprint}, n={len(self)}, classes={self.num_classes})"


class ArraySplit(ImageSplit):
    """A split held in memory as uint8 arrays (N, H, W) grey or (N, H, W, 3) colour.

    ``reload`` (optional, picklable, e.g. a ``functools.partial`` of a module-level reader)
    re-reads the images from their files: a split that has one pickles without its pixels, so
    sending it to a DataLoader worker or a Ray task costs a file path, and the receiving
    process reads the files once on first use.
    """

    def __init__(
        self,
        dataset: str,
        split: str,
        classes: Sequence[str],
        images: np.ndarray,
        labels: np.ndarray,
        version: str = "1",
        reload: Callable[[], np.ndarray] | None = None,
        **kw,
    ) -> None:
        super().__init__(dataset, split, classes, labels, version=version, **kw)
        self.reload = reload
        self._images = self._checked(images)

    def _checked(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise TypeError(f"{self.dataset}/{self.split}: images must be uint8, got {images.dtype}")
        if len(images) != len(self._all_labels):
            raise ValueError(f"{self.dataset}/{self.split}: {len(images)} images but {len(self._all_labels)} labels")
        return images

    @property
    def images(self) -> np.ndarray:
        """All images of the underlying split (not only this view's), read again if dropped."""
        if self._images is None:
            self._images = self._checked(self.reload())
        return self._images

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.reload is not None:
            state["_images"] = None
        return state

    def _load(self, raw_index: int) -> Image.Image:
        return Image.fromarray(self.images[raw_index])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of this view, without going through PIL."""
        if self.indices is None:
            return self.images, self._all_labels
        return self.images[self.indices], self._all_labels[self.indices]


@dataclass
class DatasetStatus:
    """One row of ``nmlbench datasets``."""

    name: str
    num_classes: int
    domain: str
    sizes: dict[str, int] = field(default_factory=dict)
    available: bool = False
    embedded: bool = False
    how_to_get: str = ""


def data_home() -> Path:
    """Where derived data lives ($NMLBENCH_DATA_HOME, default ~/.cache/nmlbench); read at call
    time so tests and users can redirect it."""
    return Path(os.environ.get("NMLBENCH_DATA_HOME") or Path.home() / ".cache" / "nmlbench").expanduser()
