"""Family ``open_clip``: the image tower of any open_clip model, built from its config.

Features are ``model.encode_image`` (the projected, un-normalised image embedding), the space
CLIP's contrastive loss trains and linear probes on CLIP read. Weights are never downloaded:
the model is random-initialised from a seed or loaded from a checkpoint path.

Importing this module registers the suite's own small config ``nml-tiny-clip``
(``model_configs/nml-tiny-clip.json``: 32x32 input, a 2-layer ViT of width 64 with 4x4 patches,
a 2-layer text transformer of width 64 with 16-token context, 64-d joint space), sized so that
a 3-epoch contrastive pre-training on 12k images takes well under a minute on one CPU core.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import torch

from benchmark.backbones.base import TorchBackbone, file_sha256, seeded
from benchmark.backbones.spec import check_spec, existing_file, kwargs_tag
from benchmark.errors import ConfigError, UnknownNameError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
for _cfg in sorted(MODEL_CONFIG_DIR.glob("*.json")):
    open_clip.add_model_config(_cfg)


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """open_clip logs a root-logger warning for every random init, which is our normal case."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    root, flt = logging.getLogger(), _Drop()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _check_arch(arch: str) -> None:
    if arch not in open_clip.list_models():
        raise UnknownNameError(
            "open_clip model config",
            arch,
            open_clip.list_models(),
            hint=f"add a config JSON to {MODEL_CONFIG_DIR} or pass a known name",
        )


def create_open_clip_model(arch: str, seed: int = 0, **kwargs: Any) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised open_clip model and its tokenizer, for contrastive pre-training.

    The tokenizer is open_clip's bundled BPE (no download) unless the config names a Hugging
    Face tokenizer. ``kwargs`` go to ``open_clip.create_model`` (e.g. ``force_image_size``) and
    are kept on the model as ``nmlbench_model_cfg`` for the checkpoint. Preprocess images with
    ``make_transform(*open_clip_preprocess(model))``.
    """
    _check_arch(arch)
    with seeded(seed), _quiet_random_init():
        model = open_clip.create_model(arch, pretrained=None, **kwargs)
    model.nmlbench_model_cfg = dict(kwargs)
    return model, open_clip.get_tokenizer(arch)


def build_open_clip_module(arch: str, model_cfg: dict[str, Any]) -> torch.nn.Module:
    """Rebuild an open_clip model from stored kwargs (weights loaded by the caller)."""
    _check_arch(arch)
    with _quiet_random_init():
        return open_clip.create_model(arch, pretrained=None, **model_cfg)


def open_clip_preprocess(model: torch.nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image_size, mean, std) the model's config asks for."""
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = getattr(model.visual, "image_size", cfg.get("size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return int(size), mean, std


def encode_image_features(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLIP image embedding (projected, not L2-normalised)."""
    clip: Any = module  # open_clip's CLIP: encode_image is a method, not a submodule
    return clip.encode_image(x)


def create_open_clip_backbone(spec: dict[str, Any]) -> TorchBackbone:
    """Build an ``open_clip`` family backbone from a spec (see module docstring)."""
    spec = check_spec(
        spec,
        "open_clip",
        allowed={"family", "arch", "checkpoint", "image_size", "seed", "kwargs", "name"},
        required=("arch",),
    )
    arch, kwargs = str(spec["arch"]), dict(spec.get("kwargs") or {})
    if spec.get("image_size"):
        kwargs.setdefault("force_image_size", int(spec["image_size"]))
    seed = int(spec.get("seed", 0))
    _check_arch(arch)
    with seeded(seed), _quiet_random_init():
        model = open_clip.create_model(arch, pretrained=None, **kwargs)
    if spec.get("checkpoint"):
        path = existing_file(spec["checkpoint"], "open_clip checkpoint")
        try:
            open_clip.load_checkpoint(model, str(path))
        except (RuntimeError, KeyError) as e:
            raise ConfigError(f"{path}: not an open_clip state dict for {arch!r}: {e}") from None
        weights = f"sha256-{file_sha256(path)}"
    else:
        weights = f"init-seed-{seed}"
    size, mean, std = open_clip_preprocess(model)
    return TorchBackbone(
        name=spec.get("name") or f"open_clip/{arch}",
        identity=f"open_clip:{arch}:{weights}:img{size}{kwargs_tag(kwargs)}",
        module=model,
        feature_fn=encode_image_features,
        image_size=size,
        mean=mean,
        std=std,
        family="open_clip",
        arch=arch,
    )
