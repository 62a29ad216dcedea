"""The paper's 14 ID sets, in the folders torchvision downloads them into.

Layouts: torchvision's own folder for each (e.g. ``<root>/cifar-10-batches-py``). Most are
opened through torchvision with ``download=False``; CIFAR-10/100, STL-10 and Flowers-102 through
``own_readers`` (torchvision md5-checks those files). Sets with a validation split train on
train+val (DTD, Flowers102; FGVC-Aircraft and Oxford-Pets through torchvision's "trainval");
sets without a split (Caltech101, EuroSAT) get a seeded stratified 80/20 holdout.
``download_dataset`` is the only code path in the project that downloads data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmark.data.base import ImageSplit
from benchmark.data.own_readers import BUILDERS
from benchmark.data.sampling import stratified_holdout
from benchmark.data.spec import RealSpec, download_command, require
from benchmark.errors import ConfigError, DatasetUnavailable

#: Seed and test share of the holdout for the sets without an official split.
SPLIT_SEED = 0
TEST_FRACTION = 0.2

#: How to re-open one torchvision dataset object: (torchvision class name, root, kwargs).
PartArgs = tuple[str, str, dict[str, Any]]


class TorchvisionSplit(ImageSplit):
    """One of our splits over one or more torchvision dataset objects (e.g. DTD train + val).

    Labels come from the attribute torchvision fills while indexing files, so building the split
    decodes no image; ``_load`` asks the torchvision object for item i (it has no transform).
    With ``part_args`` the split pickles as those constructor arguments (some torchvision objects,
    PCAM's, cannot be pickled at all) and re-opens its parts on first use in the new process.
    """

    def __init__(
        self,
        dataset: str,
        split: str,
        classes: Sequence[str],
        parts: Sequence[Any],
        labels: np.ndarray,
        version: str = "1",
        indices: np.ndarray | None = None,
        part_args: Sequence[PartArgs] | None = None,
    ) -> None:
        super().__init__(dataset, split, classes, labels, version=version, indices=indices)
        self.parts: list[Any] | None = list(parts)
        self.part_args = None if part_args is None else list(part_args)
        self._offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.part_args is not None:
            state["parts"] = None
        return state

    def _opened_parts(self) -> list[Any]:
        if self.parts is None:
            self.parts = [open_torchvision(cls, Path(root), kw, self.dataset) for cls, root, kw in self.part_args or []]
        return self.parts

    def _load(self, raw_index: int) -> Image.Image:
        part = int(np.searchsorted(self._offsets, raw_index, side="right")) - 1
        image = self._opened_parts()[part][raw_index - int(self._offsets[part])][0]
        return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


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


def _tv(
    name: str,
    num_classes: int,
    domain: str,
    tv_class: str,
    marker: str,
    layout: str,
    sizes: dict[str, int],
    tv_args: dict[str, list[dict[str, Any]]] | None = None,
    holdout: bool = False,
    fixed_classes: tuple[str, ...] | None = None,
    needs: str = "",
    note: str = "",
) -> RealSpec:
    return RealSpec(
        name=name,
        num_classes=num_classes,
        domain=domain,
        source=f"torchvision.datasets.{tv_class}",
        marker=marker,
        layout=layout,
        sizes=sizes,
        how_to_get=download_command(name) + (f" ({note})" if note else ""),
        tv_class=tv_class,
        tv_args=tv_args or {},
        holdout=holdout,
        fixed_classes=fixed_classes,
        needs=needs,
        builder=BUILDERS.get(name),
    )


def _splits(train: list[dict[str, Any]], test: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {"train": train, "test": test}


TV_SPECS: dict[str, RealSpec] = {
    s.name: s
    for s in (
        _tv(
            "cifar10",
            10,
            "natural",
            "CIFAR10",
            "cifar-10-batches-py",
            "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
            {"train": 50000, "test": 10000},
            _splits([{"train": True}], [{"train": False}]),
        ),
        _tv(
            "cifar100",
            100,
            "natural",
            "CIFAR100",
            "cifar-100-python",
            "<root>/cifar-100-python/{train,test,meta}",
            {"train": 50000, "test": 10000},
            _splits([{"train": True}], [{"train": False}]),
        ),
        _tv(
            "stl10",
            10,
            "natural",
            "STL10",
            "stl10_binary",
            "<root>/stl10_binary/{train_X.bin,train_y.bin,test_X.bin,test_y.bin,class_names.txt}",
            {"train": 5000, "test": 8000},
            _splits([{"split": "train"}], [{"split": "test"}]),
        ),
        _tv(
            "caltech101",
            101,
            "natural",
            "Caltech101",
            "caltech101/101_ObjectCategories",
            "<root>/caltech101/101_ObjectCategories/<class>/image_*.jpg (BACKGROUND_Google is dropped)",
            {"train": 6941, "test": 1736},
            {"all": [{"target_type": "category"}]},
            holdout=True,
            note="download needs gdown",
        ),
        _tv(
            "dtd",
            47,
            "texture",
            "DTD",
            "dtd/dtd",
            "<root>/dtd/dtd/{images/<class>/*.jpg,labels/{train1,val1,test1}.txt}",
            {"train": 3760, "test": 1880},
            _splits([{"split": "train"}, {"split": "val"}], [{"split": "test"}]),
        ),
        _tv(
            "eurosat",
            10,
            "satellite",
            "EuroSAT",
            "eurosat/2750",
            "<root>/eurosat/2750/<class>/*.jpg",
            {"train": 21600, "test": 5400},
            {"all": [{}]},
            holdout=True,
        ),
        _tv(
            "fgvc-aircraft",
            100,
            "aircraft",
            "FGVCAircraft",
            "fgvc-aircraft-2013b",
            "<root>/fgvc-aircraft-2013b/data/{images/*.jpg,variants.txt,images_variant_{trainval,test}.txt}",
            {"train": 6667, "test": 3333},
            _splits([{"split": "trainval"}], [{"split": "test"}]),
        ),
        _tv(
            "flowers102",
            102,
            "flowers",
            "Flowers102",
            "flowers-102",
            "<root>/flowers-102/{jpg/image_*.jpg,imagelabels.mat,setid.mat}",
            {"train": 2040, "test": 6149},
            _splits([{"split": "train"}, {"split": "val"}], [{"split": "test"}]),
        ),
        _tv(
            "food101",
            101,
            "food",
            "Food101",
            "food-101",
            "<root>/food-101/{images/<class>/*.jpg,meta/{train,test}.json,meta/classes.txt}",
            {"train": 75750, "test": 25250},
            _splits([{"split": "train"}], [{"split": "test"}]),
        ),
        _tv(
            "oxford-pets",
            37,
            "pets",
            "OxfordIIITPet",
            "oxford-iiit-pet",
            "<root>/oxford-iiit-pet/{images/*.jpg,annotations/{trainval,test}.txt}",
            {"train": 3680, "test": 3669},
            _splits([{"split": "trainval"}], [{"split": "test"}]),
        ),
        _tv(
            "stanford-cars",
            196,
            "cars",
            "StanfordCars",
            "stanford_cars",
            "<root>/stanford_cars/{devkit/{cars_meta,cars_train_annos}.mat,cars_train/*.jpg,cars_test/*.jpg,"
            "cars_test_annos_withlabels.mat}",
            {"train": 8144, "test": 8041},
            _splits([{"split": "train"}], [{"split": "test"}]),
            note="torchvision's download URL is dead: fetch the files by hand into that layout",
        ),
        _tv(
            "pcam",
            2,
            "histopathology",
            "PCAM",
            "pcam",
            "<root>/pcam/camelyonpatch_level_2_split_{train,test}_{x,y}.h5",
            {"train": 262144, "test": 32768},
            _splits([{"split": "train"}], [{"split": "test"}]),
            fixed_classes=("no metastasis", "metastasis"),
            needs="h5py",
            note="needs: pip install h5py gdown",
        ),
        _tv(
            "rendered-sst2",
            2,
            "rendered-text",
            "RenderedSST2",
            "rendered-sst2",
            "<root>/rendered-sst2/{train,test}/{negative,positive}/*.png",
            {"train": 6920, "test": 1821},
            _splits([{"split": "train"}], [{"split": "test"}]),
        ),
        _tv(
            "country211",
            211,
            "geolocation",
            "Country211",
            "country211",
            "<root>/country211/{train,test}/<country code>/*.jpg",
            {"train": 31650, "test": 21100},
            _splits([{"split": "train"}], [{"split": "test"}]),
        ),
    )
}


def open_torchvision(tv_class: str, root: Path, kwargs: dict[str, Any], name: str = "", download: bool = False) -> Any:
    """``torchvision.datasets.<tv_class>(root, download=..., **kwargs)``; its "not found" as ours."""
    import torchvision.datasets as tvd

    spec = TV_SPECS.get(name)
    try:
        return getattr(tvd, tv_class)(str(root), download=download, **kwargs)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        layout = f" Expected layout: {spec.layout_text(root)}. To get it: {spec.how_to_get_text(root)}" if spec else ""
        raise DatasetUnavailable(
            f"{name or tv_class}: torchvision could not open it under {root} ({exc}).{layout}"
        ) from exc


def _open_tv(spec: RealSpec, root: Path, kwargs: dict[str, Any], download: bool = False) -> Any:
    return open_torchvision(spec.tv_class, root, kwargs, spec.name, download=download)


def load_torchvision_splits(spec: RealSpec, root: Path) -> dict[str, ImageSplit]:
    """All splits of a torchvision-backed set (train, test) as ImageSplits."""
    require(spec, root)
    version = f"tv-s{SPLIT_SEED}-t{TEST_FRACTION}" if spec.holdout else "tv1"
    if spec.holdout:
        kw = spec.tv_args["all"][0]
        ds = _open_tv(spec, root, kw)
        labels = _tv_labels(ds)
        classes = _tv_classes(ds, spec.fixed_classes, spec.num_classes)
        whole = TorchvisionSplit(
            spec.name, "all", classes, [ds], labels, version=version, part_args=[(spec.tv_class, str(root), kw)]
        )
        train, test = stratified_holdout(labels, TEST_FRACTION, SPLIT_SEED)
        return {"train": whole.subset(train, split="train"), "test": whole.subset(test, split="test")}
    out: dict[str, ImageSplit] = {}
    for split, part_args in spec.tv_args.items():
        parts = [_open_tv(spec, root, kw) for kw in part_args]
        labels = np.concatenate([_tv_labels(p) for p in parts])
        classes = _tv_classes(parts[0], spec.fixed_classes, spec.num_classes)
        out[split] = TorchvisionSplit(
            spec.name,
            split,
            classes,
            parts,
            labels,
            version=version,
            part_args=[(spec.tv_class, str(root), kw) for kw in part_args],
        )
    return out


def download_dataset(name: str, data_root: str | Path) -> None:
    """Download a torchvision-backed set into ``data_root`` (the only code path that downloads)."""
    from benchmark.data.real import REAL_SPECS

    root = Path(data_root).expanduser()
    if name not in TV_SPECS:
        spec = REAL_SPECS.get(name)
        hint = spec.how_to_get if spec else "see `nmlbench datasets`"
        raise ConfigError(f"{name} cannot be downloaded automatically: {hint}")
    spec = TV_SPECS[name]
    root.mkdir(parents=True, exist_ok=True)
    for part_args in spec.tv_args.values():
        for kw in part_args:
            _open_tv(spec, root, kw, download=True)
