"""Writers of the paper's 14 ID sets in their published on-disk formats, with stand-in pixels.

Each writer reproduces the files its loader reads, under the names and in the formats of the
real release (``torchvision_sets`` / ``own_readers`` document them), for a few classes with real
class names: the first ten (sorted) of the set, or all of them where the loader takes the class
list from a fixed list (CIFAR-10/100, STL-10, Flowers-102, PCAM, Rendered SST-2). Files no loader
reads are left out: STL-10's 2.6 GB ``unlabeled_X.bin`` and ``fold_indices.txt``, DTD's
partitions 2-10, Oxford-Pets' trimaps, the ``valid`` splits of PCAM, SST-2 and Country211.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.data.rehearsal_images import StandInImages, encode
from benchmark.data.rehearsal_names import (
    AIRCRAFT_NAMES,
    CALTECH_NAMES,
    CAR_NAMES,
    CIFAR10_NAMES,
    CIFAR100_COARSE,
    CIFAR100_NAMES,
    COUNTRY_CODES,
    DTD_NAMES,
    EUROSAT_NAMES,
    FOOD_NAMES,
    PET_BREEDS,
    STL10_NAMES,
)


@dataclass
class Ctx:
    """What every writer needs: the root, the counts, and the seeded picture sources."""

    root: Path
    per_class: int  # training images per class
    n_test: int  # test images per class
    seed: int = 0
    sources: dict[str, StandInImages] = field(default_factory=dict)

    def pictures(self, source: str) -> StandInImages:
        if source not in self.sources:
            self.sources[source] = StandInImages(source, self.seed)
        return self.sources[source]

    def rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, sum(name.encode())])


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def per_split(
    ctx: Ctx, k: int, source: str, size: int = 32, shuffle: str = "", **kw
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train"|"test": (images [n, size, size, 3], labels)} for a k-class set, class-major order
    unless ``shuffle`` names a seeded shuffle."""
    out = {}
    for split, n in (("train", ctx.per_class), ("test", ctx.n_test)):
        images = np.concatenate([ctx.pictures(source).draw(c, n, split, size, **kw) for c in range(k)])
        labels = np.repeat(np.arange(k), n)
        if shuffle:
            order = ctx.rng(shuffle + split).permutation(len(labels))
            images, labels = images[order], labels[order]
        out[split] = (images, labels)
    return out


#: MAT-file v5 header text (116 bytes, free text that no reader parses). scipy writes the
#: current time there; a fixed text keeps the same seed writing the same bytes.
MAT_HEADER = b"MATLAB 5.0 MAT-file, written by nml-bench's rehearsal root".ljust(116)


