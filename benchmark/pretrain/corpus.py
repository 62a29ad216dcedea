"""The driver's half of pre-training: which samples a job trains on, their noise, and its record.

The corpus itself never passes through the driver: a job's training set is a *reference* to
its images (data set, data root, subset indices; every worker re-opens it and streams its own
shard, ``inputs.py``) plus a *label table*, one small row per sample: the target (the noisy
label, or for CLIP the index of the caption the image is paired with), the true label, and
whether that sample's label was flipped or its caption swapped. Noise is drawn here, on that
table, seeded, once per job and *before* training starts, and written to ``noise.npz`` +
``noise.json``: the labels a model saw are on disk even if training later fails, and they cannot
depend on how many workers train. No torch and no Ray here (instance-dependent noise on a
file-backed corpus streams its per-sample features through ``inputs.instance_features``).

Captions: a corpus with its own caption table (an image-text set: ``split.captions``) pairs each
image with its caption; a labelled corpus without one gets class-template captions
(``benchmark.captions``). Caption swaps act on that table: the record keeps, per image, the
index of the caption it trains with (``caption_source``), so a 15-million-pair corpus is never
copied into the record; template captions are short and are kept as text too.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.atomic import atomic_write, atomic_write_json
from benchmark.errors import ConfigError
from benchmark.pretrain.job import PretrainJob

#: Thumbnail side (pixels) of the per-sample features that instance-dependent noise draws its
#: flip directions from, on corpora of image files (array corpora use their raw pixels).
INSTANCE_FEATURE_SIZE = 8


@dataclass(frozen=True)
class CorpusRef:
    """Where the training images live: every worker re-opens the split from this (cheap: a
    file list or an in-package array), so no image crosses the driver or the object store."""

    name: str
    data_root: str | None
    indices: np.ndarray | None  # positions in the corpus' train split; None: all of it

    def open(self) -> Any:
        """The training split (an ``ImageSplit``) in this process."""
        from benchmark.data import get_dataset

        split = get_dataset(self.name, self.data_root).split("train")
        return split if self.indices is None else split.subset(self.indices)


@dataclass
class LabelTable:
    """One row per training sample, in training-set order (small: it goes to every worker).

    ``targets``: the noisy label (supervised) or the index of the caption the image trains with
    (clip); ``clean``: the true label (-1 where a corpus is unlabelled); ``noisy``: the label was
    flipped or the caption swapped (the memorisation metrics split on it).
    """

    targets: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])


@dataclass
class TrainingSet:
    """A job's training set: where its images are, its label table and its noise record."""

    corpus: CorpusRef
    labels: LabelTable
    classes: list[str]
    realised_ratio: float
    record: dict[str, np.ndarray]
    summary: dict[str, Any]
    has_caption_table: bool = False  # clip: the corpus' own captions (else class templates)

    @property
    def indices(self) -> np.ndarray:
        return self.record["indices"]

    def __len__(self) -> int:
        return len(self.labels)


def subset_indices(n: int, train_subset: int | None, seed: int) -> np.ndarray:
    """Sorted first-``train_subset`` items of a seeded shuffle of ``range(n)`` (all if None).

    The generator is seeded from (seed, "subset") so the subset draw never shares a stream with
    the noise draw, which uses ``seed`` itself.
    """
    if train_subset is None or int(train_subset) >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 0x5B5E7])
    return np.sort(rng.permutation(n)[: int(train_subset)]).astype(np.int64)


