"""Heads trained on frozen features: linear probe, residual MLP, and NMTune's regularisers.

Every head maps features ``f`` (B x D) to ``(logits, z)``: ``z`` is the representation the
classifier reads (``z = f`` for the linear probe). SVE/LSVR of ``z`` show what the head did to
the feature spectrum, and NMTune's regularisers act on ``z`` (paper.md, "NMTune").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.errors import ConfigError, UnknownNameError

HEAD_METHODS: tuple[str, ...] = ("lp", "mlp", "nmtune")


class LinearHead(nn.Module):
    """Linear probe: ``logits = W f + b``; ``z`` is the input itself."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(f), f


class ResidualMLPHead(nn.Module):
    """NMTune's head: ``z = a * h(f) + f``, then a linear classifier on ``z``.

    ``h`` = Linear(D, rD)-BatchNorm-ReLU, ``depth - 1`` more Linear(rD, rD)-BatchNorm-ReLU
    blocks, then Linear(rD, D). ``a`` is a learnable per-dimension scale initialised to 1.0 (the
    reference code). The residual keeps the pre-trained features reachable; the same head trained
    with cross-entropy only is the "MLP" baseline.
    """

    def __init__(self, dim: int, num_classes: int, ratio: float = 4, depth: int = 1) -> None:
        super().__init__()
        hidden = int(round(ratio * dim))
        if hidden < 1:
            raise ConfigError(f"ratio={ratio} gives a hidden width of {hidden}; use ratio > 0 (default 4)")
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


def nmtune_regularisers(z: torch.Tensor, f: torch.Tensor, *, svd_topk: int = 1) -> dict[str, torch.Tensor]:
    """NMTune's three batch regularisers (scalars with gradients), from paper.md.

    - ``mse``: ``mean_b || z_b/||z_b|| - f_b/||f_b|| ||^2``, keeps z close to the pre-trained f.
    - ``cov``: ``(1/D) * sum_{i != j} Cov(z)_{ij}^2`` with the centred batch covariance
      (divided by B - 1); decorrelates dimensions, which raises SVE.
    - ``svd``: ``- mean(s_1..s_k) / sum_j s_j`` of the (uncentred) batch ``z``; ``k = 1`` is
      the paper's ``-s_1 / sum s`` and raises LSVR, ``k = 5`` the reference code's variant.
    """
    if z.ndim != 2 or z.shape != f.shape:
        raise ConfigError(f"z and f must both be B x D, got {tuple(z.shape)} and {tuple(f.shape)}")
    b, d = z.shape
    if b < 2:
        raise ConfigError("NMTune's regularisers need a batch of at least 2 samples; raise batch_size")
    if isinstance(svd_topk, bool) or not isinstance(svd_topk, int) or svd_topk < 1:
        raise ConfigError(f"svd_topk must be an int >= 1, got {svd_topk!r}")
    mse = (F.normalize(z, dim=1) - F.normalize(f, dim=1)).pow(2).sum(dim=1).mean()
    zc = z - z.mean(dim=0, keepdim=True)
    cov = zc.T @ zc / (b - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    cov_loss = off.pow(2).sum() / d
    s = torch.linalg.svdvals(z)
    svd = -(s[:svd_topk] / s.sum().clamp_min(torch.finfo(s.dtype).tiny)).mean()
    return {"mse": mse, "cov": cov_loss, "svd": svd}


#: Loss = CE + lam * (w_mse * mse + w_cov * cov + w_svd * svd).
NMTUNE_PRESETS: dict[str, dict[str, float | int]] = {
    "paper": {"lam": 0.01, "w_mse": 1.0, "w_cov": 1.0, "w_svd": 1.0, "svd_topk": 1},
    "reference": {"lam": 1.0, "w_mse": 1.0, "w_cov": 0.04, "w_svd": 0.001, "svd_topk": 5},
}


@dataclass(frozen=True)
class NMTunePreset:
    """Resolved NMTune loss weights: a named preset with optional overrides.

    ``paper``: lambda 0.01 on equally weighted terms, svd top-1 (the paper text).
    ``reference``: lambda 1 with weights mse 1, cov 0.04, svd 0.001 and svd top-5 (public code).
    """

    name: str
    lam: float
    w_mse: float
    w_cov: float
    w_svd: float
    svd_topk: int

    @classmethod
    def resolve(
        cls,
        name: str = "reference",
        *,
        lam: float | None = None,
        w_mse: float | None = None,
        w_cov: float | None = None,
        w_svd: float | None = None,
        svd_topk: int | None = None,
    ) -> NMTunePreset:
        """The preset ``name`` with every non-None override applied (a user lambda wins)."""
        if name not in NMTUNE_PRESETS:
            raise UnknownNameError("NMTune preset", name, NMTUNE_PRESETS)
        values: dict[str, Any] = dict(NMTUNE_PRESETS[name])
        for key, val in (("lam", lam), ("w_mse", w_mse), ("w_cov", w_cov), ("w_svd", w_svd)):
            if val is not None:
                val = float(val)
                if not val >= 0.0 or val == float("inf"):
                    raise ConfigError(f"{key}={val} must be a finite number >= 0")
                values[key] = val
        if svd_topk is not None:
            if isinstance(svd_topk, bool) or not isinstance(svd_topk, int) or svd_topk < 1:
                raise ConfigError(f"svd_topk must be an int >= 1, got {svd_topk!r}")
            values["svd_topk"] = svd_topk
        return cls(name=name, **values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, z: torch.Tensor, f: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``CE + lam * (w_mse*mse + w_cov*cov + w_svd*svd)`` and the individual terms."""
        ce = F.cross_entropy(logits, targets)
        reg = nmtune_regularisers(z, f, svd_topk=self.svd_topk)
        total = ce + self.lam * (self.w_mse * reg["mse"] + self.w_cov * reg["cov"] + self.w_svd * reg["svd"])
        return total, {"ce": ce, **reg}


def create_head(method: str, dim: int, num_classes: int, **hp: Any) -> nn.Module:
    """Build the head for ``method`` (lp | mlp | nmtune); ``hp`` may hold ``ratio`` and ``depth``.

    ``mlp`` and ``nmtune`` share the residual MLP; they differ only in the loss (see
    :class:`NMTunePreset`). Architecture keys that do not apply (e.g. ``depth`` for ``lp``) may
    be passed as None; anything else raises ``ConfigError``.
    """
    if method not in HEAD_METHODS:
        raise UnknownNameError("head method", method, HEAD_METHODS)
    for name, val in (("dim", dim), ("num_classes", num_classes)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(f"{name} must be a positive int, got {val!r}")
    given = {k: v for k, v in hp.items() if v is not None}
    allowed = () if method == "lp" else ("ratio", "depth")
    extra = sorted(set(given) - set(allowed))
    if extra:
        raise ConfigError(
            f"head {method!r} does not take {', '.join(extra)}; allowed: {', '.join(allowed) or '(none)'}"
        )
    if method == "lp":
        return LinearHead(dim, num_classes)
    return ResidualMLPHead(dim, num_classes, **given)
