"""What one Ray Train worker reads: the images of its own shard, from the data root, in batches.

Two paths, chosen per corpus (``make_input``):

- **stream** (image files, webdataset shards, any split that decodes per item): a PyTorch
  ``DataLoader`` over this worker's epoch shard, whose loader processes open, decode, crop and
  resize each image (``decode_item``) and hand back ``uint8`` batches at the training size. A
  worker touches only its shard's files; nothing is held in memory beyond the batches in flight,
  so memory stays flat however large the corpus. Chosen over Ray Data by measurement
  (``benchmarks/test_bench_input.py``).
- **array** (the small embedded corpora, ``split.arrays()``, without augmentation): the whole
  ``uint8`` array sits in the worker (on its device when it fits) and batches are index
  lookups, resized on the device: the embedded suites' recipe and speed, unchanged.

Augmentation is seeded per sample from (job seed, epoch, sample), so a crop does not depend on
which worker or loader process decodes the image, nor on how many there are.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmark.pretrain.corpus import array_images

_GPU_RESIDENT_BYTES = 2 << 30  # array corpora up to 2 GiB live on the device; larger stay on the host
_RATIO = (math.log(3 / 4), math.log(4 / 3))


def _raw_index(split: Any, i: int) -> int:
    return int(i) if split.indices is None else int(split.indices[i])


def _encoded(split: Any, i: int) -> Any:
    """A file path or an in-memory file of item ``i``'s encoded image, or None (no file)."""
    if hasattr(split, "image_bytes"):
        return io.BytesIO(split.image_bytes(i))
    files = getattr(split, "files", None)
    if files is not None:
        return files[_raw_index(split, i)]
    return None


def crop_box(
    width: int, height: int, scale: Sequence[float], rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """A random-resized-crop box (left, top, right, bottom) in pixels: area share in ``scale``,
    aspect ratio log-uniform in [3/4, 4/3]; after ten misses the largest centred box whose
    aspect fits that range (the usual ImageNet recipe)."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*_RATIO))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        w, h = round(height * (4 / 3)), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def decode_item(
    split: Any,
    i: int,
    size: int,
    augment: str = "none",
    crop_scale: Sequence[float] = (0.08, 1.0),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Item ``i`` as ``uint8 [size, size, 3]``: resized whole (``augment="none"``, exactly the
    feature transform's resize) or a random-resized crop, flipped half the time (``crop_flip``).

    JPEGs are decoded at a reduced scale when the crop still has ``size`` pixels per side
    (``Image.draft``): the decoder skips what the resize would throw away.
    """
    source = _encoded(split, i)
    if source is None:
        img = split[i][0]
    else:
        img = Image.open(source)
    try:
        if augment == "none":
            img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.array(img, dtype=np.uint8)
        assert rng is not None, "crop_flip needs a seeded generator"
        w0, h0 = img.size
        box = crop_box(w0, h0, crop_scale, rng)
        if img.format == "JPEG":
            r = max(size / max(1, box[2] - box[0]), size / max(1, box[3] - box[1]))
            img.draft("RGB", (math.ceil(w0 * r), math.ceil(h0 * r)))
            fx, fy = img.size[0] / w0, img.size[1] / h0
            box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
        out = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)
        if rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.array(out, dtype=np.uint8)
    finally:
        img.close()


class ShardImages(torch.utils.data.Dataset):
    """Map-style dataset over a split whose items are ``(position, epoch)``: the loader's batch
    sampler feeds a worker's epoch shard, and each item seeds its own augmentation."""

    def __init__(self, split: Any, size: int, augment: str, crop_scale: Sequence[float], seed: int) -> None:
        self.split, self.size, self.augment = split, int(size), augment
        self.crop_scale, self.seed = tuple(float(v) for v in crop_scale), int(seed)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]) -> tuple[np.ndarray, int]:
        pos, epoch = item
        rng = np.random.default_rng([self.seed, int(epoch), int(pos)]) if self.augment != "none" else None
        return decode_item(self.split, pos, self.size, self.augment, self.crop_scale, rng), pos


def collate_nhwc(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``uint8 [B, 3, S, S]`` viewed from an NHWC buffer (channels-last for free) + positions."""
    images = torch.from_numpy(np.stack([im for im, _ in items])).permute(0, 3, 1, 2)
    return images, torch.tensor([p for _, p in items], dtype=torch.int64)


class StreamInput:
    """Batches of one worker's shard, decoded by ``loader_workers`` processes."""

    kind = "stream"

    def __init__(self, split: Any, cfg: dict[str, Any], device: torch.device) -> None:
        self.dataset = ShardImages(
            split, cfg["image_size"], cfg.get("augment", "none"), cfg.get("crop_scale", (0.08, 1.0)), cfg["seed"]
        )
        self.loader_workers = int(cfg.get("loader_workers", 1))
        self.pin = device.type == "cuda"
        self.loader_peak_mb = 0  # largest peak RSS of a loader process so far (MiB)

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, shard: torch.Tensor, batch: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = shard.tolist()
        plan = [[(p, epoch) for p in order[s : s + batch]] for s in range(0, len(order), batch)]
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=plan,
            num_workers=self.loader_workers,
            collate_fn=collate_nhwc,
            pin_memory=self.pin,
            prefetch_factor=4 if self.loader_workers else None,
        )
        it = iter(loader)
        pids = [w.pid for w in getattr(it, "_workers", [])]
        for k, item in enumerate(it):
            if k == len(plan) - 1:  # the loaders are still alive: read their peaks
                self.loader_peak_mb = max([self.loader_peak_mb, *map(peak_rss_mb, pids)])
            yield item


def peak_rss_mb(pid: int | str = "self") -> int:
    """Peak resident memory (VmHWM, MiB) of a process on Linux; 0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


class ArrayInput:
    """The whole (small) corpus in memory as ``uint8 [N, C, H, W]``; batches are lookups."""

    kind = "array"
    loader_peak_mb = 0  # no loader processes

    def __init__(self, split: Any, device: torch.device) -> None:
        images = torch.from_numpy(array_images(split))
        self.images = images.to(device) if images.numel() <= _GPU_RESIDENT_BYTES else images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, shard: torch.Tensor, batch: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shard = shard.to(self.images.device)
        for s in range(0, shard.numel(), batch):
            idx = shard[s : s + batch]
            yield self.images[idx], idx


def make_input(split: Any, cfg: dict[str, Any], device: torch.device) -> StreamInput | ArrayInput:
    """The array fast path for in-memory corpora trained without augmentation, else streaming."""
    if hasattr(split, "arrays") and cfg.get("augment", "none") == "none":
        return ArrayInput(split, device)
    return StreamInput(split, cfg, device)


class _Thumbnails(torch.utils.data.Dataset):
    def __init__(self, split: Any, size: int) -> None:
        self.split, self.size = split, size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> np.ndarray:
        return decode_item(self.split, i, self.size).reshape(-1)


def instance_features(split: Any, size: int, loader_workers: int, batch: int = 512) -> np.ndarray:
    """``float32 [N, size * size * 3]`` thumbnails in [0, 1], decoded in a streaming pass by
    ``loader_workers`` processes (the driver holds the thumbnails, never the images)."""
    out = np.empty((len(split), size * size * 3), dtype=np.float32)
    loader = torch.utils.data.DataLoader(_Thumbnails(split, size), batch_size=batch, num_workers=int(loader_workers))
    pos = 0
    for chunk in loader:
        out[pos : pos + len(chunk)] = chunk.numpy().astype(np.float32) / 255.0
        pos += len(chunk)
    return out
