"""Image-text corpora (the paper's CLIP pre-training data) in the two formats open_clip reads.

An entry ``<name>`` reads ``<root>/<name>/`` in whichever format is there (shards win when both are):

- webdataset: ``<root>/<name>/shards/*.tar`` (e.g. ``00000.tar`` ...), sorted by name; per sample
  ``<key>.jpg|jpeg|png|webp`` and ``<key>.txt`` (the caption, UTF-8) under one key, optionally
  ``<key>.cls`` (an integer label). Read through a per-shard member index (``tar_index``).
- caption table: ``<root>/<name>/<name>.tsv`` (tab-separated) or ``<name>.csv`` (comma) with a
  header row, an image-path column (default ``filepath``, relative to the table's folder unless
  absolute) and a caption column (default ``title``): open_clip's ``--csv-img-key`` /
  ``--csv-caption-key`` defaults. An optional ``label`` column holds integer labels. Another
  separator or other column names: an entry made with ``image_text_spec(..., table=TableFormat(...))``.

Splits are ``ImageSplit``s (so the feature cache and samplers work on them) with one extra
attribute, ``captions: list[str]`` (this view's captions, read without decoding any image), and
``image_bytes(i)`` (the encoded file, as stored). Class names, when the corpus is labelled, come
from ``<root>/<name>/classes.txt`` (one per line; ``class-<i>`` stand in without it).

Unlabelled corpora (YFCC15M and CC12M as published) have ``classes == []`` and every label
``UNLABELLED`` (-1): samplers then see a single stratum (a stratified split is a seeded random
split), label-noise injection does not apply (caption swaps do), and such a corpus cannot be a
downstream classification task. Only a ``train`` split exists.

Splits pickle as paths, offsets and captions, never as pixels, so a loader in another process
(DataLoader workers, Ray Train workers) opens them cheaply.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.base import ImageSplit
from benchmark.data.spec import RealSpec, require
from benchmark.data.tar_index import load_shard_index, read_range, shard_files
from benchmark.errors import DatasetUnavailable
from benchmark.hashing import config_hash

UNLABELLED = -1
IMAGE_COLUMN, CAPTION_COLUMN, LABEL_COLUMN = "filepath", "title", "label"


@dataclass(frozen=True)
class TableFormat:
    """How a corpus's caption table is laid out (open_clip's defaults); ``separator`` None: a tab
    for ``.tsv``, a comma otherwise."""

    separator: str | None = None
    image_column: str = IMAGE_COLUMN
    caption_column: str = CAPTION_COLUMN
    label_column: str = LABEL_COLUMN


class ImageTextSplit(ImageSplit):
    """A split of (image, caption[, label]) pairs. Subclasses implement ``_read_bytes(raw_index)``."""

    def __init__(
        self,
        dataset: str,
        split: str,
        classes: Sequence[str],
        labels: np.ndarray,
        captions: Sequence[str],
        version: str,
    ) -> None:
        super().__init__(dataset, split, classes, labels, version=version)
        if len(captions) != len(self._all_labels):
            raise ValueError(f"{dataset}/{split}: {len(captions)} captions but {len(self._all_labels)} labels")
        self._all_captions = list(captions)

    @property
    def captions(self) -> list[str]:
        """The captions of this view, in item order."""
        if self.indices is None:
            return list(self._all_captions)
        return [self._all_captions[i] for i in self.indices.tolist()]

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def image_bytes(self, i: int) -> bytes:
        """Item i's image file exactly as stored (JPEG / PNG bytes)."""
        return self._read_bytes(self._raw_index(i))

    def _read_bytes(self, raw_index: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, raw_index: int) -> Image.Image:
        with Image.open(io.BytesIO(self._read_bytes(raw_index))) as img:
            return img.convert("RGB")


class CaptionTableSplit(ImageTextSplit):
    """Pairs listed by a CSV/TSV caption table: one image file per row."""

    def __init__(
        self,
        dataset: str,
        split: str,
        classes: Sequence[str],
        files: Sequence[str | Path],
        labels: np.ndarray,
        captions: Sequence[str],
        version: str,
    ) -> None:
        super().__init__(dataset, split, classes, labels, captions, version)
        self.files = [str(f) for f in files]

    def _read_bytes(self, raw_index: int) -> bytes:
        return Path(self.files[raw_index]).read_bytes()


