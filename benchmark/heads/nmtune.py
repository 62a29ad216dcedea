"""NMTune's three batch regularisers and its loss (Chen et al., ICLR 2024, section "NMTune").

``NMTuneLoss`` holds the resolved weights of one fit; it is built from the fit's ``HParams``
(where the preset was applied once, when the plan was made) and never resolves a preset again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.nn import functional as F

from benchmark.errors import ConfigError
from benchmark.heads.registry import HParams, nmtune_weights


def nmtune_regularisers(z: torch.Tensor, f: torch.Tensor, *, svd_topk: int = 1) -> dict[str, torch.Tensor]:
    """NMTune's three batch regularisers (scalars with gradients), as the paper defines them.

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


@dataclass(frozen=True)
class NMTuneLoss:
    """``CE + lam * (w_mse*mse + w_cov*cov + w_svd*svd)`` with fixed weights.

    ``name`` is the preset the weights came from (overrides applied on top).
    """

    name: str
    lam: float
    w_mse: float
    w_cov: float
    w_svd: float
    svd_topk: int

    @classmethod
    def from_hparams(cls, hp: HParams) -> NMTuneLoss:
        """The loss of a resolved NMTune fit (no preset lookup: ``hp`` already holds the weights)."""
        return cls(name=str(hp.preset), lam=float(hp.lam), w_mse=float(hp.w_mse), w_cov=float(hp.w_cov),
                   w_svd=float(hp.w_svd), svd_topk=int(hp.svd_topk))

    @classmethod
    def resolve(cls, name: str = "reference", **overrides: Any) -> NMTuneLoss:
        """The preset ``name`` with every non-None override (lam, w_mse, w_cov, w_svd, svd_topk)."""
        return cls(name=name, **nmtune_weights(name, **overrides))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, z: torch.Tensor, f: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss and the individual terms (``ce``, ``mse``, ``cov``, ``svd``)."""
        ce = F.cross_entropy(logits, targets)
        reg = nmtune_regularisers(z, f, svd_topk=self.svd_topk)
        total = ce + self.lam * (self.w_mse * reg["mse"] + self.w_cov * reg["cov"] + self.w_svd * reg["svd"])
        return total, {"ce": ce, **reg}

    loss = __call__


#: The name the loss has in the paper's terms: a preset of weights.
NMTunePreset = NMTuneLoss
