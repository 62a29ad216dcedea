"""The driver's half of pre-training: the exact noisy training set of a job and its record.

The corpus subset, the seeded noise (``benchmark.noise``) and its record (``noise.npz`` +
``noise.json``) are made here, in the driver, once per job and *before* training starts, so the
labels a model saw are on disk even if training later fails, and they cannot depend on how many
workers train. No torch and no Ray: images leave as one ``uint8`` array that the launcher puts
in the object store and the workers turn into tensors on their own device.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.atomic import atomic_write, atomic_write_json
from benchmark.errors import ConfigError
from benchmark.pretrain.job import PretrainJob, check_job


@dataclass
class TrainingSet:
    """The exact arrays one job trains on, plus its noise record.

    ``images`` is ``uint8 [N, C, H, W]`` (C = 1 grey or 3 colour); ``targets`` is the noisy
    label vector (supervised) or the tokenised noisy captions ``int [N, L]`` (clip).
    """

    images: np.ndarray
    targets: np.ndarray
    clean_labels: np.ndarray
    classes: list[str]
    indices: np.ndarray
    realised_ratio: float
    record: dict[str, np.ndarray]
    summary: dict[str, Any]


def subset_indices(n: int, train_subset: int | None, seed: int) -> np.ndarray:
    """Sorted first-``train_subset`` items of a seeded shuffle of ``range(n)`` (all if None).

    The generator is seeded from (seed, "subset") so the subset draw never shares a stream with
    the noise draw, which uses ``seed`` itself.
    """
    if train_subset is None or int(train_subset) >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 0x5B5E7])
    return np.sort(rng.permutation(n)[: int(train_subset)]).astype(np.int64)


def split_to_uint8(split: Any, image_size: int) -> np.ndarray:
    """All images of a split as ``uint8 [N, C, H, W]``, without PIL when the split is an array.

    Image splits that decode files may hold mixed sizes: those are resized to ``image_size``
    here (once), array splits keep their native size and are resized on the device.
    """
    if hasattr(split, "arrays"):
        images, _ = split.arrays()
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ConfigError(f"{split!r}: images must be uint8, got {images.dtype}")
        if images.ndim == 3:
            return np.ascontiguousarray(images[:, None])
        if images.ndim == 4 and images.shape[-1] == 3:
            return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        raise ConfigError(f"{split!r}: arrays must be (N, H, W) or (N, H, W, 3), got "
                          f"{images.shape}")
    from PIL import Image

    out = np.empty((len(split), 3, image_size, image_size), dtype=np.uint8)
    for i in range(len(split)):
        img, _ = split[i]
        img = img.convert("RGB")
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    return out


def _npz_fields(write: Any) -> dict[str, np.ndarray]:
    """Arrays that ``write(file)`` would save with ``np.savez*``, as a dict (to merge extras)."""
    buf = io.BytesIO()
    write(buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def build_training_set(job: PretrainJob, tokenizer: Any = None) -> TrainingSet:
    """Load the corpus subset and apply the job's seeded noise (no Ray involved).

    Supervised: ``flip_labels(labels, K, noise_ratio, noise_kind, seed)``. Clip: one caption
    per image from class templates (``benchmark.captions``), then ``swap_captions`` with the
    same seed, then tokenised with the model's own tokenizer.
    """
    from benchmark.data import get_dataset
    from benchmark.noise import flip_labels, swap_captions, transition_matrix

    check_job(job)
    split = get_dataset(job.corpus, job.data_root).split("train")
    idx = subset_indices(len(split), job.train_subset, job.seed)
    if len(idx) < len(split):
        split = split.subset(idx)
    clean = np.asarray(split.labels, dtype=np.int64)
    classes = list(split.classes)
    images = split_to_uint8(split, job.image_size)
    base = {"objective": job.objective, "kind": job.noise_kind, "ratio": float(job.noise_ratio),
            "seed": int(job.seed), "n": int(len(clean)), "corpus": job.corpus,
            "classes": classes, "key": job.key}
    if job.objective == "supervised":
        # Instance-dependent noise (Xia et al.) draws flip rates from the samples themselves:
        # the raw pixels are the features, so the noise does not depend on any model.
        feats = (images.reshape(len(images), -1).astype(np.float32) / 255.0
                 if job.noise_kind == "instance" else None)
        nr = flip_labels(clean, len(classes), float(job.noise_ratio), kind=job.noise_kind,
                         seed=job.seed, class_map=job.class_map, features=feats)
        record = {**_npz_fields(nr.to_npz), "indices": idx, "clean_labels": clean}
        summary = {**base, "realised_ratio": float(nr.realised_ratio),
                   "num_flipped": int(nr.flipped.sum())}
        return TrainingSet(images, nr.noisy_labels.astype(np.int64), clean, classes, idx,
                           float(nr.realised_ratio), record, summary)

    from benchmark.captions import class_captions

    if tokenizer is None:
        raise ConfigError(f"clip job {job.name}: a tokenizer is needed to encode captions")
    captions = class_captions(clean, classes, seed=job.seed)
    sw = swap_captions(captions, float(job.noise_ratio), seed=job.seed)
    text_class = {c: y for c, y in zip(captions, clean.tolist())}
    cap_labels = np.array([text_class[c] for c in sw.captions], dtype=np.int64)
    tokens = np.asarray(tokenizer(sw.captions)).astype(np.int64)
    record = {
        "mismatched": sw.mismatched.astype(bool),
        "realised_ratio": np.float64(sw.realised_ratio),
        "transition": transition_matrix(clean, cap_labels, len(classes)),
        "kind": np.str_("swap"), "ratio": np.float64(job.noise_ratio),
        "seed": np.int64(job.seed), "indices": idx, "clean_labels": clean,
        "caption_labels": cap_labels,
        "clean_captions": np.array(captions, dtype=np.str_),
        "captions": np.array(sw.captions, dtype=np.str_),
    }
    summary = {**base, "realised_ratio": float(sw.realised_ratio),
               "num_mismatched": int(sw.mismatched.sum()),
               # Swaps between two templates of one class change the text, not the class.
               "num_class_mismatched": int((cap_labels != clean).sum())}
    return TrainingSet(images, tokens, clean, classes, idx, float(sw.realised_ratio),
                       record, summary)


def write_noise_record(ts: TrainingSet, out_dir: Path) -> Path:
    """``noise.npz`` (matrix, flipped / mismatched mask, labels, indices) + ``noise.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "noise.npz"
    atomic_write(path, lambda f: np.savez_compressed(f, **ts.record))
    atomic_write_json(out_dir / "noise.json", ts.summary)
    return path
