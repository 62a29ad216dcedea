"""Claims analysis: planted effects are found, absent effects are not, one seed is not evidence."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.claims import analyse, claims_markdown, mean_ci, slope_ci


def _runs(effect_id: dict[float, float], ood_slope: float, seeds=(0, 1, 2, 3, 4), noise_sd=0.002) -> pd.DataFrame:
    """Fit runs of one backbone: ID/OOD tasks, three methods, selection-ready columns."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in seeds:
        for r in sorted(effect_id):
            for method, bonus in (("lp", 0.0), ("mlp", 0.02), ("nmtune", 0.03)):
                for kind, task, base in (("id", "a", 0.80), ("ood", "g", 0.50)):
                    acc = base + bonus + (effect_id[r] if kind == "id" else ood_slope * r) + rng.normal(0, noise_sd)
                    rows.append({"backbone": "cnn", "noise_ratio": r, "method": method, "task": task,
                                 "task_kind": kind, "pretrain_seed": seed, "head_seed": 0, "fraction": 1.0,
                                 "lam": 0.01 if method == "nmtune" else 0.0, "depth": 1 if method != "lp" else 0,
                                 "val_accuracy": acc, "test_accuracy": acc, "test_macro_f1": acc,
                                 "test_sve": 3.0 + r, "test_lsvr": 0.2 - 0.1 * r,
                                 "test_sve_raw": 3.0 + 2 * r + rng.normal(0, 0.01),
                                 "test_lsvr_raw": 0.2 - 0.2 * r + rng.normal(0, 0.002)})
    return pd.DataFrame(rows)


def test_planted_effects_are_found_with_the_right_sign() -> None:
    found = analyse(_runs({0.0: 0.0, 0.05: 0.01, 0.1: 0.008, 0.2: -0.01, 0.3: -0.03}, ood_slope=-0.2))
    claim1 = {f["what"]: f for f in found["1"]}
    assert claim1["ID LP acc, 5% - 0 %"]["held"]
    assert claim1["ID LP acc, 5% - 0 %"]["estimate"].value == pytest.approx(0.01, abs=0.003)
    assert all(f["held"] for f in found["2"])
    slope = [f for f in found["2"] if "slope" in f["what"]][0]["estimate"]
    assert slope.value == pytest.approx(-0.2, abs=0.02)
    assert all(f["held"] for f in found["3"])
    c4 = {f["what"]: f for f in found["4"]}
    assert c4["ID acc, NMTune - MLP"]["held"] and c4["ID acc, NMTune - MLP"]["estimate"].value == pytest.approx(0.01, abs=0.003)
    assert c4["OOD acc, NMTune - LP"]["estimate"].value == pytest.approx(0.03, abs=0.003)


def test_absent_effects_are_not_claimed() -> None:
    found = analyse(_runs({0.0: 0.0, 0.05: 0.0, 0.1: 0.0, 0.3: 0.0}, ood_slope=0.0, noise_sd=0.01))
    assert not any(f["held"] for f in found["1"])
    slope = [f for f in found["2"] if "slope" in f["what"]][0]
    assert not slope["held"] and slope["estimate"].low < 0 < slope["estimate"].high


def test_one_seed_is_reported_as_untestable() -> None:
    text = claims_markdown(_runs({0.0: 0.0, 0.05: 0.01, 0.1: 0.01}, ood_slope=-0.1, seeds=(0,)), "one-seed")
    assert "too few replicates" in text
    assert "Claim 1" in text and "not testable here" in text


def test_interval_helpers_match_scipy() -> None:
    from scipy import stats

    d = np.array([0.01, 0.03, 0.02, 0.05])
    e = mean_ci(d)
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert (e.low, e.high) == pytest.approx((lo, hi))
    x = np.array([0, 0.1, 0.2, 0.3, 0.0, 0.1, 0.2, 0.3])
    y = 2 - 3 * x + np.array([0.01, -0.02, 0.0, 0.01, -0.01, 0.02, 0.0, -0.01])
    s = slope_ci(x, y)
    assert s.value == pytest.approx(-3, abs=0.1) and s.high < 0


def test_seeds_needed_by_hand() -> None:
    """Undecided mean difference: n = ceil(((z_.975 + z_.8) * sd / |mean|)^2), worked out by hand."""
    d = np.array([0.010, -0.004, 0.006, 0.002, -0.001])
    e = mean_ci(d)
    assert e.verdict == "interval includes 0"
    mean, sd = d.mean(), d.std(ddof=1)  # 0.0026, 0.00555
    by_hand = math.ceil(((1.959964 + 0.841621) * sd / abs(mean)) ** 2)
    assert e.seeds_needed() == by_hand == 36
    # a slope's standard error shrinks as 1/sqrt(points): same rule in points of the regression
    x = np.repeat([0.0, 0.1, 0.3], 5)
    y = 0.01 * x + np.tile([0.004, -0.003, 0.001, -0.002, 0.0], 3)
    s = slope_ci(x, y)
    assert s.kind == "slope" and s.verdict == "interval includes 0"
    se = (s.high - s.low) / 2 / stats.t.ppf(0.975, len(x) - 2)
    assert s.seeds_needed() == math.ceil(len(x) * ((1.959964 + 0.841621) * se / abs(s.value)) ** 2)
    assert s.seeds_needed() > len(x)
    # decided or degenerate estimates need no power estimate beyond what they have
    assert mean_ci(np.array([0.01, 0.012, 0.011])).seeds_needed() == 3
    assert mean_ci(np.array([0.01])).seeds_needed() is None
