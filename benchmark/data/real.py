"""Real data sets read from a user-given data root: the paper's 14 ID tasks, ImageNet and its
variants, DomainNet. Nothing here downloads unless ``download_dataset`` is called explicitly.

Layouts (``<root>`` is the data root):

- The 14 ID sets: torchvision's own folder for each (e.g. ``<root>/cifar-10-batches-py``),
  opened with ``download=False``. Sets with a validation split train on train+val (DTD,
  Flowers102; FGVC-Aircraft and Oxford-Pets through torchvision's "trainval"); sets without a
  split (Caltech101, EuroSAT) get the seeded stratified 80/20 holdout of the embedded sets.
- ImageNet: ``<root>/imagenet/{train,val}/<wnid>/*.JPEG``; class index = position of the wnid in
  the sorted wnids of ``imagenet/train``.
- ImageNet-V2: ``<root>/imagenet-v2/<class index 0..999>/*.jpeg``; ImageNet-Sketch, -A, -R:
  ``<root>/imagenet-{sketch,a,r}/<wnid>/*``, labels mapped into the ImageNet index space by wnid;
  a set with fewer wnids than ImageNet (A and R: 200) sets ``class_subset`` to the indices present.
- DomainNet: ``<root>/domainnet/<domain>/<class>/*.jpg`` plus the official split files
  ``<root>/domainnet/<domain>_{train,test}.txt`` (lines ``<domain>/<class>/<file>.jpg <label>``).

Sizes listed per entry are the published ones (nominal); the loaded splits are what the files hold.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmark.data.base import ImageSplit
from benchmark.data.sampling import stratified_holdout
from benchmark.errors import ConfigError, DatasetUnavailable

#: Seed and test share of the holdout for the sets without an official split.
SPLIT_SEED = 0
TEST_FRACTION = 0.2
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")
DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


def download_command(name: str, root: str | Path = "<DIR>") -> str:
    return f"python -m benchmark.data.install --download {name} --data-root {root}"


# -- split classes ------------------------------------------------------------------------------

class TorchvisionSplit(ImageSplit):
    """One of our splits over one or more torchvision dataset objects (e.g. DTD train + val).

    Labels come from the attribute torchvision fills while indexing files, so building the split
    decodes no image; ``_load`` asks the torchvision object for item i (it has no transform).
    """

    def __init__(self, dataset: str, split: str, classes: Sequence[str], parts: Sequence[Any],
                 labels: np.ndarray, version: str = "1", indices: np.ndarray | None = None) -> None:
        super().__init__(dataset, split, classes, labels, version=version, indices=indices)
        self.parts = list(parts)
        self._offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def _load(self, raw_index: int) -> Image.Image:
        part = int(np.searchsorted(self._offsets, raw_index, side="right")) - 1
        image = self.parts[part][raw_index - int(self._offsets[part])][0]
        return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


class FileListSplit(ImageSplit):
    """A split given as a list of image files and their labels (ImageFolder-like layouts)."""

    def __init__(self, dataset: str, split: str, classes: Sequence[str], files: Sequence[Path | str],
                 labels: np.ndarray, version: str = "1", class_subset: np.ndarray | None = None) -> None:
        super().__init__(dataset, split, classes, labels, version=version, class_subset=class_subset)
        self.files = [str(f) for f in files]

    def _load(self, raw_index: int) -> Image.Image:
        with Image.open(self.files[raw_index]) as img:
            return img.convert("RGB")


# -- torchvision ID sets -----------------------------------------------------------------------

def _tv_labels(ds: Any) -> np.ndarray:
    """Labels of a torchvision dataset without decoding images."""
    for attr in ("targets", "_labels", "labels", "y"):
        if hasattr(ds, attr) and getattr(ds, attr) is not None:
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    if hasattr(ds, "_samples"):
        return np.asarray([t for _, t in ds._samples], dtype=np.int64)
    if type(ds).__name__ == "PCAM":
        targets = ds._FILES[ds._split]["targets"][0]
        with ds.h5py.File(ds._base_folder / targets) as f:
            return np.asarray(f["y"][:, 0, 0, 0], dtype=np.int64)
    raise TypeError(f"cannot read labels of {type(ds).__name__} without decoding images")


def _tv_classes(ds: Any, fixed: Sequence[str] | None, num_classes: int) -> list[str]:
    if fixed is not None:
        return list(fixed)
    for attr in ("classes", "categories"):
        if getattr(ds, attr, None):
            return [str(c) for c in getattr(ds, attr)]
    return [f"class-{i}" for i in range(num_classes)]


@dataclass(frozen=True)
class RealSpec:
    """A registry entry for a data set read from the data root."""

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
    tv_class: str = ""
    tv_args: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # our split -> tv kwargs per part
    holdout: bool = False  # one torchvision set split here into train/test
    fixed_classes: tuple[str, ...] | None = None
    needs: str = ""  # an optional Python module it needs (pcam: h5py)

    def layout_text(self, root: Path | str) -> str:
        return self.layout.replace("<root>", str(root))


def _tv(name: str, num_classes: int, domain: str, tv_class: str, marker: str, layout: str,
        sizes: dict[str, int], tv_args: dict[str, list[dict[str, Any]]] | None = None,
        holdout: bool = False, fixed_classes: tuple[str, ...] | None = None, needs: str = "",
        note: str = "") -> RealSpec:
    return RealSpec(name=name, num_classes=num_classes, domain=domain,
                    source=f"torchvision.datasets.{tv_class}", marker=marker, layout=layout, sizes=sizes,
                    how_to_get=download_command(name) + (f" ({note})" if note else ""),
                    tv_class=tv_class, tv_args=tv_args or {}, holdout=holdout,
                    fixed_classes=fixed_classes, needs=needs)


def _splits(train: list[dict[str, Any]], test: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {"train": train, "test": test}


TV_SPECS: dict[str, RealSpec] = {s.name: s for s in (
    _tv("cifar10", 10, "natural", "CIFAR10", "cifar-10-batches-py",
        "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}", {"train": 50000, "test": 10000},
        _splits([{"train": True}], [{"train": False}])),
    _tv("cifar100", 100, "natural", "CIFAR100", "cifar-100-python",
        "<root>/cifar-100-python/{train,test,meta}", {"train": 50000, "test": 10000},
        _splits([{"train": True}], [{"train": False}])),
    _tv("stl10", 10, "natural", "STL10", "stl10_binary",
        "<root>/stl10_binary/{train_X.bin,train_y.bin,test_X.bin,test_y.bin,class_names.txt}",
        {"train": 5000, "test": 8000}, _splits([{"split": "train"}], [{"split": "test"}])),
    _tv("caltech101", 101, "natural", "Caltech101", "caltech101/101_ObjectCategories",
        "<root>/caltech101/101_ObjectCategories/<class>/image_*.jpg (BACKGROUND_Google is dropped)",
        {"train": 6941, "test": 1736}, {"all": [{"target_type": "category"}]}, holdout=True,
        note="download needs gdown"),
    _tv("dtd", 47, "texture", "DTD", "dtd/dtd",
        "<root>/dtd/dtd/{images/<class>/*.jpg,labels/{train1,val1,test1}.txt}", {"train": 3760, "test": 1880},
        _splits([{"split": "train"}, {"split": "val"}], [{"split": "test"}])),
    _tv("eurosat", 10, "satellite", "EuroSAT", "eurosat/2750", "<root>/eurosat/2750/<class>/*.jpg",
        {"train": 21600, "test": 5400}, {"all": [{}]}, holdout=True),
    _tv("fgvc-aircraft", 100, "aircraft", "FGVCAircraft", "fgvc-aircraft-2013b",
        "<root>/fgvc-aircraft-2013b/data/{images/*.jpg,variants.txt,images_variant_{trainval,test}.txt}",
        {"train": 6667, "test": 3333}, _splits([{"split": "trainval"}], [{"split": "test"}])),
    _tv("flowers102", 102, "flowers", "Flowers102", "flowers-102",
        "<root>/flowers-102/{jpg/image_*.jpg,imagelabels.mat,setid.mat}", {"train": 2040, "test": 6149},
        _splits([{"split": "train"}, {"split": "val"}], [{"split": "test"}])),
    _tv("food101", 101, "food", "Food101", "food-101",
        "<root>/food-101/{images/<class>/*.jpg,meta/{train,test}.json,meta/classes.txt}",
        {"train": 75750, "test": 25250}, _splits([{"split": "train"}], [{"split": "test"}])),
    _tv("oxford-pets", 37, "pets", "OxfordIIITPet", "oxford-iiit-pet",
        "<root>/oxford-iiit-pet/{images/*.jpg,annotations/{trainval,test}.txt}", {"train": 3680, "test": 3669},
        _splits([{"split": "trainval"}], [{"split": "test"}])),
    _tv("stanford-cars", 196, "cars", "StanfordCars", "stanford_cars",
        "<root>/stanford_cars/{devkit/{cars_meta,cars_train_annos}.mat,cars_train/*.jpg,cars_test/*.jpg,"
        "cars_test_annos_withlabels.mat}", {"train": 8144, "test": 8041},
        _splits([{"split": "train"}], [{"split": "test"}]),
        note="torchvision's download URL is dead: fetch the files by hand into that layout"),
    _tv("pcam", 2, "histopathology", "PCAM", "pcam",
        "<root>/pcam/camelyonpatch_level_2_split_{train,test}_{x,y}.h5", {"train": 262144, "test": 32768},
        _splits([{"split": "train"}], [{"split": "test"}]),
        fixed_classes=("no metastasis", "metastasis"), needs="h5py",
        note="needs: pip install h5py gdown"),
    _tv("rendered-sst2", 2, "rendered-text", "RenderedSST2", "rendered-sst2",
        "<root>/rendered-sst2/{train,test}/{negative,positive}/*.png", {"train": 6920, "test": 1821},
        _splits([{"split": "train"}], [{"split": "test"}])),
    _tv("country211", 211, "geolocation", "Country211", "country211",
        "<root>/country211/{train,test}/<country code>/*.jpg", {"train": 31650, "test": 21100},
        _splits([{"split": "train"}], [{"split": "test"}])),
)}


def _require(spec: RealSpec, root: Path) -> None:
    """Raise DatasetUnavailable naming the set, the path, the layout and the fix if absent."""
    path = root / spec.marker
    if not path.exists():
        raise DatasetUnavailable(
            f"{spec.name}: not found at {path}. Expected layout: {spec.layout_text(root)}. "
            f"To get it: {spec.how_to_get.replace('<DIR>', str(root))}"
        )
    if spec.needs:
        import importlib.util

        if importlib.util.find_spec(spec.needs) is None:
            raise DatasetUnavailable(f"{spec.name}: reading it needs the Python package {spec.needs}; "
                                     f"install it with: pip install {spec.needs}")


def _open_tv(spec: RealSpec, root: Path, kwargs: dict[str, Any], download: bool = False) -> Any:
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.tv_class)
    try:
        return cls(str(root), download=download, **kwargs)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise DatasetUnavailable(
            f"{spec.name}: torchvision could not open it under {root} ({exc}). Expected layout: "
            f"{spec.layout_text(root)}. To get it: {spec.how_to_get.replace('<DIR>', str(root))}"
        ) from exc


def load_torchvision_splits(spec: RealSpec, root: Path) -> dict[str, ImageSplit]:
    """All splits of a torchvision-backed set (train, test) as ImageSplits."""
    _require(spec, root)
    version = f"tv-s{SPLIT_SEED}-t{TEST_FRACTION}" if spec.holdout else "tv1"
    if spec.holdout:
        ds = _open_tv(spec, root, spec.tv_args["all"][0])
        labels = _tv_labels(ds)
        classes = _tv_classes(ds, spec.fixed_classes, spec.num_classes)
        whole = TorchvisionSplit(spec.name, "all", classes, [ds], labels, version=version)
        train, test = stratified_holdout(labels, TEST_FRACTION, SPLIT_SEED)
        return {"train": whole.subset(train, split="train"), "test": whole.subset(test, split="test")}
    out: dict[str, ImageSplit] = {}
    for split, part_args in spec.tv_args.items():
        parts = [_open_tv(spec, root, kw) for kw in part_args]
        labels = np.concatenate([_tv_labels(p) for p in parts])
        classes = _tv_classes(parts[0], spec.fixed_classes, spec.num_classes)
        out[split] = TorchvisionSplit(spec.name, split, classes, parts, labels, version=version)
    return out


def download_dataset(name: str, data_root: str | Path) -> None:
    """Download a torchvision-backed set into ``data_root`` (the only code path that downloads)."""
    root = Path(data_root).expanduser()
    if name not in TV_SPECS:
        spec = FOLDER_SPECS.get(name)
        hint = spec.how_to_get if spec else "see `nmlbench datasets`"
        raise ConfigError(f"{name} cannot be downloaded automatically: {hint}")
    spec = TV_SPECS[name]
    root.mkdir(parents=True, exist_ok=True)
    for part_args in spec.tv_args.values():
        for kw in part_args:
            _open_tv(spec, root, kw, download=True)


# -- folder layouts: ImageNet and variants, DomainNet ------------------------------------------

def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _subdirs(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _images_in(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and _is_image(e.name))


def _scan_class_folders(top: Path, class_of: Callable[[str], int | None]) -> tuple[list[Path], np.ndarray]:
    """Images under ``top/<folder>/``, labelled by ``class_of(folder)`` (None: an unknown folder)."""
    files: list[Path] = []
    labels: list[int] = []
    for folder in _subdirs(top):
        label = class_of(folder)
        if label is None:
            raise DatasetUnavailable(f"{top / folder}: folder name {folder!r} is not a class of this "
                                     f"data set's label space; remove it or fix the layout")
        names = _images_in(top / folder)
        files += [top / folder / n for n in names]
        labels += [label] * len(names)
    return files, np.asarray(labels, dtype=np.int64)


IMAGENET_VARIANTS = ("imagenet-sketch", "imagenet-a", "imagenet-r")


def imagenet_wnids(root: Path) -> tuple[list[str], str]:
    """The ImageNet class list (sorted wnids) and where it came from.

    Derived from the folders of ``imagenet/train``; without it, the sorted union of the wnid
    folders of imagenet/val, -sketch, -A and -R, which matches the real order only if together
    they hold all 1,000 classes (a warning says so).
    """
    train = root / "imagenet" / "train"
    if train.is_dir():
        return _subdirs(train), f"folders of {train}"
    union: set[str] = set()
    looked = [root / "imagenet" / "val"] + [root / v for v in IMAGENET_VARIANTS]
    for folder in looked:
        if folder.is_dir():
            union.update(_subdirs(folder))
    if not union:
        raise DatasetUnavailable(
            f"imagenet: no wnid folders found: {train} is absent and so are "
            + ", ".join(str(p) for p in looked)
            + f". Expected layout: {root}/imagenet/{{train,val}}/<wnid>/*.JPEG"
        )
    wnids = sorted(union)
    warnings.warn(f"{train} is absent: ImageNet class order taken from the sorted union of the "
                  f"{len(wnids)} wnid folders in " + ", ".join(str(p) for p in looked if p.is_dir())
                  + ("" if len(wnids) == 1000 else " (not 1000 classes: indices will not match ImageNet's)"),
                  stacklevel=2)
    return wnids, "sorted union of wnid folders present"


@dataclass(frozen=True)
class FolderSpec(RealSpec):
    """A RealSpec whose splits are built by ``builder(root, spec) -> {split: ImageSplit}``."""

    builder: Callable[[Path, "FolderSpec"], dict[str, ImageSplit]] | None = None
    classes_from: Callable[[Path], list[str]] | None = None


def _build_imagenet(root: Path, spec: FolderSpec) -> dict[str, ImageSplit]:
    _require(spec, root)
    wnids, _ = imagenet_wnids(root)
    index = {w: i for i, w in enumerate(wnids)}
    out: dict[str, ImageSplit] = {}
    for split, folder in (("train", "train"), ("test", "val")):
        top = root / "imagenet" / folder
        if not top.is_dir():
            continue
        files, labels = _scan_class_folders(top, index.get)
        out[split] = FileListSplit(spec.name, split, wnids, files, labels, version="folder1")
    return out


def _build_imagenet_v2(root: Path, spec: FolderSpec) -> dict[str, ImageSplit]:
    _require(spec, root)
    try:
        classes, _ = imagenet_wnids(root)
    except DatasetUnavailable:
        warnings.warn("imagenet-v2: no ImageNet wnid folders under the data root, so class names are "
                      "the indices 0..999", stacklevel=2)
        classes = [str(i) for i in range(1000)]

    def class_of(folder: str) -> int | None:
        return int(folder) if folder.isdigit() and int(folder) < len(classes) else None

    files, labels = _scan_class_folders(root / spec.marker, class_of)
    return {"test": FileListSplit(spec.name, "test", classes, files, labels, version="folder1")}


def _build_imagenet_variant(root: Path, spec: FolderSpec) -> dict[str, ImageSplit]:
    _require(spec, root)
    wnids, _ = imagenet_wnids(root)
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = _scan_class_folders(root / spec.marker, index.get)
    present = np.asarray(sorted(index[w] for w in _subdirs(root / spec.marker)), dtype=np.int64)
    subset = present if len(present) < len(wnids) else None
    return {"test": FileListSplit(spec.name, "test", wnids, files, labels, version="folder1",
                                  class_subset=subset)}


def _read_domainnet_list(path: Path) -> list[tuple[str, int]]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DatasetUnavailable(f"{path}:{n}: expected '<domain>/<class>/<file>.jpg <label>', "
                                         f"got {line.strip()!r}")
            rows.append((parts[0], int(parts[1])))
    return rows


def domainnet_classes(root: Path, domain: str) -> list[str]:
    """Class names by label index, read from the domain's split files (folder of each label)."""
    names: dict[int, str] = {}
    for split in ("train", "test"):
        path = root / "domainnet" / f"{domain}_{split}.txt"
        if not path.is_file():
            continue
        for rel, label in _read_domainnet_list(path):
            parts = rel.split("/")
            name = parts[1] if len(parts) >= 3 else parts[0]
            if names.setdefault(label, name) != name:
                raise DatasetUnavailable(f"{path}: label {label} names two classes, "
                                         f"{names[label]!r} and {name!r}")
    size = max(names, default=-1) + 1
    return [names.get(i, f"label-{i}") for i in range(size)]


