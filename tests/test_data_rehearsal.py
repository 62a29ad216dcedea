"""The rehearsal root: every data set of the paper suites, in its real layout, through its real loader."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import isolated_data_home

from benchmark.data import check_label_space, clear_cache, get_dataset, get_ood_group, list_datasets, rehearsal
from benchmark.data import rehearsal_id as rid
from benchmark.data.embedded import ANIMAL_CLASSES
from benchmark.errors import ConfigError

data_home = pytest.fixture(scope="module", autouse=True)(isolated_data_home)

PER_CLASS, N_TEST = 6, 3
SUITES = Path(__file__).resolve().parents[1] / "suites"
PETS = [
    "Abyssinian",
    "American Bulldog",
    "American Pit Bull Terrier",
    "Basset Hound",
    "Beagle",
    "Bengal",
    "Birman",
    "Bombay",
    "Boxer",
    "British Shorthair",
]


def _flowers() -> list[str]:
    from torchvision.datasets import Flowers102

    return list(Flowers102.classes)


#: name -> the class list its loader must report (all written classes appear, equally often).
EXPECTED_CLASSES = {
    "cifar10": list(rid.CIFAR10_NAMES),
    "cifar100": list(rid.CIFAR100_NAMES),
    "stl10": list(rid.STL10_NAMES),
    "caltech101": list(rid.CALTECH_NAMES),
    "dtd": list(rid.DTD_NAMES),
    "eurosat": list(rid.EUROSAT_NAMES),
    "fgvc-aircraft": list(rid.AIRCRAFT_NAMES),
    "flowers102": _flowers(),
    "food101": list(rid.FOOD_NAMES),
    "oxford-pets": PETS,
    "stanford-cars": list(rid.CAR_NAMES),
    "pcam": ["no metastasis", "metastasis"],
    "rendered-sst2": ["negative", "positive"],
    "country211": list(rid.COUNTRY_CODES),
    "imagenet": list(rehearsal.IMAGENET_WNIDS),
    **{f"domainnet-{d}": list(rehearsal.DOMAINNET_CLASSES) for d in rehearsal.DOMAINNET_STYLES},
}
HOLDOUT = {"caltech101", "eurosat"}  # one folder, split 80/20 by the loader


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rehearsal")
    written = rehearsal.write_rehearsal_root(root, per_class=PER_CLASS, seed=0)
    assert all(path.is_relative_to(root) and path.exists() for path in written.values())
    return root


def _paper_names() -> set[str]:
    names: set[str] = set()
    for suite in ("paper-supervised.yaml", "paper-clip.yaml"):
        doc = yaml.safe_load((SUITES / suite).read_text())
        names.update(job["corpus"] for job in doc["pretrain"])
        names.update(doc["downstream"]["id"])
        for group in doc["downstream"]["ood"]:
            names.update(get_ood_group(group).members)
    return names


def test_every_paper_suite_set_is_written_or_declared_not_reproducible(root):
    manifest = json.loads((root / rehearsal.MANIFEST).read_text())
    covered = set(manifest["sets"]) | set(manifest["not_reproducible"])
    assert _paper_names() | {"yfcc15m", "cc12m"} <= covered
    assert manifest["not_reproducible"] == rehearsal.not_reproducible()
    assert manifest["per_class"] == PER_CLASS and manifest["test_per_class"] == N_TEST
    rows = {s.name: s for s in list_datasets(root)}
    assert all(rows[name].available for name in manifest["sets"])
    assert not rows["domainnet-quickdraw"].available


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_labelled_sets_load_with_their_classes_and_counts(root, name):
    src = get_dataset(name, root)
    train, test = src.split("train"), src.split("test")
    classes = EXPECTED_CLASSES[name]
    assert train.classes == classes == test.classes and list(src.info.classes) == classes
    k = len(classes)
    if name in HOLDOUT:  # 9 images a class, the loader holds out round(0.2 * 9) = 2
        assert np.bincount(train.labels, minlength=k).tolist() == [7] * k
        assert np.bincount(test.labels, minlength=k).tolist() == [2] * k
    else:
        assert np.bincount(train.labels, minlength=k).tolist() == [PER_CLASS] * k
        assert np.bincount(test.labels, minlength=k).tolist() == [N_TEST] * k
    image, label = test[len(test) - 1]
    assert image.mode == "RGB" and label == int(test.labels[-1])
    side = 96 if name in ("stl10", "pcam") else 32
    assert image.size == (side, side)


def test_imagenet_variants_map_into_the_ten_class_imagenet(root):
    wnids = list(rehearsal.IMAGENET_WNIDS)
    subset = [wnids.index(w) for w in rehearsal.SUBSET_WNIDS]
    for name, present in (
        ("imagenet-v2", range(10)),
        ("imagenet-sketch", range(10)),
        ("imagenet-a", subset),
        ("imagenet-r", subset),
    ):
        test = get_dataset(name, root).split("test")
        assert test.classes == wnids
        assert np.bincount(test.labels, minlength=10)[list(present)].tolist() == [N_TEST] * len(present)
        assert len(test) == N_TEST * len(present)
    assert get_dataset("imagenet-a", root).split("test").class_subset.tolist() == subset
    assert get_dataset("imagenet-sketch", root).split("test").class_subset is None


@pytest.mark.parametrize("group", ["domainnet-real", "domainnet-sketch", "imagenet-variants"])
def test_paper_ood_groups_share_one_label_space(root, group):
    check_label_space(group, root)


def test_pictures_are_learnable_and_the_ood_sets_are_shifted(root):
    """Nearest class mean on raw pixels: well above chance in-domain, lower across domains."""

    def pixels(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        s = get_dataset(name, root).split(split)
        x = np.stack([np.asarray(s[i][0].convert("L"), dtype=np.float64).ravel() for i in range(len(s))])
        return x, s.labels

    def accuracy(train: str, test: str) -> float:
        x, y = pixels(train, "train")
        means = np.stack([x[y == c].mean(0) for c in range(10)])
        tx, ty = pixels(test, "test")
        return float((np.argmin(((tx[:, None] - means[None]) ** 2).sum(-1), 1) == ty).mean())

    in_domain = accuracy("domainnet-real", "domainnet-real")
    # Seeded pictures and float64 distances whose two nearest means differ by >= 1 % on every test
    # row: no near-tie, so 23/30 and 21/30 on any CPU. The bound (15/30) is 5x chance (0.1).
    assert in_domain >= 0.5 and accuracy("imagenet", "imagenet") >= 0.5
    assert accuracy("domainnet-real", "domainnet-sketch") < in_domain


def test_train_and_test_share_no_picture(root):
    for name in ("imagenet", "cifar100", "domainnet-painting", "oxford-pets"):
        src = get_dataset(name, root)
        seen = {np.asarray(img).tobytes() for img, _ in (src.split("train")[i] for i in range(len(src.split("train"))))}
        test = src.split("test")
        assert not any(np.asarray(test[i][0]).tobytes() in seen for i in range(len(test)))


def test_image_text_pairs_are_identical_in_both_formats(root):
    shards = get_dataset("yfcc15m", root).split("train")
    table = get_dataset("cc12m", root).split("train")
    n = rehearsal.PAIRS_PER_CLASS * PER_CLASS * 10
    assert len(shards) == len(table) == n and shards.captions == table.captions
    assert all(shards.image_bytes(i) == table.image_bytes(i) for i in range(0, n, 7))
    # yfcc15m is unlabelled like the real corpus; cc12m carries the class of each picture.
    assert shards.classes == [] and set(shards.labels.tolist()) == {-1}
    assert table.classes == list(ANIMAL_CLASSES) and np.bincount(table.labels).tolist() == [n // 10] * 10
    assert all(table.classes[y] in c for y, c in zip(table.labels.tolist(), table.captions))


def test_every_split_pickles_small_and_reopens_identically(root):
    manifest = json.loads((root / rehearsal.MANIFEST).read_text())
    for name in manifest["sets"]:
        src = get_dataset(name, root)
        for split_name in src.split_names:
            split = src.split(split_name)
            blob = pickle.dumps(split)
            assert len(blob) < 200 * len(split) + 4000, (name, split_name, len(blob))  # a path, not pixels
            again = pickle.loads(blob)
            i = len(split) // 2
            assert np.array_equal(np.asarray(again[i][0]), np.asarray(split[i][0])) and again[i][1] == split[i][1]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".nmlbench-index" not in p.parts
    }


def test_same_seed_same_files_and_a_rehearsal_root_can_be_rewritten(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert rehearsal.main([str(a), "--per-class", "1"]) == 0
    assert f"wrote {25 - len(rehearsal.not_reproducible())} data sets" in capsys.readouterr().out
    rehearsal.write_rehearsal_root(b, per_class=1, seed=0)
    assert _digests(a) == _digests(b)
    rehearsal.write_rehearsal_root(b, per_class=1, seed=1)  # rewriting a rehearsal root replaces it
    other = _digests(b)
    assert len(other) == len(_digests(a)) and other != _digests(a)  # V2 files are named by content
    clear_cache()
    assert len(get_dataset("imagenet", b).split("train")) == 10


def test_bad_arguments_and_foreign_folders_are_refused(tmp_path):
    for bad in (0, 33, 2.5, True):
        with pytest.raises(ConfigError, match="per_class"):
            rehearsal.write_rehearsal_root(tmp_path / "x", per_class=bad)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(ConfigError, match="not a rehearsal root"):
        rehearsal.write_rehearsal_root(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"
