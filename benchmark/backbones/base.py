"""The one interface every frozen feature extractor offers, and a base class for torch models.

Downstream code (feature cache, sweeps) only ever calls ``transform`` on PIL images and
``encode`` on batches, so a backbone from timm, open_clip, torchvision, a suite checkpoint, a
black-box API or a third-party plugin are interchangeable. ``identity`` is what the feature cache
keys on: two backbones with equal identity must give equal features, so it names the weights
(a sha256 prefix of the file, or the seed of a random init), never a path or an object address.

The preprocessing helpers here are shared with pre-training, so a model trained by the suite
sees exactly the same pixels at training time as when its features are extracted.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Normalisation of models the suite pre-trains itself (grey images repeated to RGB): maps
#: [0, 1] to [-1, 1]. Stored in every checkpoint, so changing it never breaks old checkpoints.
SUITE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SUITE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


@runtime_checkable
class Backbone(Protocol):
    """A frozen feature extractor (see docs/architecture.md)."""

    name: str
    feature_dim: int
    identity: str

    def transform(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> the model's input tensor [C, H, W]."""
        ...

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of transformed images [B, C, H, W] -> float32 features [B, D], no grad."""
        ...

    def to(self, device: str | torch.device) -> Backbone: ...

    @property
    def device(self) -> torch.device: ...


# -- preprocessing shared with pre-training ----------------------------------------------------


def make_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Eval preprocessing: resize to a square ``image_size``, scale to [0, 1], normalise.

    Used both by feature extraction and by the suite's pre-training, so the two agree pixel for
    pixel. The input must already be RGB (``ImageSplit`` converts grey images by channel repeat).
    """
    return v2.Compose(
        [
            v2.Resize((int(image_size), int(image_size)), antialias=True),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std]),
        ]
    )


def transform_spec(image_size: int, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """The parameters of :func:`make_transform` as plain data, for cache keys and checkpoints."""
    return {
        "resize": int(image_size),
        "interpolation": "bilinear-antialias",
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def transform_images(
    images: np.ndarray | Sequence[Image.Image], transform: Callable[[Image.Image], torch.Tensor]
) -> torch.Tensor:
    """Apply a per-image transform to a whole array (N, H, W[, 3]) uint8 or list of PIL images.

    Pre-training uses this to tensorise its corpus once with the very transform its features
    will later be extracted with. Grey arrays are repeated to RGB as ``ImageSplit`` does.
    """
    out = []
    for img in images:
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img, dtype=np.uint8))
        if img.mode != "RGB":
            img = img.convert("RGB")
        out.append(transform(img))
    return torch.stack(out) if out else torch.empty(0)


def file_sha256(path: str | Path, length: int = 16) -> str:
    """Hex sha256 prefix of a file's bytes: the weight part of a backbone identity."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a random init under ``seed`` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


# -- base class for torch backbones ------------------------------------------------------------


class TorchBackbone:
    """A frozen ``nn.Module`` plus a feature function, with the standard eval transform.

    ``feature_fn(module, batch) -> Tensor[B, D]`` selects what "the features" are (pooled
    pre-logits for a classifier, ``encode_image`` for CLIP ...). The module is put in eval mode
    and its parameters frozen once; ``encode`` always runs under ``torch.inference_mode``.
    """

    def __init__(
        self,
        *,
        name: str,
        identity: str,
        module: torch.nn.Module,
        feature_fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        feature_dim: int | None = None,
        family: str = "",
        arch: str = "",
    ) -> None:
        self.name = name
        self.identity = identity
        self.family = family
        self.arch = arch
        #: What a suite checkpoint says about itself (``family: nmlbench``); empty otherwise.
        self.checkpoint_meta: dict[str, Any] = {}
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._feature_fn = feature_fn
        self._transform = make_transform(self.image_size, self.mean, self.std)
        self.transform_spec = transform_spec(self.image_size, self.mean, self.std)
        self.feature_dim = int(feature_dim) if feature_dim is not None else self._probe_dim()

    def _probe_dim(self) -> int:
        """Feature size from one forward of a blank image (cheap; avoids per-model tables)."""
        dummy = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
        return int(self.encode(dummy).shape[1])

    def transform(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        self.module.eval()
        with torch.inference_mode():
            feats = self._feature_fn(self.module, batch.to(self.device, non_blocking=True))
        return feats.reshape(feats.shape[0], -1).float()

    def features_of(self, module: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """The features of ``batch`` through ``module``, with gradients: ``module`` is this
        backbone's network or a trainable copy of it (full fine-tuning, ``benchmark.finetune``)."""
        feats = self._feature_fn(module, batch)
        return feats.reshape(feats.shape[0], -1).float()

    def to(self, device: str | torch.device) -> TorchBackbone:
        self.module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.feature_dim}, id={self.identity!r})"


def describe_transform(backbone: Any) -> Any:
    """A stable description of a backbone's preprocessing for cache keys.

    Uses ``transform_spec`` when the backbone declares one; otherwise the transform's repr
    (stable for torchvision transforms) or, for a plain function, its qualified name, so no
    memory address ever enters a key.
    """
    spec = getattr(backbone, "transform_spec", None)
    if spec is not None:
        return spec
    t = backbone.transform
    func = getattr(t, "__func__", None)
    if func is not None or callable(t) and hasattr(t, "__qualname__"):
        f = func or t
        return f"{getattr(f, '__module__', '')}.{f.__qualname__}"
    return repr(t)