def _build_domainnet(root: Path, spec: FolderSpec) -> dict[str, ImageSplit]:
    _require(spec, root)
    domain = spec.domain
    base = root / "domainnet"
    classes = domainnet_classes(root, domain)
    out: dict[str, ImageSplit] = {}
    for split in ("train", "test"):
        path = base / f"{domain}_{split}.txt"
        if not path.is_file():
            raise DatasetUnavailable(f"{spec.name}: split file {path} not found. Expected layout: "
                                     f"{spec.layout_text(root)}. {spec.how_to_get}")
        rows = _read_domainnet_list(path)
        out[split] = FileListSplit(spec.name, split, classes, [base / r for r, _ in rows],
                                   np.asarray([lab for _, lab in rows], dtype=np.int64), version="official1")
    return out


_IMAGENET_HOW = ("download ILSVRC2012 from image-net.org (registration) and arrange it as the layout "
                 "says; the val images need sorting into wnid folders")


def _imagenet_variant_spec(name: str, num_classes: int, size: int, how: str) -> FolderSpec:
    return FolderSpec(name=name, num_classes=1000, domain=name, source="folder", marker=name,
                      layout=f"<root>/{name}/<wnid>/*.(jpg|jpeg|png) ({num_classes} wnids; needs "
                      f"<root>/imagenet/train for the ImageNet class order)",
                      sizes={"test": size}, splits=("test",), how_to_get=how,
                      builder=_build_imagenet_variant)


