"""Frozen features, computed once per (backbone identity, split, transform) and cached on disk.

Every head fit downstream reads the same features, so the backbone runs once per key no matter
how many methods, seeds and hyper-parameters a sweep tries. The cache is content-addressed:
``root/<key[:2]>/<key>.npz`` holds ``x`` (float32 [N, D]) and ``y`` (int64 [N]); the sibling
``<key>.json`` holds what produced it and a sha256 of the array bytes. Files are written to a
temporary name and moved into place with ``os.replace``, the ``.json`` last, so a crash leaves
either a complete entry or none; a truncated or corrupt entry is reported and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.atomic import atomic_write
from benchmark.backbones.base import describe_transform
from benchmark.data.base import ImageSplit
from benchmark.errors import CorruptCacheError
from benchmark.hashing import config_hash

#: Bump when the extraction procedure changes in a way that changes features (old keys die).
FEATURE_VERSION = 1


@dataclass
class Features:
    """Features of one split: ``x`` float32 [N, D] and ``y`` int64 [N], both on the CPU."""

    x: torch.Tensor
    y: torch.Tensor
    key: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])


def feature_key(backbone: Any, split: ImageSplit) -> str:
    """Cache key: hash of backbone identity, split fingerprint, transform and FEATURE_VERSION."""
    return config_hash(
        {
            "kind": "features",
            "identity": backbone.identity,
            "fingerprint": split.fingerprint,
            "transform": describe_transform(backbone),
            "version": FEATURE_VERSION,
        }
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _Transformed(torch.utils.data.Dataset):
    """A split seen through a backbone's transform: (tensor, label) items."""

    def __init__(self, split: ImageSplit, transform: Any) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.split[i]
        return self.transform(img), label


