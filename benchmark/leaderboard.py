"""Fit runs -> one row per (backbone, noise ratio, head): selection on validation, then means.

The rule, in order:

1. **Selection.** For every (backbone, noise_ratio, head, task, pretrain_seed, head_seed,
   fraction) the head hyper-parameters (the suite's grid axes: ``lam``, ``depth`` ...) with the
   best ``val_accuracy`` win; ties go to the simpler head: the smaller value of each axis in the
   head registry's order (``TIEBREAK_AXES``: ``lam``, then ``depth``, ...). The test
   metrics never take part: picking on test would report the best of many draws as a result.
2. **Task means.** Per (group, pretrain_seed, head_seed, fraction): ID tasks give ``id_acc``,
   ``id_f1``, ``sve`` (of the head's features) and ``sve_raw`` (of the frozen features); OOD
   tasks give ``ood_acc``, ``lsvr`` and ``lsvr_raw``. Each task counts once.
3. **Units of replication.** Head seeds of one pre-trained model share its backbone, so they are
   not independent evidence about it: the unit is the **pre-training seed**, head seeds averaged
   inside it. A head whose head seeds give identical results (a deterministic head such as the
   converged ``lp``) is counted once. A frozen backbone (no noise ratio: one released model, no
   pre-training seeds) has **head seeds** as units; a deterministic head there has one unit and
   no interval (a bootstrap over test rows would need per-row predictions, which fit records do
   not hold, so none is invented). Counting pre-training x head seeds as independent (the old
   rule) made the LP's intervals about half as wide as they are.
4. **Replicates.** Mean over units with a two-sided 95 % Student-t interval half-width
   (``t_{0.975, n-1} * sd / sqrt(n)``; NaN for n = 1); ``n`` units, ``n_pretrain`` pre-training
   seeds (0: frozen), ``n_head`` distinct head-seed results averaged per unit (at most).
5. **Flags.** ``flagged`` counts the row's selected fits whose record says ``near_chance``
   (validation accuracy near chance while training accuracy is well above it; see
   ``benchmark.probe.health``): such a row is marked when rendered.
6. **Ranks.** Each head's mean rank over the suite's (backbone, noise ratio) cells, with a
   bootstrap interval over units (``benchmark.ranks``), in ``id_rank*`` / ``ood_rank*``.

``backbone`` is the display name shared by a model's noise ratios and seeds (e.g. the pretrain
block name), so that a row aggregates replicates rather than splitting them. Downstream label
noise (``label_noise_ratio``; runs without it read as 0.0) joins the group after the noise ratio
when some run has it, so clean and noisy-label fits are never averaged together, and boards of
clean studies keep their columns.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.errors import ConfigError
from benchmark.heads import head_order, hparam_label, tiebreak_axes
from benchmark.heads.robust import head_with_loss
from benchmark.metrics import board_columns, board_metric_columns

DEFAULT_GROUP = ("backbone", "noise_ratio", "head")
#: The downstream label-noise axis (``benchmark.noise.downstream``): a group key of its own only
#: when some run has noisy downstream labels, so boards of clean studies are unchanged.
LABEL_NOISE = "label_noise_ratio"
REPLICATE = ("pretrain_seed", "head_seed")

#: Each head's mean rank over the (backbone, noise ratio) cells and its bootstrap interval.
RANK_COLUMNS = ("id_rank", "id_rank_low", "id_rank_high", "ood_rank", "ood_rank_low", "ood_rank_high", "rank_cells")
#: What ``leaderboard_rows`` adds to each row: what validation chose and what the row summarises.
SELECTION_COLUMNS = ("selected", "selections", "fits", "tasks")


def _metrics() -> list[tuple[str, str, str, bool]]:
    """(output column, source record metric, task kind, with interval), from the metric registry."""
    return [(c.name, c.source, c.kind, c.metric.interval) for c in board_columns()]


def columns() -> tuple[str, ...]:
    """The leaderboard's columns after the group keys: the registry's metric columns with their
    intervals (``id_acc, id_acc_ci, ...``), then counts, flags and ranks."""
    return (*board_metric_columns(), "n", "n_pretrain", "n_head", "flagged", *RANK_COLUMNS)


def __getattr__(name: str) -> Any:
    """``COLUMNS``: ``columns()`` when read (plugins add metric columns after this module is imported)."""
    if name == "COLUMNS":
        return columns()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def select_on_validation(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per ``keys``: the best ``val_accuracy``; ties -> the smaller value of each grid axis."""
    axes = [a for a in tiebreak_axes() if a in df.columns]
    tie = {f"_{a}": pd.to_numeric(df[a], errors="coerce").astype("float64").fillna(0.0) for a in axes}
    work = df.assign(_val=df["val_accuracy"].astype("float64").fillna(-np.inf), **tie)
    work = work.sort_values(
        [*keys, "_val", *tie], ascending=[True] * len(keys) + [False] + [True] * len(tie), kind="stable"
    )
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
    if "loss" in df.columns and "head" in df.columns:  # a head trained with GCE / SCE is a row of its own
        df["head"] = [head_with_loss(m, loss) for m, loss in zip(df["head"], df["loss"], strict=True)]
    for col, default in (("pretrain_seed", 0), ("head_seed", 0), ("fraction", 1.0)):
        if col not in df.columns:
            df[col] = default
    # Runs from before downstream label noise (no param) had clean labels.
    df[LABEL_NOISE] = label_noise_column(df)
    bad = sorted(set(df["task_kind"].dropna()) - {"id", "ood"})
    if bad:
        raise ConfigError(f"task_kind must be 'id' or 'ood', found {bad}")
    return df


