"""The converged LP against scikit-learn on the same problem, on small synthetic features (fast).

``tests/test_heads_real_features.py`` runs the same check on real backbones' features; this one
pins the L2 <-> C mapping on both scalings (global, per-dimension) and shows that the check fails
for a probe stopped early.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.extraction import FeaturePayload
from benchmark.heads import resolve_hparams
from benchmark.probe.reference import (
    c_for_l2,
    logistic_objective,
    lp_at_sklearn_objective,
    optimum_check_failures,
)


def _payload(seed: int = 0, n: int = 300, d: int = 12, k: int = 4) -> FeaturePayload:
    """Gaussian classes with unequal per-dimension scales (so the two scalings differ)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    scales = np.geomspace(0.05, 3.0, d)

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(m) % k
        x = (centres[y] + rng.normal(size=(m, d))) * scales + 0.7
        return x.astype(np.float32), y.astype(np.int64)

    return FeaturePayload(train=draw(n), val=draw(120), tests={"test": draw(200)}, num_classes=k)


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("l2", [1e-4, 1e-2])
def test_lp_at_a_fixed_l2_is_sklearns_optimum(standardize, l2):
    hp = resolve_hparams("lp", l2_min=l2, l2_max=l2, l2_steps=1, l2_refine=0, standardize=standardize)
    row = lp_at_sklearn_objective(_payload(), hp)
    assert row["l2"] == l2 and row["converged"] == 1.0
    assert not optimum_check_failures(row), optimum_check_failures(row)
    assert row["objective_excess"] >= -row["objective_excess_allowed"]  # sklearn converged as tightly
    for name, (ours, theirs) in row["accuracy"].items():
        # the same optimum: at most a near-tied row of an evaluation set may flip
        assert abs(ours - theirs) <= 1 / row["test_rows"][name] + 1e-12, (name, ours, theirs)


def test_an_lp_stopped_early_fails_the_objective_check():
    hp = resolve_hparams("lp", l2_min=1e-4, l2_max=1e-4, l2_steps=1, l2_refine=0, max_iter=3)
    row = lp_at_sklearn_objective(_payload(), hp)
    assert row["converged"] == 0.0
    assert len(optimum_check_failures(row)) == 2, (row["gradient_norm"], row["objective_excess"])


def test_c_for_l2_and_the_objective_are_sklearns_scaling():
    """``C = 1 / (l2 n s^2)``: sklearn's objective divided by ``C n`` is the LP's mean loss plus
    ``l2/2 ||W||^2`` for ``W = s * coef`` (the weight on the scaled features)."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    coef, intercept, l2, s = rng.normal(size=(3, 3)), rng.normal(size=3), 0.03, 0.4
    c = c_for_l2(l2, len(y), s)
    logits = x @ coef.T + intercept
    mean_ce = float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(50), y]))
    lp_value = mean_ce + l2 / 2 * np.square(s * coef).sum()
    assert logistic_objective(coef, intercept, x, y, c) / (c * len(y)) == pytest.approx(lp_value, rel=1e-12)
