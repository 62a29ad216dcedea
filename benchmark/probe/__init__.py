"""Fit heads on cached frozen features and score them: the unit of work of every downstream sweep.

``fit_and_evaluate`` is the one-call form (tensors in, a result dict out). A sweep prepares a
pair's features once (``prepare_data``) and calls ``fit_many`` with the resolved hyper-parameters
of many fits, so validation, the device move and the frozen features' spectra are paid per pair,
and the fits that can share a computation (same ``HParams.batch_key`` and training rows) are
trained as one batch: the converged linear probe's whole L2 grid in one L-BFGS solve
(``probe.linear``), the seeds and learning rates / NMTune weights of one MLP architecture in one
stacked AdamW run (``probe.batched``). Each fit still gets its own result, or its own error.

Result of one fit: ``{"head", "hparams" (resolved, a dict), "train_loss" (the kept epoch's mean
loss; the objective for ``lp``), "epochs_run" (L-BFGS iterations for ``lp``), "train_rows" (rows the head
trained on), "curves" (per epoch
``train_loss`` and ``val_accuracy``; for ``lp`` the L2 search: ``l2``, ``val_accuracy_by_l2`` ...),
"summary" (``best_epoch``; for ``lp`` ``chosen_l2``, ``converged`` ...; for every fit ``train_accuracy``,
``chance`` and ``near_chance``: ``probe.health``), "eval": {set: {"accuracy",
"macro_f1", "sve", "lsvr", "sve_raw", "lsvr_raw", "n"}}}``; ``sve``/``lsvr`` are of the head output z
(z = f for linear probes), LSVR on a linear scale, NaN if z collapsed to a point.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.heads.registry import HParams, get_head, resolve_hparams
from benchmark.probe.batched import fit_gradient_heads
from benchmark.probe.data import PreparedData, prepare_data
from benchmark.probe.evaluate import evaluate_head, feature_spectrum, macro_f1
from benchmark.probe.health import health_summary
from benchmark.probe.stacked import supports
from benchmark.probe.train import TrainedHead, head_loss, init_head, train_head, training_setup


@dataclass(frozen=True)
class FitRequest:
    """One fit on prepared data: resolved hyper-parameters, head seed, optional training rows."""

    hparams: HParams
    seed: int = 0
    rows: np.ndarray | Sequence[int] | None = None  # positions in the pair's training rows (few-shot); None: all


def _rows(data: PreparedData, request: FitRequest) -> torch.Tensor | None:
    if request.rows is None:
        return None
    return torch.as_tensor(np.asarray(request.rows, dtype=np.int64), device=data.device)


def _fit_alone(data: PreparedData, request: FitRequest) -> TrainedHead | Exception:
    try:
        return train_head(data, request.hparams, seed=request.seed, rows=_rows(data, request))
    except Exception as err:  # noqa: BLE001 - one member's error, reported as its result
        return err


def _fit_group(data: PreparedData, requests: Sequence[FitRequest]) -> list[TrainedHead | Exception]:
    """Fit requests that share ``batch_key`` and rows as one computation; one result each.

    A group whose batched fit raises (not a member's divergence, which the batch isolates) is
    fitted again member by member, so a bad member can only fail itself.
    """
    head = get_head(requests[0].hparams.head)
    if head.fitter:
        fitter = head.resolve("fitter")
    else:
        template = init_head(requests[0].hparams, data.train_x.shape[1], data.num_classes, 0)
        if not supports(template):
            return [_fit_alone(data, r) for r in requests]
        fitter = fit_gradient_heads
    try:
        return list(fitter(data, requests))
    except Exception as err:  # noqa: BLE001
        if len(requests) == 1:
            return [err]
        return [res for r in requests for res in _fit_group(data, [r])]


def _result(trained: TrainedHead, data: PreparedData, request: FitRequest | None = None) -> dict[str, Any]:
    evaluated = evaluate_head(trained, data)
    x, y = data.train_x, data.train_y
    rows = _rows(data, request) if request is not None else None
    if rows is not None:
        x, y = x[rows], y[rows]
    val = evaluated.get(data.selection, {}).get("accuracy") if data.selection is not None else None
    health = health_summary(trained.head, x, y, data.selection_set(), val, data.num_classes)
    return {
        "head": trained.hparams.head,
        "hparams": trained.hparams.as_dict(),
        "train_loss": trained.train_loss,
        "epochs_run": trained.epochs_run,
        "train_rows": trained.train_rows,
        "curves": trained.curves,
        "summary": {**trained.summary, **health},
        "eval": evaluated,
    }


def _error(err: Exception, method: str) -> dict[str, Any]:
    return {
        "error": f"{type(err).__name__}: {err}",
        "head": method,
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    }


def fit_prepared(data: PreparedData, request: FitRequest) -> dict[str, Any]:
    """Train and score one head on prepared data (raises on a diverging fit)."""
    [trained] = _fit_group(data, [request])
    if isinstance(trained, Exception):
        raise trained
    return _result(trained, data, request)


def batch_groups(requests: Sequence[FitRequest]) -> list[list[int]]:
    """Positions of the requests that can share one computation, in order of first appearance."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, req in enumerate(requests):
        rows = None if req.rows is None else np.asarray(req.rows, dtype=np.int64).tobytes()
        groups.setdefault((req.hparams.batch_key(), rows), []).append(i)
    return list(groups.values())


def iter_fit_many(data: PreparedData, requests: Sequence[FitRequest]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(position, result)`` for every request, a batch group at a time, as groups finish.

    A failing fit gives an error record ``{"error": "Type: message", "traceback", "head"}``:
    one diverging fit must not sink the other fits of a sweep trial. Every result also carries
    ``seconds`` (its group's wall time divided by the group's size) and ``batch_members``.
    """
    for group in batch_groups(requests):
        started = time.perf_counter()
        fitted = _fit_group(data, [requests[i] for i in group])
        out = []
        for pos, trained in zip(group, fitted):
            method = requests[pos].hparams.head
            try:
                out.append(
                    (
                        pos,
                        _error(trained, method)
                        if isinstance(trained, Exception)
                        else _result(trained, data, requests[pos]),
                    )
                )
            except Exception as err:  # noqa: BLE001
                out.append((pos, _error(err, method)))
        share = (time.perf_counter() - started) / len(group)  # the group's wall time, shared out
        for pos, res in out:
            res["seconds"], res["batch_members"] = share, len(group)
            yield pos, res


def fit_many(data: PreparedData, requests: Sequence[FitRequest]) -> list[dict[str, Any]]:
    """Every request on the same prepared data, batched where possible; results in request order."""
    out: list[dict[str, Any] | None] = [None] * len(requests)
    for pos, res in iter_fit_many(data, requests):
        out[pos] = res
    return out  # type: ignore[return-value]


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
    data = prepare_data(
        train_x, train_y, test_x, test_y, device=device, class_subsets=class_subsets, num_classes=num_classes
    )
    return fit_prepared(data, FitRequest(hp, seed))


__all__ = [
    "FitRequest",
    "PreparedData",
    "TrainedHead",
    "batch_groups",
    "evaluate_head",
    "feature_spectrum",
    "fit_and_evaluate",
    "fit_many",
    "fit_prepared",
    "iter_fit_many",
    "head_loss",
    "macro_f1",
    "prepare_data",
    "resolve_hparams",
    "train_head",
    "training_setup",
]