def label_noise_column(df: pd.DataFrame) -> pd.Series:
    """The runs' downstream label-noise ratio; 0.0 where absent (runs from before the axis)."""
    if LABEL_NOISE not in df.columns:
        return pd.Series(0.0, index=df.index, dtype="float64")
    return pd.to_numeric(df[LABEL_NOISE], errors="coerce").astype("float64").fillna(0.0)


def with_label_noise_axis(df: pd.DataFrame, group: Sequence[str]) -> list[str]:
    """``group`` with ``label_noise_ratio`` after the noise ratio when some run of ``df`` has
    noisy downstream labels: rows of different label noise are never averaged together."""
    group = list(group)
    noisy = LABEL_NOISE in df.columns and bool((pd.to_numeric(df[LABEL_NOISE], errors="coerce") > 0).any())
    if not noisy or LABEL_NOISE in group:
        return group
    at = group.index("noise_ratio") + 1 if "noise_ratio" in group else len(group)
    return [*group[:at], LABEL_NOISE, *group[at:]]


def selected_fits(df: pd.DataFrame, *, group: Sequence[str] = DEFAULT_GROUP) -> pd.DataFrame:
    """Step 1 of the rule: the fit validation chose per (group, task, pretrain_seed, head_seed, fraction).

    These are the rows the leaderboard averages; their grid values (``lam``, ``depth`` ...) say which
    hyper-parameters won (the published leaderboard runs summarise them).
    """
    group = list(group)
    df = _prepare(df, group)
    group = with_label_noise_axis(df, group)
    base = [c for c in DEFAULT_GROUP if c not in group] + group  # selection never mixes backbones
    sel_keys = list(dict.fromkeys([*base, "task", *REPLICATE, "fraction"]))
    return select_on_validation(df, sel_keys)


def replicate_table(df: pd.DataFrame, *, group: Sequence[str] = DEFAULT_GROUP) -> pd.DataFrame:
    """Steps 1-2 of the rule: one row per (group, pretrain_seed, head_seed, fraction).

    Hyper-parameters are selected on validation per task and replicate, then test metrics are
    averaged over ID tasks and over OOD tasks. The claims analysis pairs these rows by seed.
    """
    group = list(group)
    if df is not None and len(df):
        group = with_label_noise_axis(_prepare(df, group), group)
    best = selected_fits(df, group=group)
    metric_cols = _metrics()
    rep_keys = list(dict.fromkeys([*group, *REPLICATE, "fraction"]))
    per_rep = None
    for kind in ("id", "ood"):
        part = best[best["task_kind"] == kind]
        if part.empty:  # e.g. a suite without OOD groups: those columns stay NaN
            continue
        cols = {out: src for out, src, k, _ in metric_cols if k == kind}
        agg = part.reindex(columns=[*rep_keys, *cols.values()]).groupby(rep_keys, dropna=False)
        # test_accuracy feeds one output per kind, so the rename is unambiguous.
        means = agg.mean().rename(columns={v: k for k, v in cols.items()})
        means = means.reindex(columns=list(cols)).reset_index()
        per_rep = means if per_rep is None else per_rep.merge(means, on=rep_keys, how="outer")
    if per_rep is None:
        return pd.DataFrame(columns=[*rep_keys, *(m[0] for m in metric_cols)])
    return per_rep.reindex(columns=[*rep_keys, *(m[0] for m in metric_cols)])


