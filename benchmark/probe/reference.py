"""The yardstick of the converged linear probe: scikit-learn's LogisticRegression, tuned on validation.

What a careful researcher would run on the same cached features: ``LogisticRegression`` (lbfgs,
multinomial) fitted on the training rows for every ``C`` of a log grid, ``C`` chosen on the same
validation rows the probe selects on (best accuracy; ties to the lower validation log-loss, then
the smaller ``C``), scored on the test sets. Solved tightly (``tol`` 1e-6, up to 10,000
iterations, warm-started along the grid in increasing ``C``) so that it is a converged optimum,
on the features as given (``standardize=False``) or standardised with the training rows'
statistics. ``tests/test_heads_real_features.py`` and ``benchmarks/lp_vs_sklearn.py`` hold ``lp`` to
it through :func:`compare_lp_with_sklearn`, one pair per call, so that pairs can run in parallel
processes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

#: sklearn's C values tried: 10^-4 .. 10^6, two per decade (the tiny CLIP's features want C ~ 10^5).
C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 6, 21))

Split = tuple[np.ndarray, np.ndarray]


def _scores(clf: Any, x: np.ndarray, y: np.ndarray, subset: np.ndarray | None) -> tuple[float, float]:
    """Accuracy and mean log-loss of a fitted classifier (only ``subset``'s classes compete if given)."""
    from scipy.special import logsumexp

    scores = clf.decision_function(x)
    classes = np.asarray(clf.classes_)
    if subset is not None:
        keep = np.isin(classes, subset)
        scores, classes = scores[:, keep], classes[keep]
    pred = classes[scores.argmax(1)]
    col = {c: i for i, c in enumerate(classes)}
    idx = np.array([col.get(int(v), -1) for v in y])
    logp = scores - logsumexp(scores, axis=1, keepdims=True)
    ll = np.where(idx >= 0, -logp[np.arange(len(y)), np.maximum(idx, 0)], np.inf)
    return float((pred == y).mean()), float(ll.mean())


def tuned_logistic_regression(train: Split, val: Split, tests: Mapping[str, Split], *,
                              standardize: bool = False, c_grid: tuple[float, ...] = C_GRID,
                              class_subsets: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Fit every ``C``, keep the best on ``val``; ``{"C", "val_accuracy", "test": {set: accuracy},
    "test_accuracy" (mean over sets), "curve": {"C", "val_accuracy"}}``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x, y = np.asarray(train[0], dtype=np.float64), np.asarray(train[1])
    scaler = StandardScaler().fit(x) if standardize else None

    def prep(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        return scaler.transform(a) if scaler is not None else a

    xs, vx, vy = prep(x), prep(val[0]), np.asarray(val[1])
    clf = LogisticRegression(max_iter=10_000, tol=1e-6, warm_start=True)
    best: tuple[float, float, float] | None = None
    best_tests: dict[str, float] = {}
    curve_acc = []
    subsets = dict(class_subsets or {})
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in sorted(c_grid):
            clf.set_params(C=c)
            clf.fit(xs, y)
            acc, loss = _scores(clf, vx, vy, subsets.get("val"))
            curve_acc.append(acc)
            if best is None or (-acc, loss) < (-best[0], best[1]):
                best = (acc, loss, c)
                best_tests = {name: _scores(clf, prep(tx), np.asarray(ty), subsets.get(name))[0]
                              for name, (tx, ty) in tests.items()}
    assert best is not None
    return {"C": best[2], "val_accuracy": best[0], "test": best_tests,
            "test_accuracy": float(np.mean(list(best_tests.values()))),
            "curve": {"C": sorted(c_grid), "val_accuracy": curve_acc}}


def compare_lp_with_sklearn(payload: Any, lp_hparams: Any, standardized: bool = False) -> dict[str, Any]:
    """``lp``, the paper's ``lp_adamw`` and tuned sklearn on one pair's features, one thread.

    ``payload``: a ``FeaturePayload`` (train, val, tests, class subsets). Test accuracies are the
    mean over the pair's test sets. The row also holds both probes' fit records (``records``) and
    the seconds each side took; with ``standardized`` sklearn is also run on standardised features.
    """
    import torch

    from benchmark.heads import resolve_hparams
    from benchmark.probe import FitRequest, fit_many
    from benchmark.sweep import prepare_payload

    torch.set_num_threads(1)
    data = prepare_payload(payload)
    t0 = time.perf_counter()
    lp, paper = fit_many(data, [FitRequest(lp_hparams), FitRequest(resolve_hparams("lp_adamw"))])
    tests = list(payload.tests)
    row: dict[str, Any] = {"lp_seconds": time.perf_counter() - t0, "records": {"lp": lp, "lp_adamw": paper}}
    for name, rec in (("lp", lp), ("lp_adamw", paper)):
        if "error" in rec:
            raise RuntimeError(f"{name}: {rec['error']}")
        row[name] = sum(rec["eval"][t]["accuracy"] for t in tests) / len(tests)
        row[f"{name}_val"] = rec["eval"]["val"]["accuracy"]
    row.update(chosen_l2=lp["summary"]["chosen_l2"], converged=lp["summary"]["converged"],
               at_edge=lp["summary"]["chosen_l2_at_edge"], iterations=lp["summary"]["lbfgs_iterations"])
    t0 = time.perf_counter()
    for label, std in (("sklearn", False), ("sklearn_std", True)) if standardized else (("sklearn", False),):
        sk = tuned_logistic_regression(payload.train, payload.val, payload.tests, standardize=std,
                                       class_subsets=payload.class_subsets)
        row[label], row[f"{label}_C"], row[f"{label}_val"] = sk["test_accuracy"], sk["C"], sk["val_accuracy"]
    row["sklearn_seconds"] = time.perf_counter() - t0
    return row