FOLDER_SPECS: dict[str, FolderSpec] = {s.name: s for s in (
    FolderSpec(name="imagenet", num_classes=1000, domain="imagenet", source="folder", marker="imagenet",
               layout="<root>/imagenet/{train,val}/<wnid>/*.JPEG (class index = sorted wnid order)",
               sizes={"train": 1281167, "test": 50000}, how_to_get=_IMAGENET_HOW, builder=_build_imagenet),
    FolderSpec(name="imagenet-v2", num_classes=1000, domain="imagenet-v2", source="folder",
               marker="imagenet-v2", layout="<root>/imagenet-v2/<class index 0..999>/*.jpeg "
               "(the matched-frequency release, folder renamed)", sizes={"test": 10000}, splits=("test",),
               how_to_get="download imagenetv2-matched-frequency.tar.gz (ImageNetV2 release on Hugging Face) "
               "and extract it as <root>/imagenet-v2", builder=_build_imagenet_v2),
    _imagenet_variant_spec("imagenet-sketch", 1000, 50889,
                           "download ImageNet-Sketch (its 'sketch' folder) and place it as <root>/imagenet-sketch"),
    _imagenet_variant_spec("imagenet-a", 200, 7500,
                           "download imagenet-a.tar from the natural-adv-examples release and extract it "
                           "as <root>/imagenet-a"),
    _imagenet_variant_spec("imagenet-r", 200, 30000,
                           "download imagenet-r.tar from the imagenet-r release and extract it as <root>/imagenet-r"),
) + tuple(
    FolderSpec(name=f"domainnet-{d}", num_classes=345, domain=d, source="folder", marker=f"domainnet/{d}",
               layout=f"<root>/domainnet/{d}/<class>/*.jpg with <root>/domainnet/{d}_train.txt and "
               f"{d}_test.txt (lines '{d}/<class>/<file>.jpg <label>')",
               sizes=sizes, how_to_get=f"download {d}.zip, {d}_train.txt and {d}_test.txt from the "
               "DomainNet site (ai.bu.edu/M3SDA) and unzip into <root>/domainnet",
               builder=_build_domainnet)
    for d, sizes in (("clipart", {"train": 33525, "test": 14604}), ("infograph", {"train": 36023, "test": 15582}),
                     ("painting", {"train": 50416, "test": 21850}), ("quickdraw", {"train": 120750, "test": 51750}),
                     ("real", {"train": 120906, "test": 52041}), ("sketch", {"train": 48212, "test": 20916}))
)}

REAL_SPECS: dict[str, RealSpec] = {**TV_SPECS, **FOLDER_SPECS}


def load_real_splits(spec: RealSpec, root: Path) -> dict[str, ImageSplit]:
    """Every split of ``spec`` under ``root`` (raises DatasetUnavailable when absent)."""
    if isinstance(spec, FolderSpec) and spec.builder is not None:
        return spec.builder(root, spec)
    return load_torchvision_splits(spec, root)


def is_present(spec: RealSpec, root: Path | None) -> bool:
    """Cheap check (no scan): does the set's top folder exist under ``root``?"""
    return root is not None and (root / spec.marker).exists()
