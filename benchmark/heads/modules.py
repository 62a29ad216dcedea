"""The head modules trained on frozen features: the linear probe and the residual MLP.

Every head maps features ``f`` (B x D) to ``(logits, z)``: ``z`` is the representation the
classifier reads (``z = f`` for the linear probe). SVE/LSVR of ``z`` show what the head did to
the feature spectrum, and NMTune's regularisers (``benchmark.heads.nmtune``) act on ``z``. MLP
and NMTune share the residual MLP; they differ only in the loss (see the head registry).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmark.errors import ConfigError
from benchmark.heads.registry import get_head


class LinearHead(nn.Module):
    """Linear probe: ``logits = W f + b``; ``z`` is the input itself."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(f), f


class ResidualMLPHead(nn.Module):
    """NMTune's head: ``z = a * h(f) + f``, then a linear classifier on ``z``.

    ``h`` = Linear(D, wD)-BatchNorm-ReLU, ``depth - 1`` more Linear(wD, wD)-BatchNorm-ReLU
    blocks, then Linear(wD, D) (``w`` = ``width``). ``a`` is a learnable per-dimension scale
    initialised to 1.0 (the reference code). The residual keeps the pre-trained features
    reachable; the same head trained with cross-entropy only is the "MLP" baseline.
    """

    def __init__(self, dim: int, num_classes: int, width: float = 4, depth: int = 1) -> None:
        super().__init__()
        hidden = int(round(width * dim))
        if hidden < 1:
            raise ConfigError(f"width={width} gives a hidden width of {hidden}; use width > 0 (default 4)")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"depth must be an int >= 1 (number of hidden blocks), got {depth!r}")
        layers: list[nn.Module] = [nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
        layers.append(nn.Linear(hidden, dim))
        self.mlp = nn.Sequential(*layers)
        self.scale = nn.Parameter(torch.ones(dim))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.scale * self.mlp(f) + f
        return self.classifier(z), z


def create_head(method: str, dim: int, num_classes: int, **arch: Any) -> nn.Module:
    """Build the registered head ``method``'s module; ``arch``: its architecture hyper-parameters
    (those it declares with ``arch=True``, e.g. ``width`` and ``depth``).

    Architecture keys the method does not take (e.g. ``depth`` for ``lp``) may be passed as
    None; anything else raises ``ConfigError``.
    """
    head = get_head(method)
    for name, val in (("dim", dim), ("num_classes", num_classes)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(f"{name} must be a positive int, got {val!r}")
    given = {k: v for k, v in arch.items() if v is not None}
    allowed = tuple(p.name for p in head.hparams if p.arch)
    extra = sorted(set(given) - set(allowed))
    if extra:
        raise ConfigError(
            f"head {method!r} does not take {', '.join(extra)}; allowed: {', '.join(allowed) or '(none)'}"
        )
    return head.resolve("builder")(dim, num_classes, **given)
