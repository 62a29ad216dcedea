"""Noise-robust task losses that every gradient-trained head can train with instead of cross-entropy.

Chosen per fit by the ``loss`` hyper-parameter (``heads/gradient.py``; ``ce`` when unset), so
they compose with each head's own terms: NMTune + GCE is NMTune's regularisers added to GCE,
LGM + SCE matches the input gradients of SCE. For noisy downstream labels (the NMTune paper's
Sec. 4.3: noisy model learning composed with noisy label learning).

- ``gce``: generalised cross-entropy (Zhang & Sabuncu, NeurIPS 2018, arXiv 1805.07836, Sec. 3,
  the L_q loss): ``(1 - p_y^q) / q`` per row, ``q`` in (0, 1]; ``q -> 0`` is cross-entropy,
  ``q = 1`` the MAE. Default ``gce_q`` 0.7, the paper's.
- ``sce``: symmetric cross-entropy (Wang et al., ICCV 2019, arXiv 1908.06112, Sec. 3.3):
  ``alpha * CE + beta * RCE`` with the reverse cross-entropy ``RCE = -sum_k p_k log q_k`` against
  the one-hot label, ``log 0`` clipped to ``A = -4``: ``RCE = -A (1 - p_y)``. Defaults
  ``sce_alpha`` 0.1, ``sce_beta`` 1.0 (the paper's CIFAR-10 setting).

Rows are computed for G members at once (``StackedRowLoss``: logits G x B x K), each member with
its own loss and values; members left at ``ce`` get the engines' plain cross-entropy, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from benchmark.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from benchmark.heads.hparams import HParams

#: The losses ``loss`` selects from (``ce``: cross-entropy, the default).
ROBUST_LOSSES = ("ce", "gce", "sce")
#: Each robust loss's hyper-parameters and their defaults (the papers').
LOSS_PARAMS: dict[str, dict[str, float]] = {
    "ce": {},
    "gce": {"gce_q": 0.7},
    "sce": {"sce_alpha": 0.1, "sce_beta": 1.0},
}
SCE_LOG_ZERO = -4.0  # Wang et al.'s A: log 0 clipped for the reverse cross-entropy
#: How a fit's head label names its loss (``NMTune+GCE``).
LOSS_LABELS = {"gce": "GCE", "sce": "SCE"}


def finish_loss(values: dict[str, Any]) -> dict[str, Any]:
    """``finish`` hook of the gradient heads: ``ce`` is stored as unset (so a default fit's key is
    what it was before robust losses existed), a robust loss's own values are filled with the
    paper's defaults and checked, and values of a loss not chosen are refused."""
    loss = values.get("loss") or "ce"
    values["loss"] = None if loss == "ce" else loss
    for name, params in LOSS_PARAMS.items():
        for key, default in params.items():
            if name == loss:
                values[key] = default if values.get(key) is None else values[key]
            elif values.get(key) is not None:
                raise ConfigError(f"{key} applies to loss {name!r}, but this fit's loss is {loss!r}; set loss: {name}")
    q = values.get("gce_q")
    if q is not None and not 0.0 < float(q) <= 1.0:
        raise ConfigError(f"gce_q must be in (0, 1], got {q!r} (q -> 0 is cross-entropy, 1 the MAE)")
    for key in ("loss", *(k for params in LOSS_PARAMS.values() for k in params)):
        if values.get(key) is None:
            values.pop(key, None)  # unset: a cross-entropy fit holds exactly the values it held before
    return values


def loss_suffix(params: Any) -> str:
    """``+GCE`` / ``+SCE`` for a fit's params (a mapping, MLflow text included); ``""`` for CE."""
    loss = params.get("loss") if hasattr(params, "get") else None
    return f"+{LOSS_LABELS[loss]}" if isinstance(loss, str) and loss in LOSS_LABELS else ""


def head_with_loss(method: Any, loss: Any) -> Any:
    """The leaderboard's method of a fit: ``nmtune+gce`` for NMTune trained with GCE, so each head x
    loss is a row of its own; the head's name alone for cross-entropy (or no loss recorded)."""
    if not (isinstance(method, str) and isinstance(loss, str) and loss in LOSS_LABELS):
        return method
    return method if method.endswith(f"+{loss}") else f"{method}+{loss}"  # applied twice: once


def split_head(method: Any) -> tuple[Any, str | None]:
    """``nmtune+gce`` -> (``nmtune``, ``gce``); a plain head name -> (name, None)."""
    if isinstance(method, str) and "+" in method:
        base, _, loss = method.rpartition("+")
        if loss in LOSS_LABELS:
            return base, loss
    return method, None


def robust_rows(
    logits: torch.Tensor, y: torch.Tensor, kind: str, q: float = 0.7, alpha: float = 0.1, beta: float = 1.0
) -> torch.Tensor:
    """Each row's loss (any leading shape) for one member's ``kind`` (``gce``, ``sce``, ``ce``)."""
    import torch
    from torch.nn import functional as F

    k = logits.shape[-1]
    logp = F.log_softmax(logits.reshape(-1, k), dim=1)
    logp_y = logp.gather(1, y.reshape(-1, 1))[:, 0]
    if kind == "ce":
        rows = -logp_y
    elif kind == "gce":
        rows = (1.0 - torch.exp(q * logp_y)) / q
    elif kind == "sce":
        rows = alpha * -logp_y + beta * -SCE_LOG_ZERO * (1.0 - logp_y.exp())
    else:
        raise ConfigError(f"unknown loss {kind!r}; choose one of {', '.join(ROBUST_LOSSES)}")
    return rows.view(y.shape)


class StackedRowLoss:
    """Rows of G members' losses at once (logits G x B x K -> G x B), each member its own loss."""

    def __init__(self, hps: Sequence[HParams]) -> None:
        self.members = [
            (hp.loss or "ce", float(hp.gce_q or 0.7), float(hp.sce_alpha or 0.1), float(hp.sce_beta or 1.0))
            for hp in hps
        ]
        self.plain = all(m[0] == "ce" for m in self.members)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch
        from torch.nn import functional as F

        g, b, k = logits.shape
        ce = F.cross_entropy(logits.reshape(g * b, k), y.reshape(-1), reduction="none").view(g, b)
        if self.plain:
            return ce
        rows = [
            ce[i] if kind == "ce" else robust_rows(logits[i], y[i], kind, q, a, bb)
            for i, (kind, q, a, bb) in enumerate(self.members)
        ]
        return torch.stack(rows)