class ShardSplit(ImageTextSplit):
    """Pairs stored in webdataset tar shards: item i is one seek and read in its shard."""

    def __init__(
        self,
        dataset: str,
        split: str,
        classes: Sequence[str],
        shards: Sequence[str | Path],
        sample_shard: np.ndarray,
        image_offset: np.ndarray,
        image_size: np.ndarray,
        labels: np.ndarray,
        captions: Sequence[str],
        version: str,
    ) -> None:
        super().__init__(dataset, split, classes, labels, captions, version)
        self.shards = [str(s) for s in shards]
        self.sample_shard = np.asarray(sample_shard, dtype=np.int32)
        self.image_offset = np.asarray(image_offset, dtype=np.int64)
        self.image_size = np.asarray(image_size, dtype=np.int64)

    def _read_bytes(self, raw_index: int) -> bytes:
        return read_range(
            self.shards[int(self.sample_shard[raw_index])],
            int(self.image_offset[raw_index]),
            int(self.image_size[raw_index]),
        )


def _classes(folder: Path, labels: np.ndarray | None) -> list[str]:
    if labels is None:
        return []
    names_file = folder / "classes.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    else:
        names = [f"class-{i}" for i in range(int(labels.max(initial=-1)) + 1)]
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise DatasetUnavailable(
            f"{folder}: labels {labels.min()}..{labels.max()} do not fit the "
            f"{len(names)} names of {names_file}; fix classes.txt or the labels"
        )
    return names


