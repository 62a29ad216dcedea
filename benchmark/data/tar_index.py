"""Random access into webdataset tar shards through a member index built once per shard.

A webdataset shard is a plain (uncompressed) tar whose members are grouped into samples by key:
``<key>.jpg`` (or png / jpeg / webp), ``<key>.txt`` (the caption) and optionally ``<key>.cls``
(an integer class label) under the same key; the key is the member path up to the first dot of
its file name. Streaming readers walk a shard front to back; a map-style ``Dataset`` (feature
cache, samplers, DataLoader with a DistributedSampler) needs item i without reading what comes
before it. So each shard is walked once (tar headers only, plus the small caption members) into
an index of (key, image offset, image size, caption, label), which is saved as JSON beside the
shards (``<shards>/.nmlbench-index/<shard>.json``) or, where that folder is read-only, under
``$NMLBENCH_DATA_HOME/shard-index/``. The index records the shard's size and mtime and is
rebuilt when either changes. One image is then one seek and one read of its own bytes.

A shard that is truncated (a member running past the end of the file, which tarfile reports, or
no end-of-archive blocks after the last member, which it does not) or not a tar raises
``CorruptShardError`` naming the shard and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.atomic import atomic_write_json
from benchmark.errors import DatasetUnavailable

INDEX_VERSION = 1
#: Image extensions a sample may carry, in the order one is picked when a sample has several.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"
LABEL_EXT = "cls"
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # key = path up to the first dot of the file name
_BLOCK = 512


class CorruptShardError(DatasetUnavailable):
    """A tar shard cannot be indexed or read; the message names the shard and the fix."""


def _corrupt(shard: Path, problem: str) -> CorruptShardError:
    return CorruptShardError(
        f"webdataset shard {shard} is truncated or corrupt: {problem}. Re-create or re-download this "
        f"shard (e.g. re-run img2dataset for it), or move it out of {shard.parent} to go on without "
        f"its samples; its cached index, if any, is rebuilt on the next load"
    )


@dataclass
class ShardIndex:
    """The samples of one shard: member locations of their images, their captions and labels."""

    shard: str
    size: int
    mtime_ns: int
    keys: list[str]
    image_offset: np.ndarray  # int64 [n], byte offset of the image member's data
    image_size: np.ndarray  # int64 [n]
    image_ext: list[str]
    captions: list[str]
    labels: np.ndarray | None  # int64 [n], or None when the shard has no .cls members
    skipped: int  # samples lacking an image or a caption (webdataset loaders drop them too)

    def to_json(self) -> dict:
        return {
            "version": INDEX_VERSION,
            "shard": self.shard,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "keys": self.keys,
            "image_offset": self.image_offset.tolist(),
            "image_size": self.image_size.tolist(),
            "image_ext": self.image_ext,
            "captions": self.captions,
            "labels": None if self.labels is None else self.labels.tolist(),
            "skipped": self.skipped,
        }

    @classmethod
    def from_json(cls, d: dict) -> ShardIndex:
        return cls(
            d["shard"],
            int(d["size"]),
            int(d["mtime_ns"]),
            list(d["keys"]),
            np.asarray(d["image_offset"], dtype=np.int64),
            np.asarray(d["image_size"], dtype=np.int64),
            list(d["image_ext"]),
            list(d["captions"]),
            None if d["labels"] is None else np.asarray(d["labels"], dtype=np.int64),
            int(d["skipped"]),
        )


def read_range(path: str | Path, offset: int, size: int) -> bytes:
    """``size`` bytes of ``path`` from ``offset``: the only way sample bytes are read."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise _corrupt(Path(path), f"{size} bytes expected at offset {offset}, the file ends after {len(data)}")
    return data


def _members(shard: Path) -> tuple[list[tuple[str, dict[str, tuple[int, int]]]], int]:
    """Samples as (key, {ext: (data offset, size)}) in tar order, and the end-of-members offset."""
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for m in tar:  # headers only: tarfile seeks over member data
                match = _KEY_EXT.match(m.name) if m.isfile() else None
                if match is None:
                    continue
                key, ext = match.group(1), match.group(2).lower()
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][ext] = (m.offset_data, m.size)
            end = tar.offset
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _corrupt(shard, f"{type(exc).__name__}: {exc}") from exc
    return samples, end


def build_shard_index(shard: Path) -> ShardIndex:
    """Walk one shard (headers and caption members) into its index."""
    st = shard.stat()
    samples, end = _members(shard)
    with open(shard, "rb") as f:
        f.seek(end)
        if f.read(_BLOCK) != bytes(_BLOCK):  # tar ends with zero blocks; a cut file does not
            raise _corrupt(shard, f"no end-of-archive block after the last member (offset {end})")
        keys, offsets, sizes, exts_used, captions, labels = [], [], [], [], [], []
        skipped = 0
        for key, exts in samples:
            image = next((e for e in IMAGE_EXTS if e in exts), None)
            if image is None or CAPTION_EXT not in exts:
                skipped += 1
                continue
            f.seek(exts[CAPTION_EXT][0])
            captions.append(f.read(exts[CAPTION_EXT][1]).decode("utf-8"))
            if LABEL_EXT in exts:
                f.seek(exts[LABEL_EXT][0])
                labels.append(int(f.read(exts[LABEL_EXT][1]).decode("ascii").strip()))
            keys.append(key)
            offsets.append(exts[image][0])
            sizes.append(exts[image][1])
            exts_used.append(image)
    if labels and len(labels) != len(keys):
        raise _corrupt(shard, f"{len(labels)} of {len(keys)} samples carry a .{LABEL_EXT} label; all or none must")
    return ShardIndex(
        shard.name,
        st.st_size,
        st.st_mtime_ns,
        keys,
        np.asarray(offsets, dtype=np.int64),
        np.asarray(sizes, dtype=np.int64),
        exts_used,
        captions,
        np.asarray(labels, dtype=np.int64) if labels else None,
        skipped,
    )


def index_paths(shard: Path) -> list[Path]:
    """Where a shard's index may live: beside the shards, then in the user's cache folder."""
    from benchmark.data.embedded import data_home

    folder_digest = hashlib.sha256(str(shard.parent.resolve()).encode()).hexdigest()[:16]
    return [
        shard.parent / ".nmlbench-index" / f"{shard.name}.json",
        data_home() / "shard-index" / folder_digest / f"{shard.name}.json",
    ]


def _cached(path: Path, shard: Path) -> ShardIndex | None:
    try:
        d = json.loads(path.read_text())
        st = shard.stat()
        if d.get("version") == INDEX_VERSION and d["size"] == st.st_size and d["mtime_ns"] == st.st_mtime_ns:
            return ShardIndex.from_json(d)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, stale or unreadable: rebuilt below
    return None


def load_shard_index(shard: Path) -> ShardIndex:
    """The shard's index: from its cache file when it matches the shard, else built and cached."""
    places = index_paths(shard)
    for path in places:
        if path.is_file():
            index = _cached(path, shard)
            if index is not None:
                return index
    index = build_shard_index(shard)
    for path in places:
        try:
            atomic_write_json(path, index.to_json())
            break
        except OSError:
            continue  # read-only data root: try the cache folder
    return index


def shard_files(folder: Path) -> list[Path]:
    """The ``*.tar`` shards of a folder, sorted by name (the sample order of the corpus)."""
    with os.scandir(folder) as it:
        return sorted(folder / e.name for e in it if e.is_file() and e.name.endswith(".tar"))
