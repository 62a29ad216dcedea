"""Own readers of CIFAR-10/100, STL-10 and Flowers-102: the published formats, read without
torchvision's md5 checks, must give exactly what torchvision gives on the same files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from support import isolated_data_home, python2_pickle, write_image

from benchmark.data import get_dataset
from benchmark.data.base import ArraySplit
from benchmark.data.own_readers import Stl10Split
from benchmark.errors import DatasetUnavailable

data_home = pytest.fixture(scope="module", autouse=True)(isolated_data_home)


@pytest.fixture()
def no_md5(monkeypatch):
    """torchvision as it would read these files if their md5 sums were the published ones."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    for cls in (tvd.CIFAR10, tvd.STL10, tvd.Flowers102):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)


def _batch(rng: np.random.Generator, n: int, k: int, key: str) -> tuple[np.ndarray, list[int], dict]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, k, size=n).tolist()
    return (
        data,
        labels,
        {"batch_label": "batch", key: labels, "data": data, "filenames": [f"img_{i}.png" for i in range(n)]},
    )


def test_cifar10_python2_batches_read_like_torchvision_and_pixel_by_pixel(tmp_path, no_md5):
    rng = np.random.default_rng(0)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (base / "batches.meta").write_bytes(python2_pickle({"label_names": names, "num_vis": 3072}))
    train_data, train_labels = [], []
    for i in range(1, 6):
        data, labels, d = _batch(rng, 2 + i % 2, 10, "labels")
        (base / f"data_batch_{i}").write_bytes(python2_pickle(d))
        train_data.append(data)
        train_labels += labels
    test_data, test_labels, d = _batch(rng, 3, 10, "labels")
    (base / "test_batch").write_bytes(python2_pickle(d))

    src = get_dataset("cifar10", tmp_path)
    train, test = src.split("train"), src.split("test")
    assert isinstance(train, ArraySplit) and train.classes == names and list(src.info.classes) == names
    assert train.labels.tolist() == train_labels and test.labels.tolist() == test_labels
    assert train.fingerprint == "cifar10/train/vtv1/all"
    # Row-major R, G, B planes: pixel (r, c) of channel k is data[k * 1024 + r * 32 + c].
    flat = np.concatenate(train_data)
    image, label = train[4]
    assert label == train_labels[4] and image.size == (32, 32)
    px = np.asarray(image)
    for r, c, k in ((0, 0, 0), (5, 31, 1), (31, 7, 2)):
        assert px[r, c, k] == flat[4, k * 1024 + r * 32 + c]
    for ours, train_flag in ((train, True), (test, False)):
        theirs = tvd.CIFAR10(str(tmp_path), train=train_flag)
        assert theirs.classes == ours.classes and list(theirs.targets) == ours.labels.tolist()
        assert np.array_equal(theirs.data, ours.arrays()[0])


def test_cifar100_reads_fine_labels_and_fine_names(tmp_path, no_md5):
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    fine = [f"fine{i:03d}" for i in range(100)]
    (base / "meta").write_bytes(
        python2_pickle({"fine_label_names": fine, "coarse_label_names": [f"c{i}" for i in range(20)]})
    )
    for split, n in (("train", 7), ("test", 4)):
        data, labels, d = _batch(rng, n, 100, "fine_labels")
        d["coarse_labels"] = [y // 5 for y in labels]
        (base / split).write_bytes(python2_pickle(d))
    for split, flag in (("train", True), ("test", False)):
        ours = get_dataset("cifar100", tmp_path).split(split)
        theirs = tvd.CIFAR100(str(tmp_path), train=flag)
        assert ours.classes == fine == theirs.classes and ours.labels.tolist() == theirs.targets
        assert np.array_equal(ours.arrays()[0], theirs.data)


def test_cifar_split_pickles_as_file_paths_and_rereads_pixels(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(2)
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}, protocol=2))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(pickle.dumps(_batch(rng, 40, 10, "labels")[2], protocol=2))
    train = get_dataset("cifar10", tmp_path).split("train")
    view = train.subset([3, 150, 7])
    blob = pickle.dumps(view)
    assert len(blob) < 4000 < train.images.nbytes  # paths and labels, not 200 x 3072 pixels
    again = pickle.loads(blob)
    assert again._images is None
    for i in range(3):
        assert np.array_equal(np.asarray(again[i][0]), np.asarray(view[i][0])) and again[i][1] == view[i][1]


def test_cifar_batch_with_code_in_it_is_refused_with_the_fix(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (base / "batches.meta").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DatasetUnavailable) as err:
        get_dataset("cifar10", tmp_path).split("train")
    msg = str(err.value)
    assert "batches.meta" in msg and "refusing to load builtins.print" in msg
    assert "--download cifar10" in msg


def _stl_bin(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)


def test_stl10_binaries_read_by_seek_like_torchvision(tmp_path, no_md5):
    rng = np.random.default_rng(3)
    base = tmp_path / "stl10_binary"
    base.mkdir()
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (base / "class_names.txt").write_text("\n".join(names) + "\n")
    for split, n in (("train", 5), ("test", 3)):
        _stl_bin(rng, n).tofile(base / f"{split}_X.bin")
        (rng.integers(1, 11, size=n).astype(np.uint8)).tofile(base / f"{split}_y.bin")
    for split in ("train", "test"):
        ours = get_dataset("stl10", tmp_path).split(split)
        theirs = tvd.STL10(str(tmp_path), split=split)
        assert isinstance(ours, Stl10Split) and ours.classes == names == theirs.classes
        assert ours.labels.tolist() == theirs.labels.tolist()
        for i in range(len(ours)):
            assert np.array_equal(np.asarray(ours[i][0]), np.asarray(theirs[i][0]))
    (base / "test_X.bin").write_bytes((base / "test_X.bin").read_bytes()[:-10])
    from benchmark.data import clear_cache

    clear_cache()
    with pytest.raises(DatasetUnavailable, match="test_X.bin holds"):
        get_dataset("stl10", tmp_path).split("test")


def test_flowers102_mat_files_read_like_torchvision(tmp_path, no_md5):
    from scipy.io import savemat

    base = tmp_path / "flowers-102"
    labels = np.array([3, 1, 102, 3, 1, 2, 2])  # 1-based, image_00001 .. image_00007
    for i, _ in enumerate(labels, 1):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", i * 20)
    savemat(base / "imagelabels.mat", {"labels": labels[None]})
    savemat(
        base / "setid.mat", {"trnid": np.array([[2, 5]]), "valid": np.array([[1, 6]]), "tstid": np.array([[7, 3, 4]])}
    )
    src = get_dataset("flowers102", tmp_path)
    train, test = src.split("train"), src.split("test")
    assert train.labels.tolist() == [0, 0, 2, 1] and test.labels.tolist() == [1, 101, 2]
    assert len(train.classes) == 102 and train.classes == list(tvd.Flowers102.classes)
    parts = [tvd.Flowers102(str(tmp_path), split=s) for s in ("train", "val")]
    assert train.labels.tolist() == [y for p in parts for y in p._labels]
    assert [Path(f).name for f in train.files] == [f.name for p in parts for f in p._image_files]
    # image_00007 (JPEG, quality 75): a flat block's DC step of 8 moves a pixel <= 0.5 level, the
    # YCbCr -> RGB rounding <= 1 more.
    assert abs(int(np.asarray(test[0][0])[0, 0, 0]) - 140) <= 2
