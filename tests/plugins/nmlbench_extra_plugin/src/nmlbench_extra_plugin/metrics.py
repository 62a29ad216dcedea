"""An outside metric for nml-bench: balanced accuracy (the mean of per-class recalls), tests only.

Found through the entry-point group ``nmlbench.metrics``; importing the module registers it. It
reads only labels and predictions, so every evaluation set of every fit gets it, and the
leaderboard gains ``id_balanced_accuracy`` / ``ood_balanced_accuracy`` columns.
"""

from __future__ import annotations

from sklearn.metrics import balanced_accuracy_score

from benchmark.metrics import MetricInputs, register_metric


@register_metric("balanced_accuracy", label="bal. acc", percent=True, digits=2)
def balanced_accuracy(inp: MetricInputs) -> float:
    """Mean recall over the classes present in the set (sklearn's definition)."""
    y = inp.labels.cpu().numpy() if hasattr(inp.labels, "cpu") else inp.labels
    p = inp.predictions.cpu().numpy() if hasattr(inp.predictions, "cpu") else inp.predictions
    return float(balanced_accuracy_score(y, p))
