"""Family ``blackbox``: any embedding function, e.g. a client for a hosted model API.

This is the paper's setting for NMTune: the pre-trained model can only be queried, not
fine-tuned or inspected. The spec names a function by ``target: "package.module:function"``.

The function's contract:
- input: a list of RGB ``PIL.Image`` (spec ``input: pil``, the default) or one ``uint8`` numpy
  array of shape (B, H, W, 3) (``input: array``); all images are resized to ``image_size`` first
  when the spec gives one (needed for data sets whose images differ in size);
- output: embeddings of shape (B, D) as a numpy array or torch tensor (any float dtype);
- extra spec ``kwargs`` are passed to it as keyword arguments.

The suite cannot hash a remote model's weights, so the identity is ``target`` plus a ``version``
string the user vouches for: change ``version`` whenever the service's model changes, or the
feature cache will serve stale features. ``feature_dim`` is discovered from one call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmark.backbones.spec import check_spec, kwargs_tag
from benchmark.errors import ConfigError


def resolve_target(target: str) -> Callable[..., Any]:
    """Import ``"package.module:attr[.attr]"``; errors name the target and the expected form."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise ConfigError(f"blackbox target must look like 'package.module:function', got {target!r}")
    mod_name, attr_path = target.split(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(
            f"blackbox target {target!r}: cannot import {mod_name!r} ({e}); is the package installed or on PYTHONPATH?"
        ) from None
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ConfigError(f"blackbox target {target!r}: {mod_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ConfigError(f"blackbox target {target!r} is not callable")
    return obj


class BlackBoxBackbone:
    """Wraps an embedding function in the Backbone protocol.

    ``transform`` keeps pixels as uint8 tensors [3, H, W] (no normalisation: the service does
    its own preprocessing); ``encode`` turns the batch back into what the function expects.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        target: str,
        version: str,
        name: str,
        image_size: int | None = None,
        input_kind: str = "pil",
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        if input_kind not in ("pil", "array"):
            raise ConfigError(f"blackbox 'input' must be 'pil' or 'array', got {input_kind!r}")
        self._fn, self._kwargs = fn, dict(kwargs or {})
        self.name, self.target, self.version = name, target, str(version)
        self.image_size, self.input_kind = image_size, input_kind
        self.family, self.arch = "blackbox", target
        self.identity = (
            f"blackbox:{target}:v{self.version}:{input_kind}:img{image_size or 'native'}{kwargs_tag(self._kwargs)}"
        )
        self.transform_spec = {"blackbox_input": input_kind, "resize": image_size}
        probe = self.transform(Image.new("RGB", (image_size or 32, image_size or 32)))
        self.feature_dim = int(self.encode(probe[None]).shape[1])

    def transform(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.image_size and image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        arr = batch.detach().to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()
        inputs: Any = [Image.fromarray(a) for a in arr] if self.input_kind == "pil" else arr
        out = self._fn(inputs, **self._kwargs)
        feats = torch.as_tensor(
            np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out), dtype=torch.float32
        )
        if feats.ndim != 2 or feats.shape[0] != len(arr):
            raise ConfigError(
                f"blackbox {self.target!r} returned shape {tuple(feats.shape)} for "
                f"{len(arr)} images; it must return (batch, dim) embeddings"
            )
        return feats

    def to(self, device: str | torch.device) -> BlackBoxBackbone:
        return self  # the function decides where it runs

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"BlackBoxBackbone({self.name!r}, dim={self.feature_dim}, id={self.identity!r})"


def create_blackbox_backbone(spec: dict[str, Any]) -> BlackBoxBackbone:
    """Build a ``blackbox`` backbone; needs ``target`` and ``version`` (see module docstring)."""
    spec = check_spec(
        spec,
        "blackbox",
        allowed={"family", "target", "version", "image_size", "input", "kwargs", "name"},
        required=("target",),
    )
    if spec.get("version") in (None, ""):
        raise ConfigError(
            f"blackbox spec for {spec['target']!r} needs 'version': a string you change whenever "
            "the model behind it changes (the feature cache trusts it instead of a weights hash)"
        )
    target = str(spec["target"])
    return BlackBoxBackbone(
        resolve_target(target),
        target=target,
        version=str(spec["version"]),
        name=spec.get("name") or f"blackbox/{target}",
        image_size=spec.get("image_size"),
        input_kind=str(spec.get("input") or "pil"),
        kwargs=spec.get("kwargs"),
    )
