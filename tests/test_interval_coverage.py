"""The intervals the leaderboard and the claims print cover the truth at their stated rate.

Simulated studies with a known effect and known seed-level and head-level variance go through
the real code path (``leaderboard.leaderboard`` and ``claims.analyse`` on a fit-runs frame shaped
like ``Tracker.runs_frame("fit")``). Each study is one backbone family pre-trained with
``PRETRAIN_SEEDS`` seeds and fitted with ``HEAD_SEEDS`` head seeds per pre-training:

    LP(p)        = MU_LP + a_p                          (deterministic: the same for every head seed)
    NMTune(p, h) = MU_LP + EFFECT + a_p + b_p + e_ph
    a_p ~ N(0, SD_PRETRAIN), b_p ~ N(0, SD_INTERACTION), e_ph ~ N(0, SD_HEAD)

Over ``STUDIES`` studies, a 95 % interval must contain the true value (MU_LP, MU_LP + EFFECT,
EFFECT) in about 95 % of them. Counting pre-training x head seeds as independent replicates (the
rule before issue 23) makes the LP's interval about half as wide as it should be: on these
studies it covered 78.7 % (NMTune 83.9 %), and this test fails on that code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.claims import analyse
from benchmark.leaderboard import leaderboard

STUDIES, PRETRAIN_SEEDS, HEAD_SEEDS = 1000, 5, 2
MU_LP, EFFECT = 0.80, 0.01
SD_PRETRAIN, SD_INTERACTION, SD_HEAD = 0.02, 0.005, 0.01
CONFIDENCE = 0.95
# Acceptance band: with a correct 95 % interval the number of covering studies is
# Binomial(STUDIES, 0.95). The band holds its central 99.9 % (for 1000 studies 927-972, i.e.
# 92.7-97.2 %), so a correct implementation fails it for about 1 in 1000 simulation seeds, while
# the pseudo-replicated LP interval (coverage ~0.75) lies far outside. The seed is fixed, so the
# test itself is deterministic.
BAND = tuple(stats.binom.ppf([0.0005, 0.9995], STUDIES, CONFIDENCE) / STUDIES)


def simulated_runs(seed: int = 2023) -> pd.DataFrame:
    """Fit runs of ``STUDIES`` studies (backbones ``s0``...), one ID task each, LP and NMTune."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, SD_PRETRAIN, (STUDIES, PRETRAIN_SEEDS))
    b = rng.normal(0, SD_INTERACTION, (STUDIES, PRETRAIN_SEEDS))
    e = rng.normal(0, SD_HEAD, (STUDIES, PRETRAIN_SEEDS, HEAD_SEEDS))
    s, p, h = np.meshgrid(np.arange(STUDIES), np.arange(PRETRAIN_SEEDS), np.arange(HEAD_SEEDS), indexing="ij")
    s, p, h = s.ravel(), p.ravel(), h.ravel()
    lp = MU_LP + a[s, p]
    nm = MU_LP + EFFECT + a[s, p] + b[s, p] + e[s, p, h]
    frames = []
    for method, acc in (("lp", lp), ("nmtune", nm)):
        frames.append(
            pd.DataFrame(
                {
                    "backbone": [f"s{i}" for i in s],
                    "noise_ratio": 0.1,
                    "head": method,
                    "task": "a",
                    "task_kind": "id",
                    "pretrain_seed": p,
                    "head_seed": h,
                    "fraction": 1.0,
                    "val_accuracy": acc,
                    "test_accuracy": acc,
                    "test_macro_f1": acc,
                    "test_sve": 1.0,
                    "test_lsvr": np.nan,
                    "test_sve_raw": 1.0,
                    "test_lsvr_raw": np.nan,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _coverage(values: np.ndarray, half: np.ndarray, truth: float) -> float:
    return float(np.mean(np.abs(values - truth) <= half))


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return simulated_runs()


def test_leaderboard_intervals_cover_the_true_mean_at_the_stated_rate(runs) -> None:
    lb = leaderboard(runs)
    assert len(lb) == 2 * STUDIES
    for method, truth in (("lp", MU_LP), ("nmtune", MU_LP + EFFECT)):
        rows = lb[lb["head"] == method]
        cover = _coverage(rows.id_acc.to_numpy(), rows.id_acc_ci.to_numpy(), truth)
        assert BAND[0] <= cover <= BAND[1], (method, cover, BAND)
    assert (lb.n == PRETRAIN_SEEDS).all()  # the units: pre-training seeds, not pre-training x head seeds


def test_claim_intervals_cover_the_true_head_difference_at_the_stated_rate(runs) -> None:
    found = [
        f for f in analyse(runs)["4"] if f["what"] == "ID acc, NMTune - LP" and f["backbone"] != "all families, pooled"
    ]
    assert len(found) == STUDIES and all(f["estimate"].n == PRETRAIN_SEEDS for f in found)
    est = [f["estimate"] for f in found]
    cover = np.mean([e.low <= EFFECT <= e.high for e in est])
    assert BAND[0] <= cover <= BAND[1], (cover, BAND)
