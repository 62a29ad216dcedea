"""Image-text corpora: caption tables and webdataset shards, the shard index, and their errors."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import isolated_data_home

from benchmark.data import clear_cache, get_dataset, image_text, list_datasets, tar_index, train_val_split
from benchmark.data.image_text import UNLABELLED, CaptionTableSplit, ShardSplit
from benchmark.data.tar_index import CorruptShardError
from benchmark.errors import DatasetUnavailable

data_home = pytest.fixture(scope="module", autouse=True)(isolated_data_home)

N = 7
CAPTIONS = [f'caption {i}: a "quoted"\tword, NA' if i == 3 else f"a photo number {i}" for i in range(N)]
LABELS = [2, 0, 1, 2, 1, 0, 2]


def _image_file(i: int) -> bytes:
    buf = io.BytesIO()
    fmt = "PNG" if i % 3 == 0 else "JPEG"
    Image.fromarray(np.full((4 + i, 6, 3), 30 * i, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


FILES = [_image_file(i) for i in range(N)]


def _ext(i: int) -> str:
    return "png" if i % 3 == 0 else "jpg"


def _write_shards(folder: Path, rows: list[list[int]], labels: bool = False, extra: bool = True) -> list[Path]:
    """Shards ``folder/shards/0000k.tar`` holding the samples in ``rows[k]``, written with tarfile."""
    out = []
    for k, part in enumerate(rows):
        path = folder / "shards" / f"{k:05d}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tar:
            for i in part:
                members = [(f"sub/{i:06d}.{_ext(i)}", FILES[i]), (f"sub/{i:06d}.txt", CAPTIONS[i].encode())]
                if labels:
                    members.append((f"sub/{i:06d}.cls", f"{LABELS[i]}\n".encode()))
                if extra:
                    members.append((f"sub/{i:06d}.json", b"{}"))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        out.append(path)
    return out


def _write_table(folder: Path, name: str, labels: bool = False) -> Path:
    import pandas as pd

    for i in range(N):
        (folder / "img").mkdir(parents=True, exist_ok=True)
        (folder / "img" / f"{i}.{_ext(i)}").write_bytes(FILES[i])
    cols = {"title": CAPTIONS, "filepath": [f"img/{i}.{_ext(i)}" for i in range(N)]}
    if labels:
        cols["label"] = LABELS
    table = folder / f"{name}.tsv"
    pd.DataFrame(cols).to_csv(table, sep="\t", index=False)
    return table


@pytest.fixture()
def both(tmp_path):
    """The same seven pairs as yfcc15m shards under one root and a yfcc15m table under another."""
    shards_root, table_root = tmp_path / "a", tmp_path / "b"
    _write_shards(shards_root / "yfcc15m", [[0, 1, 2], [3], [4, 5, 6]])
    _write_table(table_root / "yfcc15m", "yfcc15m")
    clear_cache()
    return shards_root, table_root


def test_table_and_shards_give_identical_bytes_captions_and_pixels(both):
    shards = get_dataset("yfcc15m", both[0]).split("train")
    table = get_dataset("yfcc15m", both[1]).split("train")
    assert isinstance(shards, ShardSplit) and isinstance(table, CaptionTableSplit)
    assert len(shards) == len(table) == N
    assert shards.captions == table.captions == CAPTIONS  # quotes, tabs and "NA" survive the table
    for i in range(N):
        assert shards.image_bytes(i) == table.image_bytes(i) == FILES[i]
        (a, ya), (b, yb) = shards[i], table[i]
        assert a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b)) and ya == yb == UNLABELLED
    # Unlabelled: no classes, every label -1; a stratified split is then a seeded random one.
    assert shards.classes == [] == table.classes and not shards.labelled
    assert shards.labels.tolist() == [UNLABELLED] * N
    train, val = train_val_split(shards, 0.3, seed=0)
    assert len(val) == 2 and val.captions == [CAPTIONS[i] for i in val.indices]
    assert shards.fingerprint.startswith("yfcc15m/train/vwds1-")
    assert table.fingerprint.startswith("yfcc15m/train/vcsv1-")


def test_labels_and_class_names_from_cls_members_or_label_column(tmp_path):
    _write_shards(tmp_path / "a" / "cc12m", [[0, 1, 2, 3], [4, 5, 6]], labels=True)
    _write_table(tmp_path / "b" / "cc12m", "cc12m", labels=True)
    for folder in (tmp_path / "a" / "cc12m", tmp_path / "b" / "cc12m"):
        (folder / "classes.txt").write_text("cat\ndog\nbird\n")
    for root in (tmp_path / "a", tmp_path / "b"):
        split = get_dataset("cc12m", root).split("train")
        assert split.classes == ["cat", "dog", "bird"] and split.labels.tolist() == LABELS
        assert [split[i][1] for i in range(N)] == LABELS
        sub = split.subset([6, 1])
        assert sub.captions == [CAPTIONS[6], CAPTIONS[1]] and sub.labels.tolist() == [2, 0]
    (tmp_path / "b" / "cc12m" / "classes.txt").write_text("cat\ndog\n")
    clear_cache()
    with pytest.raises(DatasetUnavailable, match="do not fit the 2 names"):
        get_dataset("cc12m", tmp_path / "b").split("train")


def test_shard_index_is_built_once_per_shard_then_read_from_its_cache(tmp_path, monkeypatch):
    shards = _write_shards(tmp_path / "yfcc15m", [[0, 1], [2, 3, 4], [5, 6]])
    built = []
    real_build = tar_index.build_shard_index
    monkeypatch.setattr(tar_index, "build_shard_index", lambda p: built.append(p.name) or real_build(p))
    first = get_dataset("yfcc15m", tmp_path).split("train")
    assert sorted(built) == ["00000.tar", "00001.tar", "00002.tar"]
    assert sorted(p.name for p in (tmp_path / "yfcc15m" / "shards" / ".nmlbench-index").iterdir()) == [
        "00000.tar.json",
        "00001.tar.json",
        "00002.tar.json",
    ]
    clear_cache()  # a new process would start here: the cached indexes are read, no shard is walked
    again = get_dataset("yfcc15m", tmp_path).split("train")
    assert len(built) == 3 and again.captions == first.captions
    assert np.array_equal(again.image_offset, first.image_offset)
    # A rewritten shard (new size / mtime) is indexed again; the others are not.
    _write_shards(tmp_path / "other", [[2, 3]])
    shards[1].write_bytes((tmp_path / "other" / "shards" / "00000.tar").read_bytes())
    clear_cache()
    third = get_dataset("yfcc15m", tmp_path).split("train")
    assert built[3:] == ["00001.tar"] and len(third) == 6


def test_one_item_reads_only_its_own_bytes(tmp_path, monkeypatch):
    _write_shards(tmp_path / "yfcc15m", [[0, 1, 2, 3, 4, 5, 6]])
    split = get_dataset("yfcc15m", tmp_path).split("train")
    reads = []
    real_read = image_text.read_range
    monkeypatch.setattr(image_text, "read_range", lambda p, o, s: reads.append((o, s)) or real_read(p, o, s))
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("item access must not open the tar"))
    image, _ = split[5]
    assert reads == [(int(split.image_offset[5]), len(FILES[5]))]
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(FILES[5])).convert("RGB")))


def test_index_goes_to_the_cache_folder_when_the_shard_folder_is_read_only(tmp_path, monkeypatch, data_home):
    _write_shards(tmp_path / "yfcc15m", [[0, 1]])
    real_write = tar_index.atomic_write_json

    def refuse_data_root(path, obj):
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(f"read-only: {path}")
        return real_write(path, obj)

    monkeypatch.setattr(tar_index, "atomic_write_json", refuse_data_root)
    assert len(get_dataset("yfcc15m", tmp_path).split("train")) == 2
    cached = list((data_home / "shard-index").rglob("00000.tar.json"))
    assert len(cached) == 1 and not (tmp_path / "yfcc15m" / "shards" / ".nmlbench-index").exists()
    index = tar_index.load_shard_index(tmp_path / "yfcc15m" / "shards" / "00000.tar")
    assert index.keys == ["sub/000000", "sub/000001"]


def test_samples_without_image_or_caption_are_skipped_and_counted(tmp_path):
    path = tmp_path / "yfcc15m" / "shards" / "00000.tar"
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("a.jpg", FILES[1]),
            ("a.txt", b"kept"),
            ("b.txt", b"no image"),
            ("c.png", FILES[0]),
            ("d.seg.png", FILES[3]),
            ("d.txt", b"two-dot extension: key d"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index = tar_index.build_shard_index(path)
    assert index.keys == ["a"] and index.captions == ["kept"] and index.skipped == 3


@pytest.mark.parametrize("cut", ["end-blocks", "mid-member", "header", "garbage"])
def test_truncated_or_corrupt_shard_names_the_shard_and_the_fix(tmp_path, cut):
    (shard,) = _write_shards(tmp_path / "yfcc15m", [[0, 1, 2]])
    raw = shard.read_bytes()
    last = tar_index._members(shard)[0][-1][1]["txt"]  # the last caption member: (offset, size)
    kept = {"end-blocks": last[0] + 512, "mid-member": last[0] + 3, "header": last[0] - 512 + 100, "garbage": 0}[cut]
    shard.write_bytes(raw[:kept] if cut != "garbage" else b"this is not a tar file at all" * 40)
    with pytest.raises(CorruptShardError) as err:
        get_dataset("yfcc15m", tmp_path).split("train")
    msg = str(err.value)
    assert str(shard) in msg and "truncated or corrupt" in msg and "re-download" in msg
    assert isinstance(err.value, DatasetUnavailable)


def test_a_shard_cut_after_indexing_fails_on_read_naming_the_shard(tmp_path):
    (shard,) = _write_shards(tmp_path / "yfcc15m", [[0, 1, 2]])
    split = get_dataset("yfcc15m", tmp_path).split("train")
    shard.write_bytes(shard.read_bytes()[: int(split.image_offset[2]) + 5])
    with pytest.raises(CorruptShardError, match="00000.tar"):
        split[2]


def test_splits_pickle_as_paths_offsets_and_captions(both):
    for root in both:
        split = get_dataset("yfcc15m", root).split("train").subset([4, 0, 2])
        blob = pickle.dumps(split)
        assert len(blob) < 2000 and FILES[4] not in blob
        again = pickle.loads(blob)
        assert again.captions == split.captions and again.image_bytes(0) == FILES[4]


def test_table_errors_name_the_columns_and_the_missing_file(tmp_path):
    folder = tmp_path / "cc12m"
    folder.mkdir()
    (folder / "cc12m.tsv").write_text("url\tcaption\nhttp://x/1.jpg\thello\n")
    with pytest.raises(DatasetUnavailable) as err:
        get_dataset("cc12m", tmp_path).split("train")
    assert "'filepath', 'title'" in str(err.value) and "'url', 'caption'" in str(err.value)
    (folder / "cc12m.tsv").write_text("filepath\ttitle\nimg/none.jpg\thello\n")
    clear_cache()
    with pytest.raises(DatasetUnavailable, match=r"lists .*img/none.jpg, which does not exist"):
        get_dataset("cc12m", tmp_path).split("train")


def test_empty_corpus_folder_and_listing(tmp_path):
    (tmp_path / "cc12m").mkdir()
    with pytest.raises(DatasetUnavailable, match="holds neither shards/\\*.tar nor cc12m.tsv"):
        get_dataset("cc12m", tmp_path).split("train")
    rows = {s.name: s for s in list_datasets(tmp_path)}
    assert rows["cc12m"].available and not rows["yfcc15m"].available
    assert "yfcc15m/shards/{00000..N}.tar" in rows["yfcc15m"].how_to_get
    assert rows["yfcc15m"].sizes == {"train": 14829396}


def test_other_separators_and_column_names_through_an_entry_of_their_own(tmp_path):
    from benchmark.data.image_text import TableFormat, image_text_spec
    from benchmark.data.real import load_real_splits

    folder = tmp_path / "mine"
    _write_table(folder, "unused")
    rows = [
        f"{folder}/img/{i}.{_ext(i)};{CAPTIONS[i].replace(';', ',')};{LABELS[i]}"
        for i in range(N)
        if "\t" not in CAPTIONS[i]
    ]
    (folder / "mine.csv").write_text("image;caption;cls\n" + "\n".join(rows) + "\n")
    spec = image_text_spec(
        "mine",
        0,
        "a private corpus",
        "by hand",
        TableFormat(separator=";", image_column="image", caption_column="caption", label_column="cls"),
    )
    assert "columns image, caption[, cls]" in spec.layout
    split = load_real_splits(spec, tmp_path)["train"]
    assert len(split) == N - 1 and split.labels.tolist() == [y for i, y in enumerate(LABELS) if i != 3]
    assert split.image_bytes(3) == FILES[4] and split.classes == ["class-0", "class-1", "class-2"]