def is_frozen(part: pd.DataFrame) -> pd.Series:
    """Rows of a frozen backbone: no noise ratio (one released model, no pre-training seeds)."""
    if "noise_ratio" not in part.columns:
        return pd.Series(False, index=part.index)
    return pd.to_numeric(part["noise_ratio"], errors="coerce").isna()


def unit_table(per_rep: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Rows of ``replicate_table`` -> one row per (``keys``, unit of replication); see the module doc.

    A pre-trained backbone's unit is its pre-training seed (head seeds averaged inside it); a
    frozen backbone's unit is the head seed. Head seeds with identical results (a deterministic
    head) count once. Adds ``unit`` (the seed), ``unit_kind`` ("pretrain" | "head") and
    ``n_head`` (distinct head-seed results averaged into the unit).
    """
    keys = list(keys)
    metrics = [m[0] for m in _metrics() if m[0] in per_rep.columns]
    work = per_rep.copy()
    frozen = is_frozen(work)
    work["unit_kind"] = np.where(frozen, "head", "pretrain")
    work["unit"] = np.where(frozen, work["head_seed"], work["pretrain_seed"])
    # A deterministic head gives the same numbers for every head seed: one result, not several.
    work = work.drop_duplicates(subset=[*keys, "unit_kind", "pretrain_seed", *metrics])
    by = [*keys, "unit_kind", "unit"]
    grouped = work.groupby(by, dropna=False, sort=False)
    means = grouped[metrics].mean()
    means["n_head"] = grouped.size()
    means.loc[means.index.get_level_values("unit_kind") == "head", "n_head"] = 1
    return means.reset_index()


def leaderboard(df: pd.DataFrame, *, group: Sequence[str] = DEFAULT_GROUP, confidence: float = 0.95) -> pd.DataFrame:
    """The leaderboard of a fit-runs frame (``Tracker.runs_frame("fit")``); see the module doc.

    Columns: the ``group`` columns, ``fraction`` when several are present, then ``COLUMNS``
    (``id_acc, id_acc_ci, ... n, n_pretrain, n_head, flagged`` and the rank columns). Accuracies
    stay fractions in [0, 1]; ``render`` formats them.
    """
    from benchmark.ranks import mean_ranks

    group = list(group)
    all_columns = columns()
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=[*group, *all_columns])
    df = _prepare(df, group)
    group = with_label_noise_axis(df, group)
    several_fractions = df["fraction"].nunique(dropna=False) > 1
    per_rep = replicate_table(df, group=group)
    out_keys = list(dict.fromkeys([*group, "fraction"])) if several_fractions else group
    units = unit_table(per_rep, list(dict.fromkeys([*group, "fraction"])))
    flags = _flag_counts(df, group, out_keys)
    grouped = units.groupby(out_keys, dropna=False, sort=False)
    metric_cols = _metrics()
    result = grouped[[m[0] for m in metric_cols]].mean()
    for out, _, _, with_ci in metric_cols:
        if with_ci:  # t_{0.975, n-1} * sd / sqrt(n) over the units holding a value; NaN for n < 2
            n = grouped[out].count()
            t = pd.Series(stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)), index=n.index)
            result[f"{out}_ci"] = (t * grouped[out].std(ddof=1) / np.sqrt(n)).where(n >= 2)
    result["n"] = grouped.size()
    result["n_pretrain"] = (
        units.assign(_pre=units["unit_kind"] == "pretrain").groupby(out_keys, dropna=False, sort=False)["_pre"].sum()
    )
    result["n_head"] = grouped["n_head"].max()
    result = result.reset_index()
    result["flagged"] = [int(flags.get(_nan_free(tuple(k)), 0)) for k in result[out_keys].itertuples(index=False)]
    result = result.reindex(columns=[*out_keys, *all_columns])
    for col in ("n", "n_pretrain", "n_head", "flagged"):
        result[col] = result[col].astype(int)
    if "head" in group:
        full = units[units["fraction"] == units["fraction"].max()] if several_fractions else units
        ranks = mean_ranks(full, [k for k in group if k != "head"])
        for col in RANK_COLUMNS:
            result[col] = result["head"].map(ranks[col]) if len(ranks) else math.nan
    return _sorted(result, out_keys)


def _flag_counts(df: pd.DataFrame, group: Sequence[str], out_keys: Sequence[str]) -> dict[tuple, int]:
    """Per leaderboard row: how many of its selected fits are flagged ``near_chance``."""
    if "near_chance" not in df.columns:
        return {}
    chosen = selected_fits(df, group=group)
    flagged = pd.to_numeric(chosen["near_chance"], errors="coerce").fillna(0.0) > 0
    counts = chosen[flagged].groupby(list(out_keys), dropna=False).size()
    return {_nan_free(k if isinstance(k, tuple) else (k,)): int(v) for k, v in counts.items()}


def _nan_free(keys: tuple) -> tuple:
    """Group keys usable in a dict: NaN (a frozen backbone's noise ratio) never equals itself."""
    return tuple(None if isinstance(k, float) and math.isnan(k) else k for k in keys)


def _sorted(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    order = [k for k in keys]
    tmp = df.assign(**({"_m": df["head"].map(head_order)} if "head" in df else {}))
    by = [("_m" if k == "head" else k) for k in order]
    tmp = tmp.sort_values(by, kind="stable", na_position="last")
    return tmp.drop(columns=[c for c in ("_m",) if c in tmp]).reset_index(drop=True)


def leaderboard_rows(fits: pd.DataFrame, *, board: pd.DataFrame | None = None) -> pd.DataFrame:
    """``leaderboard(fits)`` (or the ``board`` already computed from ``fits``) plus what each row summarises.

    Added columns (``SELECTION_COLUMNS``): ``selected`` (the hyper-parameters validation chose and
    how often, e.g. ``λ0.01 d1 ×3, λ0.1 d1 ×1``), ``selections`` (task x seed selections
    averaged), ``fits`` (candidate fits considered) and ``tasks``.
    """
    lb = leaderboard(fits) if board is None else board
    if lb.empty:
        return lb.assign(
            selected=pd.Series(dtype=object),
            selections=pd.Series(dtype=int),
            fits=pd.Series(dtype=int),
            tasks=pd.Series(dtype=object),
        )
    keys = [c for c in ("backbone", "noise_ratio", LABEL_NOISE, "head", "fraction") if c in lb.columns]
    chosen = selected_fits(fits)
    summary = []
    for ident, part in chosen.groupby(keys, dropna=False, sort=False):
        ident = ident if isinstance(ident, tuple) else (ident,)
        counts = Counter(hparam_label(r["head"], r, "no grid") for r in part.to_dict("records"))
        summary.append(
            {
                **dict(zip(keys, ident)),
                "selected": ", ".join(f"{label} ×{n}" for label, n in counts.most_common()),
                "selections": len(part),
                "tasks": ", ".join(sorted(map(str, part["task"].unique()))),
            }
        )
    # the fits as the board groups them (head with its loss, defaults for absent axes): counted apart
    # from it, a row's fits once went uncounted (a GCE head's rows had fits = NaN)
    work = _prepare(fits, DEFAULT_GROUP)
    sizes = work.groupby(keys, dropna=False).size().rename("fits").reset_index()
    # merge matches NaN keys with NaN keys: frozen backbones (no noise ratio) keep their summary
    out = lb.merge(pd.DataFrame(summary), on=keys, how="left").merge(sizes, on=keys, how="left")
    return out.reset_index(drop=True)
