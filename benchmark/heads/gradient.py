"""The hyper-parameters of every gradient-trained head (AdamW + cosine on cached features).

Declared once here and listed by each head that ``probe.train`` / ``probe.batched`` train, with
the head's own defaults (``gradient_hparams(lr=0.1, ...)``). Tie-break ranks: after the heads'
own axes (NMTune's ``lam`` 0, the MLP's ``depth`` 1 and ``width`` 2) come ``epochs``, ``lr``,
``weight_decay``, ``batch_size``; the smaller value is the simpler head. ``loss`` chooses the
task loss every gradient head trains with (``heads/robust.py``: cross-entropy, GCE or SCE).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from benchmark.heads.hparams import HParam

EPOCH_SELECTIONS: tuple[str, ...] = ("best_val", "last")

EPOCHS = HParam("epochs", "int", 30, "training epochs (one cosine schedule)", minimum=1, tiebreak=3)
BATCH_SIZE = HParam("batch_size", "int", 64, "mini-batch rows (BatchNorm needs 2)", minimum=2, tiebreak=6)
LR = HParam("lr", "float", 1e-3, "AdamW learning rate", positive=True, per_member=True, tiebreak=4)
WEIGHT_DECAY = HParam("weight_decay", "float", 1e-4, "AdamW weight decay", per_member=True, tiebreak=5)
#: The task loss (``heads/robust.py``): unset is cross-entropy, so a fit that does not choose keeps its key.
LOSS = HParam(
    "loss",
    "choice",
    None,
    "ce | gce | sce: the task loss the head's own terms add to (generalised / symmetric cross-entropy)",
    choices=("ce", "gce", "sce"),
    per_member=True,
)
GCE_Q = HParam("gce_q", "float", None, "GCE's q in (0, 1] (loss: gce; default 0.7)", positive=True, per_member=True)
SCE_ALPHA = HParam("sce_alpha", "float", None, "SCE's CE weight (loss: sce; default 0.1)", per_member=True)
SCE_BETA = HParam("sce_beta", "float", None, "SCE's reverse-CE weight (loss: sce; default 1.0)", per_member=True)
EPOCH_SELECTION = HParam(
    "epoch_selection",
    "choice",
    "best_val",
    "best_val: keep the epoch with the best validation accuracy of one cosine run; last: the paper's fixed length",
    choices=EPOCH_SELECTIONS,
)


def gradient_hparams(**defaults: Any) -> tuple[HParam, ...]:
    """``epochs, batch_size, lr, weight_decay, epoch_selection`` and the task loss (``loss``,
    ``gce_q``, ``sce_alpha``, ``sce_beta``; unset: cross-entropy) with these defaults overridden."""
    out = []
    for p in (EPOCHS, BATCH_SIZE, LR, WEIGHT_DECAY, EPOCH_SELECTION, LOSS, GCE_Q, SCE_ALPHA, SCE_BETA):
        out.append(replace(p, default=defaults.pop(p.name)) if p.name in defaults else p)
    if defaults:
        raise TypeError(f"gradient_hparams: not gradient hyper-parameters: {', '.join(defaults)}")
    return tuple(out)
