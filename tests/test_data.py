"""Data sets: sizes, pixels, splits, determinism, sampling, OOD groups, registry errors, installer."""

from __future__ import annotations

import gzip
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import isolated_data_home, write_image, write_imagenet_root

from benchmark.data import (
    OOD_GROUPS,
    ArraySplit,
    OODGroup,
    check_label_space,
    clear_cache,
    dataset_names,
    embedded,
    few_shot,
    font_digits,
    fonts,
    format_datasets_table,
    get_dataset,
    get_ood_group,
    install,
    list_datasets,
    real,
    train_val_split,
)
from benchmark.errors import ConfigError, DatasetUnavailable, UnknownNameError
from benchmark.hashing import array_digest

EMBEDDED_NAMES = ["fashion-mnist", "mnist-5k", "animal-mnist", "sklearn-digits", "digits-printed", "digits-handwriting"]

# Per-class counts (train, test) that the documented splits must reproduce exactly.
EXPECTED_COUNTS = {
    "fashion-mnist": ([6000] * 10, [1000] * 10),
    "mnist-5k": ([400] * 10, [100] * 10),
    "animal-mnist": (
        [750, 650, 794, 797, 798, 800, 800, 798, 788, 800],
        [187, 162, 198, 199, 199, 200, 200, 199, 197, 200],
    ),
    "sklearn-digits": ([142, 146, 142, 146, 145, 146, 145, 143, 139, 144], [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]),
    "digits-printed": ([240] * 10, [60] * 10),
    "digits-handwriting": ([240] * 10, [60] * 10),
}


data_home = pytest.fixture(scope="module", autouse=True)(isolated_data_home)


def _arrays(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    s = get_dataset(name).split(split)
    assert isinstance(s, ArraySplit)
    return s.arrays()


# -- embedded sets ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EMBEDDED_NAMES)
def test_embedded_sizes_classes_pixels_and_stratification(name):
    src = get_dataset(name)
    assert src.info.embedded and src.info.num_classes == 10
    for split, expected in zip(("train", "test"), EXPECTED_COUNTS[name]):
        images, labels = _arrays(name, split)
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        assert labels.dtype == np.int64 and len(labels) == len(images) == sum(expected)
        assert len(images) == embedded.EMBEDDED[name].sizes[split]
        assert images.min() == 0 and images.max() == 255
        assert np.bincount(labels, minlength=10).tolist() == expected
        assert src.split(split).labels.tolist() == labels.tolist()


@pytest.mark.parametrize("name", EMBEDDED_NAMES)
def test_embedded_train_and_test_share_no_image(name):
    train = {row.tobytes() for row in _arrays(name, "train")[0]}
    test = {row.tobytes() for row in _arrays(name, "test")[0]}
    assert not train & test


def test_digit_sets_share_one_label_space_and_real_class_names():
    digits = ["mnist-5k", "sklearn-digits", "digits-printed", "digits-handwriting"]
    assert {get_dataset(n).info.classes for n in digits} == {tuple("0123456789")}
    assert get_dataset("fashion-mnist").info.classes[0] == "T-shirt/top"
    assert get_dataset("fashion-mnist").info.classes[9] == "Ankle boot"
    assert get_dataset("animal-mnist").info.classes == (
        "bear",
        "bird",
        "cat",
        "cow",
        "dog",
        "elephant",
        "giraffe",
        "horse",
        "sheep",
        "zebra",
    )


def test_items_are_rgb_pil_images_with_int_labels():
    split = get_dataset("mnist-5k").split("test")
    image, label = split[3]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (28, 28)
    assert label == int(split.labels[3])
    assert np.array_equal(np.asarray(image)[..., 0], split.arrays()[0][3])


def test_split_is_deterministic_across_loads_and_pinned():
    first = [array_digest(a) for a in _arrays("mnist-5k", "test")]
    clear_cache()
    again = [array_digest(a) for a in _arrays("mnist-5k", "test")]
    assert first == again
    # Pinned: the images and labels in order (computed once, written here). A change to the data or
    # the seeded split changes them, and must bump the split version in the fingerprint below.
    assert first == ["4ff2d10dcf1837f3", "4a5ca5988ac1f56e"]
    assert get_dataset("mnist-5k").split("test").fingerprint == "mnist-5k/test/vs0-t0.2/all"


def test_sklearn_digits_are_upscaled_into_a_centred_20px_box():
    images, _ = _arrays("sklearn-digits", "train")
    border = np.ones((28, 28), bool)
    border[4:24, 4:24] = False
    assert images[:, border].max() == 0  # nothing outside the centred 20x20 box
    assert len(np.unique(images)) > 16  # bilinear upscaling made intermediate grey levels


def test_restricted_unpickler_refuses_non_numpy_objects():
    import io
    from collections import OrderedDict

    with pytest.raises(pickle.UnpicklingError, match="only numpy"):
        embedded._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(OrderedDict(a=1)))).load()


