"""Is a fit a result? A head that fits its training rows while its validation accuracy stays at chance.

Why: such a fit is reported as a number like any other (issue 23: NMTune at 10.8 %, chance 10 %,
next to an LP at 90 %, printed without a word), and a reader cannot tell a broken fit from a bad
head. The usual causes are a mismatch between how the head trains and how it is evaluated
(BatchNorm statistics: ``probe.bnstats``), a budget too short for the features' scale, or a head
that memorises. So every fit's summary carries:

- ``train_accuracy``: the kept head on the rows it trained on, with BatchNorm normalising by those
  rows' own statistics (as in training, where the loss fell): measured in evaluation mode with
  stale statistics it would sit at chance too and hide the very failure this flag is for;
- ``chance``: the accuracy of always predicting the validation set's most common class (at least
  1 / classes);
- ``near_chance``: 1.0 when validation accuracy is within ``VAL_MARGIN`` of chance while training
  accuracy is more than ``TRAIN_MARGIN`` above it, else 0.0.

Margins: 5 points covers the spread of a chance-level head's accuracy on a validation set of a
few hundred rows (binomial sd ~1.7 points at 10 % and 300 rows, so 3 sd), and 20 points above
chance on the training rows is a head that learnt something it then fails to show.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from benchmark.probe.bnstats import refresh_module

VAL_MARGIN = 0.05
TRAIN_MARGIN = 0.20
_CHUNK = 8192


def chance_level(y: torch.Tensor, num_classes: int) -> float:
    """Accuracy of always predicting the most common label of ``y`` (at least 1 / ``num_classes``)."""
    if y.numel() == 0:
        return 1.0 / num_classes
    share = float(torch.bincount(y.long().cpu()).max()) / y.numel()
    return max(share, 1.0 / num_classes)


@torch.no_grad()
def accuracy_on(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of ``head`` in evaluation mode on (x, y), in chunks."""
    was = head.training
    head.eval()
    correct = 0
    for i in range(0, x.shape[0], _CHUNK):
        correct += int((head(x[i : i + _CHUNK])[0].argmax(dim=1) == y[i : i + _CHUNK]).sum())
    head.train(was)
    return correct / max(x.shape[0], 1)


def is_near_chance(val_accuracy: float | None, train_accuracy: float, chance: float) -> bool:
    """The flag's rule (module doc)."""
    if val_accuracy is None:
        return False
    return val_accuracy <= chance + VAL_MARGIN and train_accuracy >= chance + TRAIN_MARGIN


def health_summary(
    head: torch.nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    val_accuracy: float | None,
    num_classes: int,
) -> dict[str, Any]:
    """``train_accuracy``, ``chance`` and ``near_chance`` of a fitted head (module doc)."""
    as_trained = copy.deepcopy(head)
    refresh_module(as_trained, train_x)
    train_acc = accuracy_on(as_trained, train_x, train_y)
    chance = chance_level(val[1] if val is not None else train_y, num_classes)
    return {
        "train_accuracy": train_acc,
        "chance": chance,
        "near_chance": float(is_near_chance(val_accuracy, train_acc, chance)),
    }
