"""NMTune (``nmtune``; Chen et al., ICLR 2024, section "NMTune"): the residual MLP with three batch
regularisers, its hyper-parameters, presets and loss, per member and stacked.

The loss is ``CE + lam * (w_mse * mse + w_cov * cov + w_svd * svd)``. ``NMTuneLoss`` holds the
resolved weights of one fit; it is built from the fit's ``HParams`` (where the preset was
applied once, when the plan was made) and never resolves a preset again. ``NMTuneStackedLoss``
is the same loss for G members trained as one batch (``probe.batched``), each with its weights.

The declaration imports no torch (the suite schema reads it); the loss code imports torch when
it first runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from benchmark.errors import ConfigError, UnknownNameError
from benchmark.heads.gradient import gradient_hparams
from benchmark.heads.hparams import HParam, HParams, as_int, unchecked
from benchmark.heads.mlp import RESIDUAL_MLP
from benchmark.heads.registry import HeadSpec, register_head

if TYPE_CHECKING:
    import torch

#: ``paper``: lambda 0.01 on equally weighted terms, svd top-1 (the paper's text); ``reference``:
#: lambda 1 with mse 1, cov 0.04, svd 0.001 and svd top-5 (the public reference code).
NMTUNE_PRESETS: dict[str, dict[str, float | int]] = {
    "paper": {"lam": 0.01, "w_mse": 1.0, "w_cov": 1.0, "w_svd": 1.0, "svd_topk": 1},
    "reference": {"lam": 1.0, "w_mse": 1.0, "w_cov": 0.04, "w_svd": 0.001, "svd_topk": 5},
}
NMTUNE_WEIGHTS = ("lam", "w_mse", "w_cov", "w_svd")


def nmtune_weights(preset: str, **overrides: Any) -> dict[str, Any]:
    """NMTune's loss weights: the preset's values with every non-None override applied."""
    if preset not in NMTUNE_PRESETS:
        raise UnknownNameError("NMTune preset", str(preset), NMTUNE_PRESETS)
    values: dict[str, Any] = dict(NMTUNE_PRESETS[preset])
    for key in NMTUNE_WEIGHTS:
        if overrides.get(key) is not None:
            v = float(overrides[key])
            if not v >= 0.0 or v == math.inf:
                raise ConfigError(f"{key}={v} must be a finite number >= 0")
            values[key] = v
    if overrides.get("svd_topk") is not None:
        values["svd_topk"] = as_int("svd_topk", overrides["svd_topk"], 1)
    return values


def apply_preset(values: dict[str, Any]) -> dict[str, Any]:
    """``finish``: the preset fills the weights that were not given (checked with the given ones)."""
    values.update(nmtune_weights(values["preset"], **{k: values.get(k) for k in (*NMTUNE_WEIGHTS, "svd_topk")}))
    return values


def _weight(name: str, doc: str, tiebreak: int | None = None, label: str | None = None) -> HParam:
    return HParam(name, "float", None, doc, check=unchecked, per_member=True, tiebreak=tiebreak, label=label)


NMTUNE = register_head(
    HeadSpec(
        name="nmtune",
        label="NMTune",
        order=3,
        description="residual MLP with NMTune's consistency, covariance and dominant-SVD regularisers",
        hparams=(
            *gradient_hparams(),
            *RESIDUAL_MLP,
            HParam(
                "preset",
                "str",
                "reference",
                "paper | reference: the weights not given",
                check=unchecked,
                per_member=True,
            ),
            _weight("lam", "weight of the regularisers (lambda)", tiebreak=0, label="λ{:g}"),
            _weight("w_mse", "weight of the consistency term"),
            _weight("w_cov", "weight of the covariance term"),
            _weight("w_svd", "weight of the dominant-SVD term"),
            HParam("svd_topk", "int", None, "singular values in the SVD term", check=unchecked, per_member=True),
        ),
        builder="benchmark.heads.modules:ResidualMLPHead",
        loss="benchmark.heads.nmtune:NMTuneLoss.from_hparams",
        stacked_loss="benchmark.heads.nmtune:NMTuneStackedLoss",
        finish=apply_preset,
        labelled=("lam", "depth"),
        style=("tab:green", "^"),
        contends_with=("mlp", "lp"),
    )
)


def nmtune_regularisers(
    z: torch.Tensor, f: torch.Tensor, *, svd_topk: int | torch.Tensor = 1
) -> dict[str, torch.Tensor]:
    """NMTune's three batch regularisers (with gradients), as the paper defines them.

    - ``mse``: ``mean_b || z_b/||z_b|| - f_b/||f_b|| ||^2``, keeps z close to the pre-trained f.
    - ``cov``: ``(1/D) * sum_{i != j} Cov(z)_{ij}^2`` with the centred batch covariance
      (divided by B - 1); decorrelates dimensions, which raises SVE.
    - ``svd``: ``- mean(s_1..s_k) / sum_j s_j`` of the (uncentred) batch ``z``; ``k = 1`` is
      the paper's ``-s_1 / sum s`` and raises LSVR, ``k = 5`` the reference code's variant.

    ``z``, ``f``: B x D (scalars out), or G x B x D for G heads trained together (``(G,)``
    tensors out; ``svd_topk`` may then be a ``(G,)`` integer tensor, one k per head).
    """
    import torch
    from torch.nn import functional as F

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
        return cls(
            name=str(hp.preset),
            lam=float(hp.lam),
            w_mse=float(hp.w_mse),
            w_cov=float(hp.w_cov),
            w_svd=float(hp.w_svd),
            svd_topk=int(hp.svd_topk),
        )

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
        from torch.nn import functional as F

        ce = F.cross_entropy(logits, targets)
        reg = nmtune_regularisers(z, f, svd_topk=self.svd_topk)
        total = ce + self.lam * (self.w_mse * reg["mse"] + self.w_cov * reg["cov"] + self.w_svd * reg["svd"])
        return total, {"ce": ce, **reg}

    loss = __call__


#: The name the loss has in the paper's terms: a preset of weights.
NMTunePreset = NMTuneLoss


class NMTuneStackedLoss:
    """NMTune's loss of G members at once, each with its own weights (float32 tensors, one row per
    member): ``ce + lam * (w_mse * mse + w_cov * cov + w_svd * svd)`` on G x B x D batches."""

    def __init__(self, hps: list[HParams], device: torch.device) -> None:
        import torch

        f32 = torch.float32
        self.lam = torch.tensor([float(h.lam) for h in hps], dtype=f32, device=device)
        self.w = torch.tensor(
            [[float(h.w_mse), float(h.w_cov), float(h.w_svd)] for h in hps], dtype=f32, device=device
        ).view(-1, 3)
        self.topk = torch.tensor([int(h.svd_topk) for h in hps], dtype=torch.long, device=device)

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, z: torch.Tensor, f: torch.Tensor, ce: torch.Tensor
    ) -> torch.Tensor:
        r = nmtune_regularisers(z, f, svd_topk=self.topk)
        extra = self.lam * (self.w[:, 0] * r["mse"] + self.w[:, 1] * r["cov"] + self.w[:, 2] * r["svd"])
        return ce + extra
