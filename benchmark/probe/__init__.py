"""Fit heads on cached frozen features and score them: the unit of work of every downstream sweep.

``fit_and_evaluate`` is the one-call form (tensors in, a result dict out). A sweep prepares a
pair's features once (``prepare_data``) and calls ``fit_many`` with the resolved hyper-parameters
of many fits, so validation, the device move and the frozen features' spectra are paid per pair.

Result of one fit: ``{"method", "hparams" (resolved, a dict), "train_loss" (mean over the last
epoch), "epochs_run", "train_rows" (rows the head trained on), "eval": {set: {"accuracy", "macro_f1", "sve", "lsvr", "sve_raw",
"lsvr_raw", "n"}}}``; ``sve``/``lsvr`` are of the head output z (z = f for LP), LSVR on a
linear scale, NaN if z collapsed to a point.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.heads.registry import HParams, resolve_hparams
from benchmark.probe.data import PreparedData, prepare_data
from benchmark.probe.evaluate import evaluate_head, feature_spectrum, macro_f1
from benchmark.probe.train import TrainedHead, head_loss, train_head, training_setup


@dataclass(frozen=True)
class FitRequest:
    """One fit on prepared data: resolved hyper-parameters, head seed, optional training rows."""

    hparams: HParams
    seed: int = 0
    rows: np.ndarray | None = None  # positions in the pair's training rows (few-shot); None: all


def fit_prepared(data: PreparedData, request: FitRequest) -> dict[str, Any]:
    """Train and score one head on prepared data (raises on a diverging fit)."""
    rows = None if request.rows is None else torch.as_tensor(np.asarray(request.rows, dtype=np.int64),
                                                             device=data.device)
    trained = train_head(data, request.hparams, seed=request.seed, rows=rows)
    return {
        "method": request.hparams.method,
        "hparams": request.hparams.as_dict(),
        "train_loss": trained.train_loss,
        "epochs_run": trained.epochs_run,
        "train_rows": trained.train_rows,
        "eval": evaluate_head(trained, data),
    }


def fit_many(data: PreparedData, requests: Sequence[FitRequest]) -> list[dict[str, Any]]:
    """Every request on the same prepared data, in order; a failing fit becomes an error record.

    An error record is ``{"error": "Type: message", "traceback", "method"}``: one diverging fit
    must not sink the other fits of a sweep trial.
    """
    out: list[dict[str, Any]] = []
    for req in requests:
        try:
            out.append(fit_prepared(data, req))
        except Exception as err:  # noqa: BLE001 - recorded, the batch goes on
            out.append({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                        "method": req.hparams.method})
    return out


def fit_and_evaluate(
    method: str,
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    class_subsets: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    **hparams: Any,
) -> dict[str, Any]:
    """Train ``method`` (a registered head) on the training features and score every test set.

    ``test_x``/``test_y``: tensors (the set is named "test") or dicts keyed by set name.
    ``class_subsets``: ``{set_name: class indices}``; on that set only those logits compete
    (ImageNet-A/R style). ``num_classes``: head width, by default ``max(train_y) + 1``.
    ``hparams``: the method's hyper-parameters (``benchmark.heads.get_head(method).defaults``).
    """
    hp = resolve_hparams(method, **hparams)  # bad names fail before any data moves
    data = prepare_data(train_x, train_y, test_x, test_y, device=device, class_subsets=class_subsets,
                        num_classes=num_classes)
    return fit_prepared(data, FitRequest(hp, seed))


__all__ = ["FitRequest", "PreparedData", "TrainedHead", "evaluate_head", "feature_spectrum", "fit_and_evaluate",
           "fit_many", "fit_prepared", "head_loss", "macro_f1", "prepare_data", "resolve_hparams", "train_head",
           "training_setup"]