def test_bad_idx_file_and_missing_fashion_mnist_say_what_to_do(tmp_path, monkeypatch):
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01junk"))
    with pytest.raises(DatasetUnavailable, match="idx"):
        embedded.read_idx(bad)
    monkeypatch.setattr(embedded, "FASHION_SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("NMLBENCH_DATA_HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetUnavailable) as err:
        embedded.load_fashion_mnist()
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and str(tmp_path / "home" / "fashion-mnist") in msg
    assert "train-images-idx3" in msg.replace("{train,t10k}-{images-idx3", "train-images-idx3")
    assert "python -m benchmark.data.install" in msg and "dataset-fashion-mnist" in msg


# -- font renderer and its cache ----------------------------------------------------------------


def test_font_renderer_same_seed_same_pixels_other_seed_other_pixels():
    chosen = fonts.printed_fonts()[:2] + fonts.handwriting_fonts()[:1]
    a, la = fonts.render_digit_set(chosen, 2, seed=0)
    b, _ = fonts.render_digit_set(chosen, 2, seed=0)
    c, _ = fonts.render_digit_set(chosen, 2, seed=1)
    assert array_digest(a) == array_digest(b) and array_digest(a) != array_digest(c)
    assert a.shape == (20, 28, 28) and la.tolist() == [d for d in range(10) for _ in range(2)]
    # MNIST-like: white on black, centre of mass near the frame centre, digit inside the frame.
    for img in a.astype(float):
        rows, cols = np.nonzero(img)
        assert img.max() == 255 and img[0].sum() + img[-1].sum() + img[:, 0].sum() + img[:, -1].sum() == 0
        com = np.array([(img.sum(1) @ np.arange(28)), (img.sum(0) @ np.arange(28))]) / img.sum()
        # The renderer's seeded shift (<= 1.5 px), the paste rounded to a whole pixel (0.5 px) and
        # the glyph's uint8 quantisation; integer rasterising, no CPU dependence (worst: 1.52 px).
        assert np.all(np.abs(com - 13.5) <= 2.6)
        assert max(np.ptp(rows), np.ptp(cols)) + 1 <= 23


def test_font_sets_cover_the_requested_fonts():
    assert [f.path.name for f in fonts.printed_fonts()] == list(fonts.PRINTED_FONT_FILES)
    names = {f.label for f in fonts.handwriting_fonts()}
    assert {"Caveat[wght].ttf@400", "Caveat[wght].ttf@700", "Kalam-Regular.ttf", "IndieFlower-Regular.ttf"} <= names