def _savemat(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    savemat(buf, arrays)
    raw = buf.getvalue()
    write_bytes(path, MAT_HEADER + raw[len(MAT_HEADER) :])


def _pickle(path: Path, obj: dict) -> None:
    write_bytes(path, pickle.dumps(obj, protocol=2))


def write_cifar10(ctx: Ctx) -> Path:
    base = ctx.root / "cifar-10-batches-py"
    data = per_split(ctx, 10, "fashion-mnist", shuffle="cifar10")
    _pickle(
        base / "batches.meta",
        {"num_cases_per_batch": len(data["train"][1]) // 5, "label_names": list(CIFAR10_NAMES), "num_vis": 3072},
    )
    batches = [
        (f"data_batch_{i + 1}", f"training batch {i + 1} of 5", part)
        for i, part in enumerate(np.array_split(np.arange(len(data["train"][1])), 5))
    ]
    batches.append(("test_batch", "testing batch 1 of 1", np.arange(len(data["test"][1]))))
    for name, label, rows in batches:
        images, labels = data["test" if name == "test_batch" else "train"]
        _pickle(
            base / name,
            {
                "batch_label": label,
                "labels": labels[rows].tolist(),
                "data": images[rows].transpose(0, 3, 1, 2).reshape(len(rows), 3072),
                "filenames": [f"stand_in_{i}.png" for i in rows],
            },
        )
    return base


def write_cifar100(ctx: Ctx) -> Path:
    base = ctx.root / "cifar-100-python"
    _pickle(base / "meta", {"fine_label_names": list(CIFAR100_NAMES), "coarse_label_names": list(CIFAR100_COARSE)})
    for split, (images, labels) in per_split(ctx, 100, "fashion-mnist", shuffle="cifar100").items():
        _pickle(
            base / split,
            {
                "filenames": [f"stand_in_{i}.png" for i in range(len(labels))],
                "batch_label": f"{split}ing batch 1 of 1",
                "fine_labels": labels.tolist(),
                "coarse_labels": (labels // 5).tolist(),
                "data": images.transpose(0, 3, 1, 2).reshape(len(labels), 3072),
            },
        )
    return base


def write_stl10(ctx: Ctx) -> Path:
    base = ctx.root / "stl10_binary"
    write_bytes(base / "class_names.txt", ("\n".join(STL10_NAMES) + "\n").encode())
    for split, (images, labels) in per_split(ctx, 10, "fashion-mnist", size=96, shuffle="stl10").items():
        write_bytes(base / f"{split}_X.bin", np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes())
        write_bytes(base / f"{split}_y.bin", (labels + 1).astype(np.uint8).tobytes())
    return base


def _class_folders(
    ctx: Ctx,
    top: Path,
    names: tuple[str, ...],
    source: str,
    file_name: Callable[[str, int], str],
    splits: tuple[str, ...] = ("train",),
    counts: int | None = None,
) -> None:
    """JPEG files ``top/<class>/<file_name(class, i)>``: ``counts`` (default per_class) of each
    class from the given embedded splits (several splits: one after the other)."""
    for c, name in enumerate(names):
        i = 0
        for split in splits:
            n = counts if counts is not None else (ctx.per_class if split == "train" else ctx.n_test)
            for image in ctx.pictures(source).draw(c, n, split):
                write_bytes(top / name / file_name(name, i), encode(image))
                i += 1


def write_caltech101(ctx: Ctx) -> Path:
    base = ctx.root / "caltech101" / "101_ObjectCategories"
    names = CALTECH_NAMES + ("BACKGROUND_Google",)  # torchvision drops the background folder
    _class_folders(ctx, base, names, "fashion-mnist", lambda n, i: f"image_{i + 1:04d}.jpg", ("train", "test"))
    return base


def write_eurosat(ctx: Ctx) -> Path:
    base = ctx.root / "eurosat" / "2750"
    _class_folders(ctx, base, EUROSAT_NAMES, "animal-mnist", lambda n, i: f"{n}_{i + 1}.jpg", ("train", "test"))
    return base


def write_rendered_sst2(ctx: Ctx) -> Path:
    base = ctx.root / "rendered-sst2"
    for split in ("train", "test"):
        for c, name in enumerate(("negative", "positive")):
            for i, image in enumerate(
                ctx.pictures("fashion-mnist").draw(c + 2, ctx.per_class if split == "train" else ctx.n_test, split)
            ):
                write_bytes(base / split / name / f"{i:05d}.png", encode(image, "PNG"))
    return base


def write_country211(ctx: Ctx) -> Path:
    base = ctx.root / "country211"
    for split in ("train", "test"):
        _class_folders(ctx, base / split, COUNTRY_CODES, "animal-mnist", lambda n, i: f"{i:06d}.jpg", (split,))
    return base


def write_dtd(ctx: Ctx) -> Path:
    base = ctx.root / "dtd" / "dtd"
    lines: dict[str, list[str]] = {"train1": [], "val1": [], "test1": []}
    half = ctx.per_class // 2
    for c, name in enumerate(DTD_NAMES):
        pics = list(ctx.pictures("animal-mnist").draw(c, ctx.per_class, "train")) + list(
            ctx.pictures("animal-mnist").draw(c, ctx.n_test, "test")
        )
        for i, image in enumerate(pics):
            file = f"{name}_{i + 1:04d}.jpg"
            write_bytes(base / "images" / name / file, encode(image))
            lines["train1" if i < half else "val1" if i < ctx.per_class else "test1"].append(f"{name}/{file}")
    for part, rows in lines.items():
        write_bytes(base / "labels" / f"{part}.txt", ("\n".join(rows) + "\n").encode())
    return base


def write_fgvc_aircraft(ctx: Ctx) -> Path:
    base = ctx.root / "fgvc-aircraft-2013b" / "data"
    write_bytes(base / "variants.txt", ("\n".join(AIRCRAFT_NAMES) + "\n").encode())
    image_id = 1000000
    for split, part in (("train", "trainval"), ("test", "test")):
        rows = []
        for c, name in enumerate(AIRCRAFT_NAMES):
            for image in ctx.pictures("fashion-mnist").draw(
                c, ctx.per_class if split == "train" else ctx.n_test, split
            ):
                image_id += 1
                write_bytes(base / "images" / f"{image_id:07d}.jpg", encode(image))
                rows.append(f"{image_id:07d} {name}")
        write_bytes(base / f"images_variant_{part}.txt", ("\n".join(rows) + "\n").encode())
    return base.parent


def write_food101(ctx: Ctx) -> Path:
    base = ctx.root / "food-101"
    write_bytes(base / "meta" / "classes.txt", ("\n".join(FOOD_NAMES) + "\n").encode())
    for split in ("train", "test"):
        meta: dict[str, list[str]] = {}
        for c, name in enumerate(FOOD_NAMES):
            ids: list[str] = []
            for image in ctx.pictures("fashion-mnist").draw(
                c, ctx.per_class if split == "train" else ctx.n_test, split
            ):
                image_id = f"{name}/{1000 * c + len(ids) + (0 if split == 'train' else 500)}"
                write_bytes(base / "images" / f"{image_id}.jpg", encode(image))
                ids.append(image_id)
            meta[name] = ids
        write_bytes(base / "meta" / f"{split}.json", json.dumps(meta).encode())
        write_bytes(base / "meta" / f"{split}.txt", ("\n".join(i for v in meta.values() for i in v) + "\n").encode())
    return base


def write_oxford_pets(ctx: Ctx) -> Path:
    base = ctx.root / "oxford-iiit-pet"
    for split, part in (("train", "trainval"), ("test", "test")):
        rows = []
        for c, (breed, species, breed_id) in enumerate(PET_BREEDS):
            for i, image in enumerate(
                ctx.pictures("animal-mnist").draw(c, ctx.per_class if split == "train" else ctx.n_test, split)
            ):
                image_id = f"{breed}_{i + 1 + (0 if split == 'train' else 100)}"
                write_bytes(base / "images" / f"{image_id}.jpg", encode(image))
                rows.append(f"{image_id} {c + 1} {species} {breed_id}")
        write_bytes(base / "annotations" / f"{part}.txt", ("\n".join(rows) + "\n").encode())
    return base


def write_flowers102(ctx: Ctx) -> Path:
    base = ctx.root / "flowers-102"
    labels: list[int] = []
    ids: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    half = ctx.per_class // 2
    for c in range(102):
        pics = list(ctx.pictures("fashion-mnist").draw(c, ctx.per_class, "train")) + list(
            ctx.pictures("fashion-mnist").draw(c, ctx.n_test, "test")
        )
        for i, image in enumerate(pics):
            labels.append(c + 1)
            write_bytes(base / "jpg" / f"image_{len(labels):05d}.jpg", encode(image))
            ids["trnid" if i < half else "valid" if i < ctx.per_class else "tstid"].append(len(labels))
    _savemat(base / "imagelabels.mat", {"labels": np.asarray([labels], dtype=np.uint8)})
    _savemat(base / "setid.mat", {k: np.asarray([v], dtype=np.uint16) for k, v in ids.items()})
    return base


def write_stanford_cars(ctx: Ctx) -> Path:
    base = ctx.root / "stanford_cars"
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    names = np.empty((1, len(CAR_NAMES)), dtype=object)
    names[0, :] = CAR_NAMES
    _savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    for split, folder, annos in (
        ("train", "cars_train", base / "devkit" / "cars_train_annos.mat"),
        ("test", "cars_test", base / "cars_test_annos_withlabels.mat"),
    ):
        rows: list[tuple[int, int, int, int, int, str]] = []
        for c in range(len(CAR_NAMES)):
            for image in ctx.pictures("fashion-mnist").draw(
                c, ctx.per_class if split == "train" else ctx.n_test, split
            ):
                fname = f"{len(rows) + 1:05d}.jpg"
                write_bytes(base / folder / fname, encode(image))
                rows.append((1, 1, 32, 32, c + 1, fname))
        table = np.empty((1, len(rows)), dtype=fields)
        for i, row in enumerate(rows):
            table[0, i] = row
        _savemat(annos, {"annotations": table})
    return base


def write_pcam(ctx: Ctx) -> Path:
    import h5py

    base = ctx.root / "pcam"
    base.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in per_split(ctx, 2, "animal-mnist", size=96, shuffle="pcam").items():
        stem = f"camelyonpatch_level_2_split_{split}"
        with h5py.File(base / f"{stem}_x.h5", "w") as f:
            f.create_dataset("x", data=images, compression="gzip")
        with h5py.File(base / f"{stem}_y.h5", "w") as f:
            f.create_dataset("y", data=labels.astype(np.uint8).reshape(-1, 1, 1, 1))
    return base


#: Registry name -> writer, for every ID set of the paper suites.
ID_WRITERS: dict[str, Callable[[Ctx], Path]] = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "stl10": write_stl10,
    "caltech101": write_caltech101,
    "dtd": write_dtd,
    "eurosat": write_eurosat,
    "fgvc-aircraft": write_fgvc_aircraft,
    "flowers102": write_flowers102,
    "food101": write_food101,
    "oxford-pets": write_oxford_pets,
    "stanford-cars": write_stanford_cars,
    "pcam": write_pcam,
    "rendered-sst2": write_rendered_sst2,
    "country211": write_country211,
}