def read_caption_table(
    path: Path,
    separator: str | None = None,
    image_column: str = IMAGE_COLUMN,
    caption_column: str = CAPTION_COLUMN,
    label_column: str = LABEL_COLUMN,
) -> tuple[list[Path], list[str], np.ndarray | None]:
    """(image paths, captions, labels or None) of a CSV/TSV table, paths resolved against its folder.

    ``separator`` defaults to a tab for ``.tsv`` and a comma otherwise. Every cell is read as
    text (a caption "NA" stays "NA"); the label column is used only when the header has it.
    """
    import pandas as pd

    sep = separator or ("\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as exc:  # pandas' ParserError is a ValueError
        raise DatasetUnavailable(
            f"{path}: cannot be read as a {sep!r}-separated table ({exc}); fix the file or its separator"
        ) from exc
    missing = [c for c in (image_column, caption_column) if c not in table.columns]
    if missing:
        raise DatasetUnavailable(
            f"{path}: no column {', '.join(map(repr, missing))} in its header (it has "
            f"{', '.join(map(repr, table.columns))}); rename the image-path column to "
            f"{image_column!r} and the caption column to {caption_column!r}"
        )
    base = path.parent
    files = [p if p.is_absolute() else base / p for p in map(Path, table[image_column].tolist())]
    labels = None
    if label_column in table.columns:
        try:
            labels = table[label_column].astype(np.int64).to_numpy()
        except ValueError as exc:
            raise DatasetUnavailable(f"{path}: column {label_column!r} must hold integers ({exc})") from exc
    return files, table[caption_column].tolist(), labels


def _load_table(spec: RealSpec, table: Path, fmt: TableFormat) -> ImageTextSplit:
    files, captions, labels = read_caption_table(
        table, fmt.separator, fmt.image_column, fmt.caption_column, fmt.label_column
    )
    # The first and last rows only: a wrong base folder shows there, and a corpus of millions of
    # files is not stat-ed one by one on every load.
    absent = next((f for f in files[:1] + files[-1:] if not f.is_file()), None)
    if absent is not None:
        raise DatasetUnavailable(
            f"{spec.name}: {table} lists {absent}, which does not exist; image paths are "
            f"relative to the table's folder. Expected layout: {spec.layout}"
        )
    classes = _classes(table.parent, labels)
    version = f"csv1-{config_hash([table.name, table.stat().st_size, len(files)], 8)}"
    return CaptionTableSplit(
        spec.name,
        "train",
        classes,
        files,
        np.full(len(files), UNLABELLED) if labels is None else labels,
        captions,
        version,
    )


def _load_shards(spec: RealSpec, shards: list[Path]) -> ImageTextSplit:
    indexes = [load_shard_index(s) for s in shards]
    has_labels = {ix.labels is not None for ix in indexes if ix.keys}
    if len(has_labels) > 1:
        raise DatasetUnavailable(
            f"{spec.name}: some shards in {shards[0].parent} carry .cls labels and some do not; all or none must"
        )
    labelled = has_labels == {True}
    labels = (
        np.concatenate([ix.labels for ix in indexes if ix.keys])
        if labelled
        else np.full(sum(len(ix.keys) for ix in indexes), UNLABELLED)
    )
    version = f"wds1-{config_hash([[ix.shard, ix.size, len(ix.keys)] for ix in indexes], 8)}"
    return ShardSplit(
        spec.name,
        "train",
        _classes(shards[0].parent.parent, labels if labelled else None),
        shards,
        _joined([np.full(len(ix.keys), k) for k, ix in enumerate(indexes)]),
        _joined([ix.image_offset for ix in indexes]),
        _joined([ix.image_size for ix in indexes]),
        labels,
        [c for ix in indexes for c in ix.captions],
        version,
    )


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate`` of ``parts``, or an empty array where there are none (as ``[[]]`` gave)."""
    return np.concatenate(parts or [np.zeros(0)])


def corpus_format(folder: Path, name: str) -> tuple[str, Path | list[Path]] | None:
    """("webdataset", shards) or ("table", path) for a corpus folder, or None when neither is there."""
    shards_dir = folder / "shards"
    if shards_dir.is_dir():
        shards = shard_files(shards_dir)
        if shards:
            return "webdataset", shards
    for suffix in (".tsv", ".csv"):
        if (folder / f"{name}{suffix}").is_file():
            return "table", folder / f"{name}{suffix}"
    return None


def _build_image_text(root: Path, spec: RealSpec, table: TableFormat = TableFormat()) -> dict[str, ImageSplit]:
    require(spec, root)
    found = corpus_format(root / spec.marker, spec.name)
    if found is None:
        raise DatasetUnavailable(
            f"{spec.name}: {root / spec.marker} holds neither shards/*.tar nor "
            f"{spec.name}.tsv / .csv. Expected layout: {spec.layout_text(root)}. "
            f"To get it: {spec.how_to_get_text(root)}"
        )
    kind, where = found
    if kind == "webdataset":
        split = _load_shards(spec, where if isinstance(where, list) else [where])
    else:
        split = _load_table(spec, where if isinstance(where, Path) else where[0], table)
    return {"train": split}


def image_text_spec(
    name: str, size: int, description: str, how_to_get: str, table: TableFormat = TableFormat()
) -> RealSpec:
    """A registry entry for an image-text corpus read from ``<root>/<name>/`` in either format;
    ``table`` names the separator and columns of its caption table."""
    layout = (
        f"<root>/{name}/shards/{{00000..N}}.tar (webdataset: per sample <key>.jpg|png + <key>.txt, "
        f"optionally <key>.cls) or <root>/{name}/{name}.tsv|.csv (header with columns "
        f"{table.image_column}, {table.caption_column}[, {table.label_column}]; image paths relative to "
        f"the table) plus the image files; optional <root>/{name}/classes.txt"
    )
    return RealSpec(
        name=name,
        num_classes=0,
        domain="web image-text",
        source="image-text",
        marker=name,
        layout=layout,
        sizes={"train": size},
        splits=("train",),
        how_to_get=how_to_get,
        description=description,
        builder=functools.partial(_build_image_text, table=table),
    )


IMAGE_TEXT_SPECS: dict[str, RealSpec] = {
    s.name: s
    for s in (
        image_text_spec(
            "yfcc15m",
            14829396,
            "YFCC100M subset with English titles/descriptions (CLIP's filter)",
            "download the YFCC15M subset list (photo ids with titles and descriptions) and fetch the "
            "images with img2dataset --output_format webdataset into <DIR>/yfcc15m/shards, or as files "
            "listed in <DIR>/yfcc15m/yfcc15m.tsv (columns filepath, title)",
        ),
        image_text_spec(
            "cc12m",
            12423374,
            "Conceptual 12M image-alt-text pairs",
            "download cc12m.tsv (url, caption) from the Conceptual 12M release and fetch the images with "
            "img2dataset --output_format webdataset into <DIR>/cc12m/shards, or as files listed in "
            "<DIR>/cc12m/cc12m.tsv (columns filepath, title)",
        ),
    )
}
