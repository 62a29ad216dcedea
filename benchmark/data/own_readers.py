"""Readers for the ID sets that torchvision opens only after md5-checking their files.

torchvision's CIFAR10/100, STL10 and Flowers102 refuse any file whose md5 differs from the
published one, so a miniature copy in the very same layout (the rehearsal root) could never
load through them. These readers parse the published formats directly and give the same
images, labels, classes and order as torchvision does on the real files (the tests compare the
two on the same files), so the split versions stay "tv1":

- CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; CIFAR-100:
  ``cifar-100-python/{train,test,meta}``. Each batch is a pickled dict with ``data`` (uint8
  [N, 3072]: the R, G, B planes of a 32x32 image, row-major) and ``labels`` (CIFAR-10) or
  ``fine_labels`` (CIFAR-100); the meta file lists ``label_names`` / ``fine_label_names``.
  Read with the restricted unpickler of ``safe_pickle``.
- STL-10: ``stl10_binary/{train,test}_X.bin`` (uint8 [N, 3, 96, 96], each plane column-major),
  ``{train,test}_y.bin`` (uint8 labels 1..10), ``class_names.txt``. One image is read by seek.
- Flowers-102: ``flowers-102/{jpg/image_%05d.jpg,imagelabels.mat,setid.mat}``; train = the
  ``trnid`` then the ``valid`` ids, test = ``tstid``; class names are torchvision's list.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.base import ArraySplit, ImageSplit
from benchmark.data.files import FileListSplit
from benchmark.data.safe_pickle import load_data_pickle
from benchmark.data.spec import RealSpec, require
from benchmark.errors import DatasetUnavailable

#: Version of splits whose items equal torchvision's on the real files.
TV_VERSION = "tv1"


# -- CIFAR python batches -----------------------------------------------------------------------


@dataclass(frozen=True)
class CifarFormat:
    folder: str
    batches: dict[str, tuple[str, ...]]  # split -> batch files, in order
    meta: str
    label_key: str
    names_key: str


CIFAR_FORMATS = {
    "cifar10": CifarFormat(
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": CifarFormat(
        "cifar-100-python", {"train": ("train",), "test": ("test",)}, "meta", "fine_labels", "fine_label_names"
    ),
}


def _cifar_error(path: Path, problem: str, spec_name: str) -> DatasetUnavailable:
    return DatasetUnavailable(
        f"{spec_name}: {path} {problem}; re-download it with: "
        f"python -m benchmark.data.install --download {spec_name} --data-root <DIR>"
    )


def _read_cifar_pickle(path: Path, spec_name: str) -> dict:
    if not path.is_file():
        raise _cifar_error(path, "is missing", spec_name)
    try:
        entry = load_data_pickle(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise _cifar_error(path, f"cannot be unpickled ({exc})", spec_name) from exc
    if not isinstance(entry, dict):
        raise _cifar_error(path, f"holds a {type(entry).__name__}, not a dict", spec_name)
    return entry


def read_cifar_batch(path: Path, label_key: str, spec_name: str = "cifar") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of one python batch file."""
    entry = _read_cifar_pickle(path, spec_name)
    if "data" not in entry:
        raise _cifar_error(path, "holds no 'data' array", spec_name)
    key = "labels" if "labels" in entry else label_key
    data = np.asarray(entry["data"])
    labels = np.asarray(entry.get(key, []), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise _cifar_error(
            path,
            f"holds data {data.dtype} {data.shape} and {len(labels)} labels (expected uint8 [N, 3072] and N labels)",
            spec_name,
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar_images(files: Sequence[str], label_key: str) -> np.ndarray:
    """The images of several batches, concatenated (the re-reader of a pickled CIFAR split)."""
    return np.concatenate([read_cifar_batch(Path(f), label_key)[0] for f in files])


def _build_cifar(root: Path, spec: RealSpec) -> dict[str, ImageSplit]:
    require(spec, root)
    fmt = CIFAR_FORMATS[spec.name]
    base = root / fmt.folder
    meta_path = base / fmt.meta
    meta = _read_cifar_pickle(meta_path, spec.name)
    if fmt.names_key not in meta:
        raise _cifar_error(meta_path, f"has no {fmt.names_key!r} list", spec.name)
    classes = [str(c) for c in meta[fmt.names_key]]
    out: dict[str, ImageSplit] = {}
    for split, names in fmt.batches.items():
        files = [str(base / n) for n in names]
        parts = [read_cifar_batch(Path(f), fmt.label_key, spec.name) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        out[split] = ArraySplit(
            spec.name,
            split,
            classes,
            images,
            labels,
            version=TV_VERSION,
            reload=functools.partial(read_cifar_images, files, fmt.label_key),
        )
    return out


# -- STL-10 binaries ------------------------------------------------------------------------------

STL10_SIDE = 96
STL10_BYTES = 3 * STL10_SIDE * STL10_SIDE


class Stl10Split(ImageSplit):
    """STL-10 images read one at a time by seek from the ``*_X.bin`` file (pickles as a path)."""

    def __init__(
        self,
        dataset: str,
        split: str,
        classes: Sequence[str],
        images_file: Path,
        labels: np.ndarray,
        version: str = TV_VERSION,
    ) -> None:
        super().__init__(dataset, split, classes, labels, version=version)
        self.images_file = str(images_file)

    def _load(self, raw_index: int) -> Image.Image:
        with open(self.images_file, "rb") as f:
            f.seek(raw_index * STL10_BYTES)
            raw = f.read(STL10_BYTES)
        if len(raw) != STL10_BYTES:
            raise DatasetUnavailable(
                f"{self.images_file} is truncated at image {raw_index}; re-download "
                f"it with: python -m benchmark.data.install --download stl10 "
                f"--data-root <DIR>"
            )
        # Each plane is stored column-major: element [c, x, y].
        return Image.fromarray(np.frombuffer(raw, np.uint8).reshape(3, STL10_SIDE, STL10_SIDE).transpose(2, 1, 0))


def _build_stl10(root: Path, spec: RealSpec) -> dict[str, ImageSplit]:
    require(spec, root)
    base = root / "stl10_binary"
    names_file = base / "class_names.txt"
    classes = names_file.read_text().splitlines() if names_file.is_file() else None
    out: dict[str, ImageSplit] = {}
    for split in ("train", "test"):
        x, y = base / f"{split}_X.bin", base / f"{split}_y.bin"
        for path in (x, y):
            if not path.is_file():
                raise DatasetUnavailable(
                    f"stl10: {path} not found. Expected layout: {spec.layout_text(root)}. "
                    f"To get it: {spec.how_to_get_text(root)}"
                )
        labels = np.fromfile(y, dtype=np.uint8).astype(np.int64) - 1
        if x.stat().st_size != len(labels) * STL10_BYTES:
            raise DatasetUnavailable(
                f"stl10: {x} holds {x.stat().st_size} bytes, expected {len(labels)} images "
                f"x {STL10_BYTES}; re-download it ({spec.how_to_get_text(root)})"
            )
        names = classes or [f"class-{i}" for i in range(spec.num_classes)]
        out[split] = Stl10Split(spec.name, split, names, x, labels)
    return out


# -- Flowers-102 ----------------------------------------------------------------------------------


def _build_flowers102(root: Path, spec: RealSpec) -> dict[str, ImageSplit]:
    from scipy.io import loadmat
    from torchvision.datasets import Flowers102

    require(spec, root)
    base = root / "flowers-102"
    mats = {}
    for name in ("setid.mat", "imagelabels.mat"):
        if not (base / name).is_file():
            raise DatasetUnavailable(
                f"flowers102: {base / name} not found. Expected layout: "
                f"{spec.layout_text(root)}. To get it: {spec.how_to_get_text(root)}"
            )
        mats[name] = loadmat(base / name, squeeze_me=True)
    label_of = dict(enumerate((np.atleast_1d(mats["imagelabels.mat"]["labels"]) - 1).tolist(), 1))
    out: dict[str, ImageSplit] = {}
    for split, keys in (("train", ("trnid", "valid")), ("test", ("tstid",))):
        ids = [int(i) for k in keys for i in np.atleast_1d(mats["setid.mat"][k]).tolist()]
        files = [base / "jpg" / f"image_{i:05d}.jpg" for i in ids]
        labels = np.asarray([label_of[i] for i in ids], dtype=np.int64)
        out[split] = FileListSplit(spec.name, split, list(Flowers102.classes), files, labels, version=TV_VERSION)
    return out


BUILDERS = {"cifar10": _build_cifar, "cifar100": _build_cifar, "stl10": _build_stl10, "flowers102": _build_flowers102}