def test_rendered_sets_are_cached_on_disk_and_reload_identically(data_home, monkeypatch):
    before = [array_digest(a) for a in _arrays("digits-handwriting", "train")]
    files = sorted((data_home / "rendered").glob("digits-handwriting-r*.npz"))
    assert len(files) == 1 and not list((data_home / "rendered").glob("*.tmp"))
    clear_cache()
    renders = []
    real_render = fonts.render_digit_set
    monkeypatch.setattr(fonts, "render_digit_set", lambda *a, **k: renders.append(a) or real_render(*a, **k))
    after = [array_digest(a) for a in _arrays("digits-handwriting", "train")]
    assert after == before and renders == []  # read back from the cache file: no glyph rendered again


def test_corrupt_render_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("NMLBENCH_DATA_HOME", str(tmp_path))
    monkeypatch.setattr(font_digits, "FONT_PER_CLASS", 2)
    chosen = fonts.printed_fonts()[:1]
    images, labels = font_digits.cached_font_digits("tiny", chosen)
    path = font_digits._font_cache_path("tiny", chosen)
    assert path.is_file() and images.shape == (20, 28, 28)
    path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="re-rendering"):
        again, _ = font_digits.cached_font_digits("tiny", chosen)
    assert np.array_equal(again, images)


# -- sampling -------------------------------------------------------------------------------------


def _toy_split(counts: list[int]) -> ArraySplit:
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(5)
    labels = labels[rng.permutation(len(labels))]
    images = np.zeros((len(labels), 2, 2), np.uint8)
    return ArraySplit("toy", "train", [str(i) for i in range(len(counts))], images, labels)


def test_train_val_split_is_stratified_disjoint_complete_and_deterministic():
    split = _toy_split([100, 50, 7, 1])
    train, val = train_val_split(split, 0.2, seed=3)
    assert np.bincount(val.labels, minlength=4).tolist() == [20, 10, 1, 0]
    assert np.bincount(train.labels, minlength=4).tolist() == [80, 40, 6, 1]
    assert not set(train.indices) & set(val.indices)
    assert sorted(np.concatenate([train.indices, val.indices]).tolist()) == list(range(len(split)))
    again_train, again_val = train_val_split(split, 0.2, seed=3)
    assert np.array_equal(again_val.indices, val.indices) and val.split == "val"
    assert not np.array_equal(train_val_split(split, 0.2, seed=4)[1].indices, val.indices)
    assert train.fingerprint != val.fingerprint
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="val_fraction"):
            train_val_split(split, bad, seed=0)


def test_few_shot_is_stratified_nested_and_deterministic():
    split = _toy_split([200, 100, 10])
    small, mid, big = (few_shot(split, fraction=f, seed=1) for f in (0.02, 0.05, 0.1))
    assert np.bincount(small.labels).tolist() == [4, 2, 1]  # at least one item a class
    assert np.bincount(mid.labels).tolist() == [10, 5, 1]
    assert np.bincount(big.labels).tolist() == [20, 10, 1]
    assert set(small.indices) <= set(mid.indices) <= set(big.indices)
    assert np.array_equal(few_shot(split, fraction=0.05, seed=1).indices, mid.indices)
    assert not np.array_equal(few_shot(split, fraction=0.05, seed=2).indices, mid.indices)
    k3, k5 = few_shot(split, per_class=3, seed=1), few_shot(split, per_class=5, seed=1)
    assert np.bincount(k5.labels).tolist() == [5, 5, 5] and set(k3.indices) <= set(k5.indices)
    assert few_shot(split, fraction=1.0) is split
    # A subset of a subset keeps pointing at the right raw items.
    train, _ = train_val_split(split, 0.5, seed=0)
    sub = few_shot(train, per_class=2, seed=0)
    assert np.array_equal(sub.labels, split._all_labels[sub.indices])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"fraction": 0.0}, r"\(0, 1\]"),
        ({"fraction": 1.5}, r"\(0, 1\]"),
        ({"per_class": 0}, ">= 1"),
        ({}, "exactly one"),
        ({"fraction": 0.1, "per_class": 2}, "exactly one"),
    ],
)
def test_few_shot_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        few_shot(_toy_split([5, 5]), **kwargs)