def array_images(split: Any) -> np.ndarray:
    """An in-memory split's images as ``uint8 [N, C, H, W]`` (C = 1 grey or 3 colour).

    Only for splits that hold arrays (``split.arrays()``): the small embedded corpora, which a
    worker keeps whole in memory (on its device when it fits) instead of decoding per sample.
    """
    images, _ = split.arrays()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ConfigError(f"{split!r}: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        return np.ascontiguousarray(images[:, None])
    if images.ndim == 4 and images.shape[-1] == 3:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise ConfigError(f"{split!r}: arrays must be (N, H, W) or (N, H, W, 3), got {images.shape}")


def clean_captions(split: Any, clean: np.ndarray, classes: list[str], seed: int) -> list[str]:
    """The caption of every image before noise: the corpus' caption table, or class templates.

    The driver draws the swaps on this list and every worker rebuilds it the same way.
    """
    captions = getattr(split, "captions", None)
    if captions is not None:
        return list(captions)
    if not classes or (clean < 0).any():
        raise ConfigError(
            f"{split!r} has neither captions nor class labels to make captions "
            "from; CLIP pre-training needs one of them"
        )
    from benchmark.captions import class_captions

    return class_captions(clean, classes, seed=seed)


def caption_sources(clean_texts: list[str], noisy_texts: list[str], mismatched: np.ndarray) -> np.ndarray:
    """Per image, the index of a sample whose clean caption is the text it now trains with.

    ``swap_captions`` permutes texts among the mismatched pairs, so each of them takes the index
    of one (distinct) mismatched pair holding that text; the others keep their own index.
    """
    source = np.arange(len(clean_texts), dtype=np.int64)
    chosen = np.flatnonzero(mismatched)
    holders: dict[str, list[int]] = defaultdict(list)
    for j in chosen.tolist():
        holders[clean_texts[j]].append(j)
    for i in chosen.tolist():
        source[i] = holders[noisy_texts[i]].pop()
    return source


def _npz_fields(write: Any) -> dict[str, np.ndarray]:
    """Arrays that ``write(file)`` would save with ``np.savez*``, as a dict (to merge extras)."""
    buf = io.BytesIO()
    write(buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _instance_features(split: Any, job: PretrainJob) -> np.ndarray:
    """Per-sample features for instance-dependent noise: raw pixels of an array corpus (as the
    noise has always been drawn there), or small thumbnails streamed from a file corpus."""
    if hasattr(split, "arrays"):
        images = array_images(split)
        return images.reshape(len(images), -1).astype(np.float32) / 255.0
    from benchmark.pretrain.inputs import instance_features

    return instance_features(split, INSTANCE_FEATURE_SIZE, job.loader_processes)


def build_training_set(job: PretrainJob) -> TrainingSet:
    """The job's corpus subset and label table with its seeded noise (no image decoded, except
    thumbnails for instance-dependent noise on a file corpus).

    The subset is drawn here; the noise and its record are the objective's
    (``objectives.<name>.training_set``: supervised flips labels with the job's noise kind, clip
    swaps captions). The job is assumed checked (``check_job``, which the launcher runs).
    """
    from benchmark.pretrain.objectives import get_objective

    ref = CorpusRef(job.corpus, job.data_root, None)
    split = ref.open()
    idx = subset_indices(len(split), job.train_subset, job.seed)
    if len(idx) < len(split):
        ref = CorpusRef(job.corpus, job.data_root, idx)
        split = split.subset(idx)
    clean = np.asarray(split.labels, dtype=np.int64)
    classes = list(split.classes)
    base = {
        "objective": job.objective,
        "kind": job.noise_kind,
        "ratio": float(job.noise_ratio),
        "seed": int(job.seed),
        "n": int(len(clean)),
        "corpus": job.corpus,
        "classes": classes,
        "key": job.key,
    }
    table, realised, record, summary, own_table = get_objective(job.objective).training_set(
        job, split, idx, clean, classes, base
    )
    return TrainingSet(ref, table, classes, realised, record, summary, has_caption_table=own_table)


def write_noise_record(ts: TrainingSet, out_dir: Path) -> Path:
    """``noise.npz`` (matrix, flipped / mismatched mask, labels, indices) + ``noise.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "noise.npz"
    record: dict[str, Any] = ts.record
    atomic_write(path, lambda f: np.savez_compressed(f, **record))
    atomic_write_json(out_dir / "noise.json", ts.summary)
    return path
