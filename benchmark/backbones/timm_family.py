"""Family ``timm``: any timm architecture, randomly initialised from a seed or loaded from a file.

Features are timm's pooled pre-logits (``forward_head(..., pre_logits=True)``): the
representation the classifier reads, which is what a linear probe on a frozen backbone uses.
No weights are ever downloaded (``pretrained=False``); real weights come from a state-dict path.
"""

from __future__ import annotations

from typing import Any

import timm
import torch

from benchmark.backbones.base import TorchBackbone, file_sha256, seeded
from benchmark.backbones.spec import check_spec, existing_file, kwargs_tag
from benchmark.errors import ConfigError, UnknownNameError

DEFAULT_IMAGE_SIZE = 32  # the suite's pre-training resolution; override with spec image_size


def timm_features(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logits of a timm model (with or without a classifier head)."""
    model: Any = module  # a timm model: forward_head / forward_features are methods
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _check_arch(arch: str) -> None:
    if not timm.is_model(arch):
        raise UnknownNameError(
            "timm architecture",
            arch,
            timm.list_models("test_*"),
            hint="(only the test_* models are listed) any name from timm.list_models() works",
        )


def _size_kwargs(arch: str, image_size: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """ViT-like models fix their input size at construction; CNNs take any size and reject it."""
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is not None and cfg.fixed_input_size and "img_size" not in kwargs:
        return {**kwargs, "img_size": int(image_size)}
    return dict(kwargs)


def create_timm_classifier(
    arch: str, num_classes: int, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0, **kwargs: Any
) -> torch.nn.Module:
    """A randomly initialised timm classifier for pre-training (seeded, no download).

    The returned module carries ``nmlbench_model_cfg`` (the kwargs that rebuild it, including
    ``num_classes``), which :func:`save_pretrain_checkpoint` stores so the ``nmlbench`` family
    can rebuild the exact architecture. Preprocess its inputs with
    ``make_transform(image_size, SUITE_MEAN, SUITE_STD)`` (or the mean/std you pass on).
    """
    _check_arch(arch)
    cfg = {"num_classes": int(num_classes), **_size_kwargs(arch, image_size, kwargs)}
    with seeded(seed):
        model: Any = timm.create_model(arch, pretrained=False, **cfg)
    model.nmlbench_model_cfg = cfg
    return model


def build_timm_module(arch: str, model_cfg: dict[str, Any]) -> torch.nn.Module:
    """Rebuild a timm module from stored constructor kwargs (weights loaded by the caller)."""
    _check_arch(arch)
    return timm.create_model(arch, pretrained=False, **model_cfg)


def _classifier_prefixes(model: Any) -> tuple[str, ...]:
    name = model.pretrained_cfg.get("classifier", ()) if hasattr(model, "pretrained_cfg") else ()
    names = (name,) if isinstance(name, str) else tuple(name)
    return tuple(f"{n}." for n in names)


def _read_state_dict(path: Any) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"{path}: expected a state_dict (name -> tensor), or a dict holding one under 'state_dict' or 'model'"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone_weights(model: torch.nn.Module, path: Any) -> None:
    """Load a state dict into a head-less timm model; only classifier keys may be left over.

    A missing key means the file is for another architecture (or is truncated), which would
    silently leave random weights behind, so it is an error that lists the keys.
    """
    state = _read_state_dict(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ConfigError(f"{path}: weights do not fit the architecture: {e}") from None
    prefixes = _classifier_prefixes(model)
    unexpected = [k for k in unexpected if not k.startswith(prefixes)]
    if missing or unexpected:
        raise ConfigError(
            f"{path}: weights do not match the architecture; missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} ({len(missing)} in all), unexpected keys "
            f"{unexpected[:10]} ({len(unexpected)} in all). Check 'arch' and 'kwargs' in the spec."
        )


def create_timm_backbone(spec: dict[str, Any]) -> TorchBackbone:
    """Build a ``timm`` family backbone from a spec (see module docstring)."""
    spec = check_spec(
        spec,
        "timm",
        allowed={"family", "arch", "checkpoint", "image_size", "seed", "kwargs", "name"},
        required=("arch",),
    )
    arch, kwargs = str(spec["arch"]), dict(spec.get("kwargs") or {})
    image_size = int(spec.get("image_size") or DEFAULT_IMAGE_SIZE)
    _check_arch(arch)
    cfg = {"num_classes": 0, **_size_kwargs(arch, image_size, kwargs)}
    seed = int(spec.get("seed", 0))
    with seeded(seed):
        model: Any = timm.create_model(arch, pretrained=False, **cfg)
    if spec.get("checkpoint"):
        path = existing_file(spec["checkpoint"], "timm checkpoint")
        load_backbone_weights(model, path)
        weights = f"sha256-{file_sha256(path)}"
    else:
        weights = f"init-seed-{seed}"
    pcfg = model.pretrained_cfg
    return TorchBackbone(
        name=spec.get("name") or f"timm/{arch}",
        identity=f"timm:{arch}:{weights}:img{image_size}{kwargs_tag(kwargs)}",
        module=model,
        feature_fn=timm_features,
        image_size=image_size,
        mean=pcfg.get("mean", (0.5, 0.5, 0.5)),
        std=pcfg.get("std", (0.5, 0.5, 0.5)),
        family="timm",
        arch=arch,
    )