# -- registry -------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as err:
        get_dataset("cifar11")
    assert "cifar10" in str(err.value) and "mnist-5k" in str(err.value)
    with pytest.raises(UnknownNameError, match="digits-from-mnist"):
        get_ood_group("nope")


def test_sources_and_splits_are_cached_per_name_and_root(tmp_path):
    assert get_dataset("mnist-5k") is get_dataset("mnist-5k")
    assert get_dataset("mnist-5k").split("train") is get_dataset("mnist-5k").split("train")
    assert get_dataset("cifar10", tmp_path) is get_dataset("cifar10", str(tmp_path))
    assert get_dataset("cifar10", tmp_path) is not get_dataset("cifar10", tmp_path / "other")
    with pytest.raises(ConfigError, match="no split 'val'"):
        get_dataset("mnist-5k").split("val")


def test_missing_root_names_set_path_layout_and_command(tmp_path):
    with pytest.raises(DatasetUnavailable) as err:
        get_dataset("cifar10", tmp_path).split("train")
    msg = str(err.value)
    assert "cifar10" in msg and str(tmp_path / "cifar-10-batches-py") in msg
    assert "data_batch_1..5" in msg and f"--download cifar10 --data-root {tmp_path}" in msg
    with pytest.raises(DatasetUnavailable) as err:
        get_dataset("imagenet-r", tmp_path).split("test")
    assert str(tmp_path / "imagenet-r") in str(err.value) and "<wnid>" in str(err.value)
    with pytest.raises(DatasetUnavailable, match="NMLBENCH_DATA_ROOT"):
        get_dataset("domainnet-real").split("train")


def test_list_datasets_and_table(tmp_path):
    rows = {s.name: s for s in list_datasets(tmp_path)}
    assert list(rows) == dataset_names() and len(rows) == 6 + 14 + 5 + 6 + 2
    assert all(rows[n].available and rows[n].embedded for n in EMBEDDED_NAMES)
    assert rows["pcam"].num_classes == 2 and rows["imagenet-a"].sizes == {"test": 7500}
    assert not rows["cifar10"].available and "--download cifar10" in rows["cifar10"].how_to_get
    assert str(tmp_path / "domainnet" / "real") in rows["domainnet-real"].how_to_get
    table = format_datasets_table(list(rows.values()))
    assert "fashion-mnist" in table and "60,000" in table and "domainnet-sketch" in table


# -- real layouts, faked in tmp_path -----------------------------------------------------------

WNIDS = ["n01440764", "n01443537", "n01484850"]
_GREY = {"imagenet/train": lambda c, k: 10 * c + k, "imagenet-r": lambda c, k: 1, "imagenet-a": lambda c, k: 2}


