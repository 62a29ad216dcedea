"""Fit runs -> one row per (backbone, noise ratio, method): selection on validation, then means.

The rule, in order:

1. **Selection.** For every (backbone, noise_ratio, method, task, pretrain_seed, head_seed,
   fraction) the head hyper-parameters (the suite's grid axes: ``lam``, ``depth`` ...) with the
   best ``val_accuracy`` win; ties go to the simpler head: the smaller value of each axis in the
   head registry's order (``TIEBREAK_AXES``: ``lam``, then ``depth``, ...). The test
   metrics never take part: picking on test would report the best of many draws as a result.
2. **Task means.** Per (group, pretrain_seed, head_seed, fraction): ID tasks give ``id_acc``,
   ``id_f1``, ``sve`` (of the head's features) and ``sve_raw`` (of the frozen features); OOD
   tasks give ``ood_acc``, ``lsvr`` and ``lsvr_raw``. Each task counts once.
3. **Replicates.** Mean over seed replicates with a two-sided 95 % Student-t interval half-width
   (``t_{0.975, n-1} * sd / sqrt(n)``; NaN for n = 1) and ``n``.

``backbone`` is the display name shared by a model's noise ratios and seeds (e.g. the pretrain
block name), so that a row aggregates replicates rather than splitting them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.errors import ConfigError
from benchmark.heads.registry import HEADS, TIEBREAK_AXES

DEFAULT_GROUP = ("backbone", "noise_ratio", "method")
REPLICATE = ("pretrain_seed", "head_seed")


def method_order(method: str) -> int:
    """Display order of a head method (the registry's; unknown names last)."""
    return HEADS[method].order if method in HEADS else 99


def method_label(method: str) -> str:
    """Display label of a head method (``LP``, ``MLP``, ``NMTune``)."""
    return HEADS[method].label if method in HEADS else str(method)

#: (output column, source metric, task kind, with interval)
_METRICS = (
    ("id_acc", "test_accuracy", "id", True),
    ("id_f1", "test_macro_f1", "id", True),
    ("ood_acc", "test_accuracy", "ood", True),
    ("sve", "test_sve", "id", True),
    ("lsvr", "test_lsvr", "ood", True),
    ("sve_raw", "test_sve_raw", "id", False),
    ("lsvr_raw", "test_lsvr_raw", "ood", False),
)
COLUMNS = ("id_acc", "id_acc_ci", "id_f1", "id_f1_ci", "ood_acc", "ood_acc_ci", "sve", "sve_ci",
           "lsvr", "lsvr_ci", "sve_raw", "lsvr_raw", "n")


def _ci_half_width(values: np.ndarray, confidence: float) -> float:
    v = values[~np.isnan(values)]
    if len(v) < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def select_on_validation(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per ``keys``: the best ``val_accuracy``; ties -> the smaller value of each grid axis."""
    axes = [a for a in TIEBREAK_AXES if a in df.columns]
    tie = {f"_{a}": pd.to_numeric(df[a], errors="coerce").astype("float64").fillna(0.0) for a in axes}
    work = df.assign(_val=df["val_accuracy"].astype("float64").fillna(-np.inf), **tie)
    work = work.sort_values([*keys, "_val", *tie], ascending=[True] * len(keys) + [False] + [True] * len(tie),
                            kind="stable")
    best = work.drop_duplicates(subset=list(keys), keep="first")
    return best.drop(columns=["_val", *tie]).reset_index(drop=True)


def _prepare(df: pd.DataFrame, group: Sequence[str]) -> pd.DataFrame:
    need = {"task", "task_kind", "val_accuracy", "test_accuracy", *group}
    missing = sorted(need - set(df.columns))
    if missing:
        raise ConfigError(
            f"the runs frame lacks column(s) {', '.join(missing)}; leaderboard() reads fit runs "
            "as written by Tracker.log_fit (see docs/architecture.md, 'Fit record')"
        )
    df = df.copy()
    for col, default in (("pretrain_seed", 0), ("head_seed", 0), ("fraction", 1.0)):
        if col not in df.columns:
            df[col] = default
    bad = sorted(set(df["task_kind"].dropna()) - {"id", "ood"})
    if bad:
        raise ConfigError(f"task_kind must be 'id' or 'ood', found {bad}")
    return df


def selected_fits(df: pd.DataFrame, *, group: Sequence[str] = DEFAULT_GROUP) -> pd.DataFrame:
    """Step 1 of the rule: the fit validation chose per (group, task, pretrain_seed, head_seed, fraction).

    These are the rows the leaderboard averages; their grid values (``lam``, ``depth`` ...) say which
    hyper-parameters won (the published leaderboard runs summarise them).
    """
    group = list(group)
    df = _prepare(df, group)
    base = [c for c in DEFAULT_GROUP if c not in group] + group  # selection never mixes backbones
    sel_keys = list(dict.fromkeys([*base, "task", *REPLICATE, "fraction"]))
    return select_on_validation(df, sel_keys)


def replicate_table(df: pd.DataFrame, *, group: Sequence[str] = DEFAULT_GROUP) -> pd.DataFrame:
    """Steps 1-2 of the rule: one row per (group, pretrain_seed, head_seed, fraction).

    Hyper-parameters are selected on validation per task and replicate, then test metrics are
    averaged over ID tasks and over OOD tasks. The claims analysis pairs these rows by seed.
    """
    group = list(group)
    best = selected_fits(df, group=group)
    rep_keys = list(dict.fromkeys([*group, *REPLICATE, "fraction"]))
    per_rep = None
    for kind in ("id", "ood"):
        part = best[best["task_kind"] == kind]
        if part.empty:  # e.g. a suite without OOD groups: those columns stay NaN
            continue
        cols = {out: src for out, src, k, _ in _METRICS if k == kind}
        agg = part.reindex(columns=[*rep_keys, *cols.values()]).groupby(rep_keys, dropna=False)
        # test_accuracy feeds one output per kind, so the rename is unambiguous.
        means = agg.mean().rename(columns={v: k for k, v in cols.items()})
        means = means.reindex(columns=list(cols)).reset_index()
        per_rep = means if per_rep is None else per_rep.merge(means, on=rep_keys, how="outer")
    if per_rep is None:
        return pd.DataFrame(columns=[*rep_keys, *(m[0] for m in _METRICS)])
    return per_rep.reindex(columns=[*rep_keys, *(m[0] for m in _METRICS)])


def leaderboard(df: pd.DataFrame, *, group: Sequence[str] = DEFAULT_GROUP,
                confidence: float = 0.95) -> pd.DataFrame:
    """The leaderboard of a fit-runs frame (``Tracker.runs_frame("fit")``); see the module doc.

    Columns: the ``group`` columns, ``fraction`` when several are present, then
    ``id_acc, id_acc_ci, id_f1, id_f1_ci, ood_acc, ood_acc_ci, sve, sve_ci, lsvr, lsvr_ci,
    sve_raw, lsvr_raw, n``. Accuracies stay fractions in [0, 1]; ``render`` formats them.
    """
    group = list(group)
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=[*group, *COLUMNS])
    df = _prepare(df, group)
    several_fractions = df["fraction"].nunique(dropna=False) > 1
    per_rep = replicate_table(df, group=group)

    out_keys = list(dict.fromkeys([*group, "fraction"])) if several_fractions else group
    rows = []
    for keys, part in per_rep.groupby(out_keys, dropna=False, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(out_keys, keys))
        for out, _, _, with_ci in _METRICS:
            vals = part[out].to_numpy(dtype="float64")
            row[out] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
            if with_ci:
                row[f"{out}_ci"] = _ci_half_width(vals, confidence)
        row["n"] = len(part)
        rows.append(row)
    result = pd.DataFrame(rows).reindex(columns=[*out_keys, *COLUMNS])
    result["n"] = result["n"].astype(int)
    return _sorted(result, out_keys)


def _sorted(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    order = [k for k in keys]
    tmp = df.assign(**({"_m": df["method"].map(method_order)} if "method" in df else {}))
    by = [("_m" if k == "method" else k) for k in order]
    tmp = tmp.sort_values(by, kind="stable", na_position="last")
    return tmp.drop(columns=[c for c in ("_m",) if c in tmp]).reset_index(drop=True)


# -- rendering ---------------------------------------------------------------------------------
def _fmt(v: float, ci: float | None, scale: float, digits: int) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    text = f"{v * scale:.{digits}f}"
    if ci is not None and np.isfinite(ci):
        text += f" ± {ci * scale:.{digits}f}"
    return text


def _display(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    keys = [c for c in df.columns if c not in COLUMNS and not c.endswith("_ci")]
    headers = []
    for k in keys:
        headers.append({"backbone": "Backbone", "noise_ratio": "Noise", "method": "Method",
                        "fraction": "Fraction"}.get(k, k))
    headers += ["ID acc (%)", "ID F1 (%)", "OOD acc (%)", "SVE", "LSVR", "SVE raw", "LSVR raw", "n"]
    rows = []
    for _, r in df.iterrows():
        row = []
        for k in keys:
            v = r[k]
            if k == "method":
                row.append(method_label(v))
            elif k in ("noise_ratio", "fraction"):
                row.append("–" if pd.isna(v) else f"{float(v):g}")
            else:
                row.append("–" if pd.isna(v) else str(v))
        row += [
            _fmt(r["id_acc"], r["id_acc_ci"], 100, 2),
            _fmt(r["id_f1"], r["id_f1_ci"], 100, 2),
            _fmt(r["ood_acc"], r["ood_acc_ci"], 100, 2),
            _fmt(r["sve"], r["sve_ci"], 1, 3),
            _fmt(r["lsvr"], r["lsvr_ci"], 1, 4),
            _fmt(r["sve_raw"], None, 1, 3),
            _fmt(r["lsvr_raw"], None, 1, 4),
            str(int(r["n"])),
        ]
        rows.append(row)
    return headers, rows


def render(df: pd.DataFrame, fmt: str = "table") -> str:
    """Text of a ``leaderboard()`` frame.

    ``table`` (terminal) and ``markdown`` show accuracies and F1 as percentages with two
    decimals and "±" the 95 % half-width (left out when n = 1); ``csv`` keeps the raw numbers
    (fractions, full precision) for other tools.
    """
    from tabulate import tabulate

    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt not in ("table", "markdown"):
        raise ConfigError(f"unknown leaderboard format {fmt!r} (allowed: table, csv, markdown)")
    headers, rows = _display(df)
    tablefmt = "github" if fmt == "markdown" else "simple"
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True,
                    colalign=None) + "\n"
