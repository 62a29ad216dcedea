"""Leaderboard: selection on validation (never test), task means, seed means, t-intervals, n.

A small synthetic runs frame (the shape ``Tracker.runs_frame`` returns) is built with traps:
a head config with the best *test* accuracy but a worse validation accuracy, and a validation
tie. Expected numbers are recomputed here by plain loops and ``scipy.stats.t.interval``; the
rendered markdown is compared with a golden file (regenerate with NMLBENCH_UPDATE_GOLDEN=1).
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from support import GRID, ID_TASKS, OOD_TASKS, synthetic_runs  # shared with test_report

from benchmark.errors import ConfigError
from benchmark.leaderboard import leaderboard, select_on_validation
from benchmark.leaderboard_text import render

GOLDEN = Path(__file__).parent / "golden" / "leaderboard_synthetic.md"


def expected(df: pd.DataFrame) -> dict[tuple, dict[str, list[float]]]:
    """Per (noise, method): per-seed lists of the ID/OOD means, by explicit loops."""
    out: dict[tuple, dict[str, list[float]]] = {}
    for noise, method in itertools.product((0.0, 0.1), GRID):
        acc: dict[str, list[float]] = {"id_acc": [], "id_f1": [], "ood_acc": [], "sve": [], "lsvr": []}
        for seed in (0, 1, 2):
            chosen = {}
            for task in ID_TASKS + OOD_TASKS:
                cand = df[
                    (df.noise_ratio == noise) & (df["head"] == method) & (df.task == task) & (df.pretrain_seed == seed)
                ]
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
    keys = ["backbone", "noise_ratio", "head", "task", "pretrain_seed", "head_seed", "fraction"]
    best = select_on_validation(df, keys)
    assert len(best) == 2 * 2 * 3 * 3  # noise x method x task x seed
    row = best[(best.noise_ratio == 0.0) & (best["head"] == "nmtune") & (best.task == "a") & (best.pretrain_seed == 0)]
    assert len(row) == 1
    # The 0.99-test config is rejected; of the two 0.95-val configs the smaller lambda wins.
    assert row.iloc[0]["lam"] == 0.01 and row.iloc[0]["depth"] == 2
    assert row.iloc[0]["test_accuracy"] == pytest.approx(0.61)


def test_means_intervals_and_n_match_independent_computation():
    df = synthetic_runs()
    lb = leaderboard(df)
    assert list(lb.columns) == [
        "backbone",
        "noise_ratio",
        "head",
        "id_acc",
        "id_acc_ci",
        "id_f1",
        "id_f1_ci",
        "ood_acc",
        "ood_acc_ci",
        "sve",
        "sve_ci",
        "lsvr",
        "lsvr_ci",
        "sve_raw",
        "lsvr_raw",
        "n",
        "n_pretrain",
        "n_head",
        "flagged",
        "id_rank",
        "id_rank_low",
        "id_rank_high",
        "ood_rank",
        "ood_rank_low",
        "ood_rank_high",
        "rank_cells",
    ]
    assert list(zip(lb.noise_ratio, lb["head"])) == [(0.0, "lp"), (0.0, "nmtune"), (0.1, "lp"), (0.1, "nmtune")]
    exp = expected(df)
    for _, r in lb.iterrows():
        e = exp[(r.noise_ratio, r["head"])]
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
    # counts print as integers also when the board was read back from MLflow (metrics are floats)
    floats = lb.astype({c: float for c in ("n", "n_pretrain", "n_head", "flagged", "rank_cells")})
    assert render(floats, "csv") == render(lb, "csv")
    assert "ID acc (%) ± 95 % CI over pre-training seeds" in render(lb, "table")


def _replicated(frozen: bool = False) -> pd.DataFrame:
    """3 pre-training seeds x 2 head seeds (or, frozen, 4 head seeds); one ID and one OOD task.

    ``lp`` is deterministic: both head seeds of a pre-training give the same numbers. ``nmtune``
    varies with the head seed. Values are exact binary fractions so means compare exactly."""
    rows = []
    pre_seeds, head_seeds = ((0,), (0, 1, 2, 3)) if frozen else ((0, 1, 2), (0, 1))
    for p in pre_seeds:
        for h in head_seeds:
            for method in ("lp", "nmtune"):
                for task, kind in (("a", "id"), ("o", "ood")):
                    acc = 0.5 + 0.125 * p + (0.0 if method == "lp" else 0.0625 * (h + 1))
                    rows.append(
                        {
                            "backbone": "net",
                            "noise_ratio": math.nan if frozen else 0.1,
                            "head": method,
                            "task": task,
                            "task_kind": kind,
                            "pretrain_seed": p,
                            "head_seed": h,
                            "fraction": 1.0,
                            "val_accuracy": acc,
                            "test_accuracy": acc,
                            "test_macro_f1": acc,
                            "test_sve": 1.0,
                            "test_lsvr": 0.1,
                            "test_sve_raw": 1.0,
                            "test_lsvr_raw": 0.1,
                        }
                    )
    return pd.DataFrame(rows)


def test_interval_is_over_pretraining_seeds_with_head_seeds_averaged_inside():
    lb = leaderboard(_replicated()).set_index("head")
    # per pre-training: LP 0.5, 0.625, 0.75 (each once, though fitted twice); NMTune adds the mean
    # of its head seeds (0.0625 and 0.125: +0.09375)
    for method, units in (("lp", [0.5, 0.625, 0.75]), ("nmtune", [0.59375, 0.71875, 0.84375])):
        r = lb.loc[method]
        assert (r.n, r.n_pretrain) == (3, 3)
        lo, hi = stats.t.interval(0.95, 2, loc=np.mean(units), scale=stats.sem(units))
        assert r.id_acc == pytest.approx(np.mean(units)) and r.id_acc_ci == pytest.approx((hi - lo) / 2)
    assert (lb.loc["lp", "n_head"], lb.loc["nmtune", "n_head"]) == (1, 2)  # the deterministic LP counted once


def test_frozen_backbone_units_are_head_seeds_and_a_deterministic_head_has_no_interval():
    lb = leaderboard(_replicated(frozen=True)).set_index("head")
    units = [0.5625, 0.625, 0.6875, 0.75]
    lo, hi = stats.t.interval(0.95, 3, loc=np.mean(units), scale=stats.sem(units))
    assert lb.loc["nmtune", "n"] == 4 and lb.loc["nmtune", "n_pretrain"] == 0
    assert lb.loc["nmtune", "id_acc_ci"] == pytest.approx((hi - lo) / 2)
    assert lb.loc["lp", "n"] == 1 and math.isnan(lb.loc["lp", "id_acc_ci"])  # not a zero-width interval
    text = render(leaderboard(_replicated(frozen=True)), "markdown")
    assert "± 95 % CI over head seeds (frozen backbone)" in text
    assert "per-row predictions, which the fit records do not hold" in text
    mixed = render(leaderboard(pd.concat([_replicated(), _replicated(frozen=True).assign(backbone="mob")])), "table")
    assert "CI over pre-training seeds; frozen backbones: head seeds" in mixed


def test_rows_built_on_flagged_fits_are_marked():
    df = _replicated()
    df["near_chance"] = 0.0
    df.loc[(df["head"] == "nmtune") & (df.pretrain_seed == 1) & (df.head_seed == 0), "near_chance"] = 1.0
    lb = leaderboard(df).set_index("head")
    assert (lb.loc["lp", "flagged"], lb.loc["nmtune", "flagged"]) == (0, 2)  # its ID and OOD fit
    text = render(leaderboard(df), "markdown")
    assert "NMTune ⚠2" in text and "near chance on validation" in text
    assert "⚠" not in render(leaderboard(_replicated()), "markdown")


def test_mean_rank_and_its_bootstrap_interval_over_cells():
    """Two cells (noise 0 and 0.1) x 3 pre-training seeds. NMTune beats LP in every seed of cell
    0.1; in cell 0 it loses seed 0 badly, so its mean (0.6208) falls just below LP's (0.625) and
    the order there depends on which seeds a resample draws."""
    base = _replicated()
    other = base.assign(noise_ratio=0.0)
    flip = (other["head"] == "nmtune") & (other.pretrain_seed == 0)
    other.loc[flip, ["val_accuracy", "test_accuracy"]] = 0.3  # NMTune worse than LP in seed 0 only
    lb = leaderboard(pd.concat([base, other], ignore_index=True)).drop_duplicates("head").set_index("head")
    assert lb.loc["nmtune", "rank_cells"] == 2
    # observed: NMTune 1st in cell 0.1 and 2nd in cell 0, LP the reverse: both average 1.5
    assert lb.loc["nmtune", "id_rank"] == lb.loc["lp", "id_rank"] == 1.5
    # resamples: cell 0.1 always ranks NMTune 1st; cell 0 either way -> NMTune's mean rank in [1, 1.5]
    assert (lb.loc["nmtune", "id_rank_low"], lb.loc["nmtune", "id_rank_high"]) == (1.0, 1.5)
    assert (lb.loc["lp", "id_rank_low"], lb.loc["lp", "id_rank_high"]) == (1.5, 2.0)
    text = render(leaderboard(pd.concat([base, other], ignore_index=True)), "table")
    assert "Mean rank of each head" in text and "NMTune" in text.split("Mean rank")[1]