@pytest.fixture()
def imagenet_root(tmp_path):
    # A and R hold a subset of the classes (no folder for class 0).
    write_imagenet_root(
        tmp_path,
        WNIDS,
        {
            "imagenet/train": [2, 2, 2],
            "imagenet/val": [1, 1, 1],
            "imagenet-v2": [1, 1, 1],
            "imagenet-sketch": [1, 1, 1],
            "imagenet-a": [0, 1, 1],
            "imagenet-r": [0, 1, 1],
        },
        lambda name, c, k: _GREY.get(name, lambda c, k: 10 * c)(c, k),
    )
    (tmp_path / "imagenet-r" / WNIDS[1] / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagenet_layout_and_variants_map_into_one_label_space(imagenet_root):
    train = get_dataset("imagenet", imagenet_root).split("train")
    test = get_dataset("imagenet", imagenet_root).split("test")
    assert train.classes == WNIDS and train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert test.labels.tolist() == [0, 1, 2] and len(train) == 6
    image, label = train[2]
    assert image.mode == "RGB" and image.size == (5, 6) and label == 1 and np.asarray(image)[0, 0, 0] == 10
    r = get_dataset("imagenet-r", imagenet_root).split("test")
    assert r.classes == WNIDS and r.labels.tolist() == [1, 2] and r.class_subset.tolist() == [1, 2]
    assert get_dataset("imagenet-v2", imagenet_root).split("test").labels.tolist() == [0, 1, 2]
    assert get_dataset("imagenet-sketch", imagenet_root).split("test").class_subset is None
    assert get_dataset("imagenet-r", imagenet_root).info.classes == tuple(WNIDS)
    check_label_space("imagenet-variants", imagenet_root)
    with pytest.raises(ConfigError, match="no split 'train'"):
        get_dataset("imagenet-a", imagenet_root).split("train")


def test_imagenet_class_order_falls_back_to_the_wnids_present(imagenet_root):
    import shutil

    shutil.rmtree(imagenet_root / "imagenet" / "train")
    with pytest.warns(UserWarning, match="sorted union"):
        wnids, origin = real.imagenet_wnids(imagenet_root)
    assert wnids == WNIDS and "union" in origin


@pytest.fixture()
def domainnet_root(tmp_path):
    classes = ["aircraft_carrier", "airplane", "zebra"]
    for domain in ("real", "sketch", "painting", "clipart"):
        for split, n in (("train", 2), ("test", 1)):
            lines = []
            for label, cls in enumerate(classes):
                for k in range(n):
                    rel = f"{domain}/{cls}/{domain}_{split}_{k}.jpg"
                    write_image(tmp_path / "domainnet" / rel, label)
                    lines.append(f"{rel} {label}")
            (tmp_path / "domainnet" / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_domainnet_reads_official_split_files(domainnet_root):
    src = get_dataset("domainnet-sketch", domainnet_root)
    train, test = src.split("train"), src.split("test")
    assert train.classes == ["aircraft_carrier", "airplane", "zebra"] == list(src.info.classes)
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2] and test.labels.tolist() == [0, 1, 2]
    image, label = test[2]
    assert label == 2 and np.asarray(image)[0, 0, 0] == 2
    for group in ("domainnet-real", "domainnet-sketch"):
        check_label_space(group, domainnet_root)
    (domainnet_root / "domainnet" / "painting_test.txt").write_text("painting/x.jpg\n")
    clear_cache()
    with pytest.raises(DatasetUnavailable, match="painting_test.txt:1"):
        get_dataset("domainnet-painting", domainnet_root).split("test")


def test_torchvision_sets_wrap_without_decoding(tmp_path):
    for cls, value in (("AnnualCrop", 0), ("Forest", 50)):
        for k in range(5):
            write_image(tmp_path / "eurosat" / "2750" / cls / f"{cls}_{k}.jpg", value + k)
    for split in ("train", "test"):
        for cls in ("negative", "positive"):
            write_image(tmp_path / "rendered-sst2" / split / cls / f"{split}_{cls}.png", 7)
    euro = get_dataset("eurosat", tmp_path)
    train, test = euro.split("train"), euro.split("test")
    assert euro.info.classes == ("AnnualCrop", "Forest")
    assert np.bincount(train.labels).tolist() == [4, 4] and np.bincount(test.labels).tolist() == [1, 1]
    assert not set(train.indices) & set(test.indices)
    image, label = test[0]
    assert image.mode == "RGB" and label == int(test.labels[0])
    sst = get_dataset("rendered-sst2", tmp_path).split("test")
    assert sst.classes == ["negative", "positive"] and sst.labels.tolist() == [0, 1]
    assert sst.fingerprint == "rendered-sst2/test/vtv1/all"


# -- OOD groups -----------------------------------------------------------------------------------


def test_embedded_groups_share_label_spaces_and_mismatches_are_caught():
    assert get_ood_group("digits-from-mnist").tests == ("sklearn-digits", "digits-printed", "digits-handwriting")
    assert get_ood_group("digits-from-fonts").train == "digits-printed"
    assert set(OOD_GROUPS) == {
        "digits-from-mnist",
        "digits-from-fonts",
        "domainnet-real",
        "domainnet-sketch",
        "imagenet-variants",
    }
    for name in ("digits-from-mnist", "digits-from-fonts"):
        check_label_space(name)
    for group in OOD_GROUPS.values():
        assert all(m in dataset_names() for m in group.members)
    with pytest.raises(ConfigError, match="share one label space"):
        check_label_space(OODGroup("bad", "mnist-5k", ("fashion-mnist",)))


# -- installer ------------------------------------------------------------------------------------


class FakeApt:
    """Stands in for subprocess.run: records commands and fakes apt-get / dpkg-deb effects."""

    def __init__(self, system_dir: Path, fail: set[str] = frozenset()):
        self.calls: list[list[str]] = []
        self.system_dir, self.fail = system_dir, set(fail)
        self.installs = 0

    def __call__(self, cmd, capture_output=True, text=True, cwd=None, env=None):
        self.calls.append(cmd)
        key = " ".join(cmd[:2])
        if key in self.fail:
            self.fail.discard(key)  # fail once
            return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package")
        if cmd[:2] == ["apt-get", "download"]:
            (Path(cwd) / "dataset-fashion-mnist_0.0-1_all.deb").write_bytes(b"deb")
        elif cmd[:2] == ["dpkg-deb", "-x"]:
            _fake_idx_files(Path(cmd[3]) / "usr/share/datasets/fashion-mnist")
        elif cmd[:2] == ["apt-get", "install"]:
            _fake_idx_files(self.system_dir)
        return subprocess.CompletedProcess(cmd, 0, "", "")


def _fake_idx_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for pair in embedded.FASHION_FILES.values():
        for name in pair:
            (folder / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"))


def test_install_without_root_downloads_and_extracts_the_deb(tmp_path, monkeypatch):
    monkeypatch.setenv("NMLBENCH_DATA_HOME", str(tmp_path / "home"))
    apt = FakeApt(tmp_path / "system")
    folder = install.ensure_fashion_mnist(runner=apt, is_root=False, system_dir=tmp_path / "system")
    assert folder == tmp_path / "home" / "fashion-mnist"
    assert [c[:2] for c in apt.calls] == [["apt-get", "download"], ["dpkg-deb", "-x"]]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f for pair in embedded.FASHION_FILES.values() for f in pair
    )
    assert embedded.read_idx(folder / "t10k-labels-idx1-ubyte.gz").tolist() == [7]
    apt.calls.clear()  # second run: files present, nothing is run
    assert install.ensure_fashion_mnist(runner=apt, is_root=False, system_dir=tmp_path / "system") == folder
    assert apt.calls == []


def test_install_as_root_updates_lists_once_when_install_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("NMLBENCH_DATA_HOME", str(tmp_path / "home"))
    apt = FakeApt(tmp_path / "system", fail={"apt-get install"})
    assert install.ensure_fashion_mnist(runner=apt, is_root=True, system_dir=tmp_path / "system") == tmp_path / "system"
    assert [c[:2] for c in apt.calls] == [["apt-get", "install"], ["apt-get", "update"], ["apt-get", "install"]]


def test_install_failure_exits_nonzero_saying_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NMLBENCH_DATA_HOME", str(tmp_path / "home"))
    apt = FakeApt(tmp_path / "system", fail={"apt-get download"})
    with pytest.raises(DatasetUnavailable, match="apt-get install -y dataset-fashion-mnist"):
        install.ensure_fashion_mnist(runner=apt, is_root=False, system_dir=tmp_path / "system")

    def broken(*a, **k):
        raise DatasetUnavailable("fashion-mnist: apt-get download failed; install dataset-fashion-mnist")

    monkeypatch.setattr(install, "ensure_fashion_mnist", broken)
    assert install.main([]) == 1
    assert "dataset-fashion-mnist" in capsys.readouterr().err
