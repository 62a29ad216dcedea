"""A third-party backbone family for nml-bench, shipped as its own distribution.

It shows the whole plugin contract: one entry point in the group ``nmlbench.backbones`` whose
value is a factory ``spec -> Backbone``. The backbone is a fixed random projection of the
resized grey pixels, seeded from the spec, so its identity is (dim, image size, seed).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmark.backbones import TorchBackbone
from benchmark.errors import ConfigError


class _Projection(torch.nn.Module):
    def __init__(self, in_dim: int, out_dim: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(in_dim, out_dim, generator=g) / in_dim**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1).flatten(1) @ self.weight  # grey = mean of RGB, then project


def create_toy_backbone(spec: dict[str, Any]) -> TorchBackbone:
    """toy: fixed random projection of the pixels (spec: dim, image_size, seed)."""
    unknown = set(spec) - {"family", "dim", "image_size", "seed", "name"}
    if unknown:
        raise ConfigError(f"toy backbone: unknown spec keys {sorted(unknown)}")
    dim, size, seed = int(spec.get("dim", 16)), int(spec.get("image_size", 8)), int(spec.get("seed", 0))
    return TorchBackbone(
        name=spec.get("name") or f"toy/proj{dim}",
        identity=f"toy:proj{dim}:img{size}:seed{seed}",
        module=_Projection(size * size, dim, seed),
        feature_fn=lambda m, x: m(x),
        image_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        feature_dim=dim,
        family="toy",
        arch=f"proj{dim}",
    )
