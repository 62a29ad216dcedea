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


def nmtune_regularisers(z: torch.Tensor, f: torch.Tensor, *,
                        svd_topk: int | torch.Tensor = 1) -> dict[str, torch.Tensor]:
    """NMTune's three batch regularisers (with gradients), as the paper defines them.

    - ``mse``: ``mean_b || z_b/||z_b|| - f_b/||f_b|| ||^2``, keeps z close to the pre-trained f.
    - ``cov``: ``(1/D) * sum_{i != j} Cov(z)_{ij}^2`` with the centred batch covariance
      (divided by B - 1); decorrelates dimensions, which raises SVE.
    - ``svd``: ``- mean(s_1..s_k) / sum_j s_j`` of the (uncentred) batch ``z``; ``k = 1`` is
      the paper's ``-s_1 / sum s`` and raises LSVR, ``k = 5`` the reference code's variant.

    ``z``, ``f``: B x D (scalars out), or G x B x D for G heads trained together (``(G,)``
    tensors out; ``svd_topk`` may then be a ``(G,)`` integer tensor, one k per head).
    """
    batched = z.ndim == 3
    if z.ndim not in (2, 3) or z.shape != f.shape:
        raise ConfigError(f"z and f must both be B x D (or G x B x D), got {tuple(z.shape)} and {tuple(f.shape)}")
    if not batched:
        z, f = z.unsqueeze(0), f.unsqueeze(0)
    g, b, d = z.shape
    if b < 2:
        raise ConfigError("NMTune's regularisers need a batch of at least 2 samples; raise batch_size")
    if isinstance(svd_topk, torch.Tensor):
        topk = svd_topk.to(device=z.device, dtype=torch.long).reshape(-1).expand(g)
    elif isinstance(svd_topk, bool) or not isinstance(svd_topk, int):
        topk = None
    else:
        topk = torch.full((g,), svd_topk, dtype=torch.long, device=z.device)
    if topk is None or bool((topk < 1).any()):
        raise ConfigError(f"svd_topk must be an int >= 1, got {svd_topk!r}")
    mse = (F.normalize(z, dim=2) - F.normalize(f, dim=2)).pow(2).sum(dim=2).mean(dim=1)
    zc = z - z.mean(dim=1, keepdim=True)
    cov = zc.transpose(1, 2) @ zc / (b - 1)
    off = cov - torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))
    cov_loss = off.pow(2).sum(dim=(1, 2)) / d
    s = torch.linalg.svdvals(z)
    k = topk.clamp(max=s.shape[1])
    top = torch.arange(s.shape[1], device=z.device).unsqueeze(0) < k.unsqueeze(1)
    ratios = s / s.sum(dim=1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
    svd = -(ratios * top).sum(dim=1) / k
    out = {"mse": mse, "cov": cov_loss, "svd": svd}
    return out if batched else {name: v[0] for name, v in out.items()}


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
