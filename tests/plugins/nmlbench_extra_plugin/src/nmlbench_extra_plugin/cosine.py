"""A cosine-classifier head: a linear layer on L2-normalised features with a learnable temperature.

``logits = t * normalize(f) @ normalize(W).T``, ``t = exp(log_t)`` learnt from ``temperature``;
``z = normalize(f)`` is what the classifier reads. Trained like the built-in gradient heads
(AdamW + cosine schedule, nml-bench's shared ``epochs``/``lr``/... declarations) with
cross-entropy smoothed by ``label_smoothing``. nml-bench's batched engine cannot stack this
module, so each fit trains on its own (``benchmark.probe`` falls back to that by itself).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.heads import HeadSpec, HParam, register_head
from benchmark.heads.gradient import gradient_hparams


class CosineHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, temperature: float = 10.0) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.normalize(f, dim=1)
        return self.log_temperature.exp() * (z @ F.normalize(self.classifier.weight, dim=1).T), z


class SmoothedCrossEntropy:
    """One fit's loss: cross-entropy with its ``label_smoothing``."""

    def __init__(self, hp: Any) -> None:
        self.label_smoothing = float(hp.label_smoothing)

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, z: torch.Tensor, f: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, {"ce": loss}


COSINE = register_head(
    HeadSpec(
        name="cosine",
        label="Cosine",
        order=10,
        description="cosine classifier: linear layer on L2-normalised features with a learnable temperature, "
        "label-smoothed cross-entropy",
        hparams=(
            *gradient_hparams(lr=1e-2, weight_decay=0.0),
            HParam("temperature", "float", 10.0, "initial logit scale", positive=True, arch=True, label="τ{:g}"),
            HParam(
                "label_smoothing",
                "float",
                0.1,
                "share of the target spread over all classes",
                maximum=1.0,
                per_member=True,
                label="ls{:g}",
            ),
        ),
        builder=CosineHead,
        loss=SmoothedCrossEntropy,
        labelled=("temperature", "label_smoothing"),
        style=("tab:purple", "D"),
        default=False,
    )
)
