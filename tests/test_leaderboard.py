"""Leaderboard: selection on validation (never test), task means, seed means, t-intervals, n.

A small synthetic runs frame (the shape ``Tracker.runs_frame`` returns) is built with traps:
a head config with the best *test* accuracy but a worse validation accuracy, and a validation
tie. Expected numbers are recomputed here by plain loops and ``scipy.stats.t.interval``; the
rendered markdown is compared with a golden file (regenerate with NMLBENCH_UPDATE_GOLDEN=1).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.errors import ConfigError
from benchmark.leaderboard import leaderboard, render, select_on_validation
from support import GRID, ID_TASKS, OOD_TASKS, synthetic_runs  # shared with test_report

GOLDEN = Path(__file__).parent / "golden" / "leaderboard_synthetic.md"


def expected(df: pd.DataFrame) -> dict[tuple, dict[str, list[float]]]:
    """Per (noise, method): per-seed lists of the ID/OOD means, by explicit loops."""
    out: dict[tuple, dict[str, list[float]]] = {}
    for noise, method in itertools.product((0.0, 0.1), GRID):
        acc: dict[str, list[float]] = {"id_acc": [], "id_f1": [], "ood_acc": [], "sve": [], "lsvr": []}
        for seed in (0, 1, 2):
            chosen = {}
            for task in ID_TASKS + OOD_TASKS:
                cand = df[(df.noise_ratio == noise) & (df.method == method) & (df.task == task)
                          & (df.pretrain_seed == seed)]
                best = None
                for _, r in cand.iterrows():
                    lam = 0.0 if pd.isna(r["lam"]) else r["lam"]
                    dep = 0 if pd.isna(r.depth) else r.depth
                    score = (r.val_accuracy, -lam, -dep)
                    if best is None or score > best[0]:
                        best = (score, r)
                chosen[task] = best[1]
            acc["id_acc"].append(np.mean([chosen[t].test_accuracy for t in ID_TASKS]))
            acc["id_f1"].append(np.mean([chosen[t].test_macro_f1 for t in ID_TASKS]))
            acc["sve"].append(np.mean([chosen[t].test_sve for t in ID_TASKS]))
            acc["ood_acc"].append(np.mean([chosen[t].test_accuracy for t in OOD_TASKS]))
            acc["lsvr"].append(np.mean([chosen[t].test_lsvr for t in OOD_TASKS]))
        out[(noise, method)] = acc
    return out


def test_selection_uses_validation_never_test():
    df = synthetic_runs()
    keys = ["backbone", "noise_ratio", "method", "task", "pretrain_seed", "head_seed", "fraction"]
    best = select_on_validation(df, keys)
    assert len(best) == 2 * 2 * 3 * 3  # noise x method x task x seed
    row = best[(best.noise_ratio == 0.0) & (best.method == "nmtune") & (best.task == "a") & (best.pretrain_seed == 0)]
    assert len(row) == 1
    # The 0.99-test config is rejected; of the two 0.95-val configs the smaller lambda wins.
    assert row.iloc[0]["lam"] == 0.01 and row.iloc[0]["depth"] == 2
    assert row.iloc[0]["test_accuracy"] == pytest.approx(0.61)


def test_means_intervals_and_n_match_independent_computation():
    df = synthetic_runs()
    lb = leaderboard(df)
    assert list(lb.columns) == ["backbone", "noise_ratio", "method", "id_acc", "id_acc_ci", "id_f1", "id_f1_ci",
                                "ood_acc", "ood_acc_ci", "sve", "sve_ci", "lsvr", "lsvr_ci", "sve_raw",
                                "lsvr_raw", "n"]
    assert list(zip(lb.noise_ratio, lb.method)) == [(0.0, "lp"), (0.0, "nmtune"), (0.1, "lp"), (0.1, "nmtune")]
    exp = expected(df)
    for _, r in lb.iterrows():
        e = exp[(r.noise_ratio, r.method)]
        assert r.n == 3
        for col, vals in e.items():
            assert r[col] == pytest.approx(np.mean(vals), abs=1e-12)
            lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=stats.sem(vals))
            assert r[f"{col}_ci"] == pytest.approx((hi - lo) / 2, rel=1e-9)
        assert r.sve_raw == pytest.approx(4.0 + r.noise_ratio)
        assert r.lsvr_raw == pytest.approx(0.2 - r.noise_ratio)


def test_single_replicate_has_no_interval_and_fractions_split_rows():
    df = synthetic_runs()
    one = leaderboard(df[df.pretrain_seed == 0])
    assert (one.n == 1).all() and one.id_acc_ci.isna().all()
    two = pd.concat([df, df.assign(fraction=0.1, test_accuracy=df.test_accuracy - 0.2)])
    lb = leaderboard(two)
    assert "fraction" in lb.columns and len(lb) == 8
    full, few = lb[lb.fraction == 1.0].reset_index(drop=True), lb[lb.fraction == 0.1].reset_index(drop=True)
    np.testing.assert_allclose(few.id_acc, full.id_acc - 0.2, atol=1e-12)


def test_missing_ood_and_frozen_backbone_without_noise_ratio():
    df = synthetic_runs()
    frozen = df[(df.noise_ratio == 0.0) & (df.task_kind == "id")].assign(backbone="mobilenet", noise_ratio=np.nan)
    lb = leaderboard(frozen)
    assert len(lb) == 2 and lb.noise_ratio.isna().all() and lb.ood_acc.isna().all()
    assert "–" in render(lb, "table")


def test_bad_frames_are_rejected_with_the_missing_columns():
    with pytest.raises(ConfigError, match="val_accuracy"):
        leaderboard(synthetic_runs().drop(columns=["val_accuracy"]))
    with pytest.raises(ConfigError, match="allowed: table, csv, markdown"):
        render(leaderboard(synthetic_runs()), "html")
    assert leaderboard(pd.DataFrame()).empty


def test_render_golden_markdown_and_csv_roundtrip():
    lb = leaderboard(synthetic_runs())
    md = render(lb, "markdown")
    if os.environ.get("NMLBENCH_UPDATE_GOLDEN"):
        GOLDEN.write_text(md)
    assert md == GOLDEN.read_text()
    first = lb.iloc[0]
    assert f"{first.id_acc * 100:.2f} ± {first.id_acc_ci * 100:.2f}" in md
    back = pd.read_csv(__import__("io").StringIO(render(lb, "csv")))
    np.testing.assert_allclose(back.id_acc, lb.id_acc, rtol=1e-12)
    assert "ID acc (%)" in render(lb, "table")