def extract_features(
    backbone: Any,
    split: ImageSplit,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    *,
    progress: bool = False,
    num_workers: int = 0,
) -> Features:
    """Run the backbone over a split (no cache): one pass, batches in order.

    ``num_workers`` > 0 needs a picklable transform; the embedded data sets are tiny images,
    for which the main process is fast enough. ``meta['forward_batches']`` counts encode calls.
    """
    dev = resolve_device(device)
    backbone.to(dev)
    loader = torch.utils.data.DataLoader(
        _Transformed(split, backbone.transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )
    show = progress and sys.stderr.isatty()
    xs, ys, batches = [], [], 0
    start = time.perf_counter()
    for images, labels in tqdm(
        loader, desc=f"features {backbone.name} {split.fingerprint}", unit="batch", disable=not show, leave=False
    ):
        xs.append(backbone.encode(images.to(dev, non_blocking=True)).detach().float().cpu())
        ys.append(torch.as_tensor(labels, dtype=torch.int64))
        batches += 1
    dim = int(getattr(backbone, "feature_dim", 0))
    x = torch.cat(xs) if xs else torch.empty(0, dim, dtype=torch.float32)
    y = torch.cat(ys) if ys else torch.empty(0, dtype=torch.int64)
    meta = {
        "identity": backbone.identity,
        "backbone": backbone.name,
        "fingerprint": split.fingerprint,
        "transform": describe_transform(backbone),
        "device": str(dev),
        "forward_batches": batches,
        "seconds": round(time.perf_counter() - start, 4),
    }
    return Features(x=x.contiguous(), y=y, key=feature_key(backbone, split), meta=meta)


def _digest(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temp file in the same directory, then rename over ``path``."""
    atomic_write(path, write)


class FeatureCache:
    """Disk cache of :class:`Features` keyed by :func:`feature_key` (see module docstring).

    Counters: ``hits`` and ``misses`` (per ``get``), ``forward_batches`` (backbone encode calls
    made by this cache), so tests and logs can show that a re-run did no forward passes.
    """

    def __init__(
        self,
        root: str | Path,
        device: str | torch.device | None = None,
        batch_size: int = 256,
        progress: bool = True,
        num_workers: int = 0,
    ) -> None:
        self.root = Path(root)
        self.device = device
        self.batch_size = int(batch_size)
        self.progress = progress
        self.num_workers = int(num_workers)
        self.hits = 0
        self.misses = 0
        self.forward_batches = 0

    def paths(self, key: str) -> tuple[Path, Path]:
        """(array file, metadata file) of a key."""
        folder = self.root / key[:2]
        return folder / f"{key}.npz", folder / f"{key}.json"

    def __contains__(self, key: str) -> bool:
        return all(p.is_file() for p in self.paths(key))

    # -- reading ---------------------------------------------------------------------------
    def _read(self, key: str, expected_len: int) -> Features:
        npz, js = self.paths(key)
        meta = json.loads(js.read_text())
        with np.load(npz, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
        if x.dtype != np.float32 or y.dtype != np.int64:
            raise CorruptCacheError(f"dtypes {x.dtype}/{y.dtype}, expected float32/int64")
        if list(x.shape) != list(meta["shape"]) or y.shape != (x.shape[0],):
            raise CorruptCacheError(f"shape {x.shape} / {y.shape} does not match the recorded {meta['shape']}")
        if x.shape[0] != expected_len:
            raise CorruptCacheError(f"{x.shape[0]} rows but the split has {expected_len} items")
        if _digest(x, y) != meta["sha256"]:
            raise CorruptCacheError("sha256 of the arrays does not match the recorded checksum")
        return Features(x=torch.from_numpy(x), y=torch.from_numpy(y), key=key, meta=meta)

    def _try_read(self, key: str, expected_len: int) -> Features | None:
        npz, js = self.paths(key)
        if not js.is_file():
            if npz.is_file():  # arrays without metadata: a write was interrupted
                warnings.warn(f"feature cache entry {npz} has no metadata file {js.name}; recomputing it", stacklevel=3)
            return None
        try:
            return self._read(key, expected_len)
        except Exception as e:  # unreadable zip, truncated file, bad JSON, checksum mismatch ...
            warnings.warn(
                f"feature cache file {npz} is corrupt ({type(e).__name__}: {e}); recomputing it", stacklevel=3
            )
            return None

    # -- writing ---------------------------------------------------------------------------
    def _write(self, feats: Features) -> dict[str, Any]:
        npz, js = self.paths(feats.key)
        npz.parent.mkdir(parents=True, exist_ok=True)
        x, y = feats.x.numpy(), feats.y.numpy()
        meta = {
            **{k: v for k, v in feats.meta.items() if k != "forward_batches"},
            "key": feats.key,
            "feature_version": FEATURE_VERSION,
            "shape": list(x.shape),
            "dtype": str(x.dtype),
            "sha256": _digest(x, y),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _atomic_write(npz, lambda f: np.savez(f, x=x, y=y))
        _atomic_write(js, lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode()))
        return meta

    # -- public ----------------------------------------------------------------------------
    def get(self, backbone: Any, split: ImageSplit) -> Features:
        """Features of ``split`` under ``backbone``, from disk when present and intact."""
        key = feature_key(backbone, split)
        cached = self._try_read(key, len(split))
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        feats = extract_features(
            backbone, split, self.batch_size, self.device, progress=self.progress, num_workers=self.num_workers
        )
        self.forward_batches += int(feats.meta["forward_batches"])
        meta = self._write(feats)
        return Features(x=feats.x, y=feats.y, key=key, meta=meta)

    @overload
    def get_many(self, backbone: Any, splits: Mapping[str, ImageSplit]) -> dict[str, Features]: ...
    @overload
    def get_many(self, backbone: Any, splits: Sequence[ImageSplit]) -> list[Features]: ...

    def get_many(self, backbone: Any, splits: Any) -> Any:
        """``get`` for several splits: a dict in, a dict out; a sequence in, a list out."""
        if isinstance(splits, Mapping):
            return {name: self.get(backbone, s) for name, s in splits.items()}
        return [self.get(backbone, s) for s in splits]

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.root)!r}, hits={self.hits}, misses={self.misses}, "
            f"forward_batches={self.forward_batches})"
        )
