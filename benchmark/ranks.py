"""Rank uncertainty: each head's mean rank over a suite's (backbone, noise ratio) cells.

Why: a leaderboard reader asks "which head is best overall?", and a mean rank without its
uncertainty over-answers it (rank uncertainty is an open request on MTEB's board; no peer in
``research/peers.md`` shows it). Within a cell the heads are ranked by their mean over the
cell's units of replication (1 = best; ties share the mean rank), and each head's ranks are
averaged over the cells it appears in. The interval is a percentile bootstrap over units: in
every cell the units (pre-training seeds; a frozen backbone's head seeds) are resampled with
replacement, paired across heads (all heads of a cell read the same resampled seeds, because
they share each seed's backbone), independently between cells (different pre-trainings).
A head with a single unit in a cell (a deterministic head on a frozen backbone) keeps that one
value in every resample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

#: Bootstrap resamples and the generator's seed: fixed, so a leaderboard is reproducible.
BOOTSTRAP = 2000
SEED = 0


def _cell_ranks(values: np.ndarray, rng: np.random.Generator, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """``values``: units x heads (NaN: missing). Ranks of the heads' means (1 = best, higher value
    better), observed (heads,) and per resample (draws, heads); NaN for a head absent here."""
    present = np.isfinite(values).any(axis=0)
    filled = values.copy()
    for h in np.flatnonzero(present):  # a head with fewer units (deterministic): its mean stands in
        col = filled[:, h]
        col[~np.isfinite(col)] = np.nanmean(values[:, h])
    obs = np.full(values.shape[1], math.nan)
    boot = np.full((draws, values.shape[1]), math.nan)
    if not present.any():
        return obs, boot
    kept = filled[:, present]
    obs[present] = stats.rankdata(-kept.mean(axis=0))
    idx = rng.integers(0, kept.shape[0], size=(draws, kept.shape[0]))
    boot[:, present] = stats.rankdata(-kept[idx].mean(axis=1), axis=1)
    return obs, boot


def mean_ranks(
    units: pd.DataFrame,
    cell: Sequence[str],
    *,
    metrics: Sequence[str] = ("id_acc", "ood_acc"),
    confidence: float = 0.95,
    draws: int = BOOTSTRAP,
    seed: int = SEED,
) -> pd.DataFrame:
    """Per head: ``<m>_rank``, ``<m>_rank_low``, ``<m>_rank_high`` (m = id, ood) and ``rank_cells``.

    ``units`` is ``leaderboard.unit_table`` (columns ``cell``, ``head``, ``unit``, metrics);
    ``cell`` names the columns of a cell (backbone, noise ratio). Empty frame without heads.
    """
    heads = sorted(units["head"].dropna().unique())
    if not heads:
        return pd.DataFrame()
    out = pd.DataFrame(index=pd.Index(heads, name="head"))
    alpha = (1 - confidence) / 2
    cell = list(cell)
    for metric in metrics:
        rng = np.random.default_rng(seed)
        obs_sum = np.zeros(len(heads))
        boot_sum = np.zeros((draws, len(heads)))
        count = np.zeros(len(heads))
        # one pivot for every cell (a pivot per cell costs more than the bootstrap)
        wide = units.pivot_table(
            index=[*cell, "unit"], columns="head", values=metric, aggfunc="mean", dropna=False
        ).reindex(columns=heads)
        values = wide.to_numpy(dtype=float)
        codes = wide.index.droplevel("unit").to_frame(index=False).groupby(cell, dropna=False, sort=True).ngroup()
        order = np.argsort(codes.to_numpy(), kind="stable")
        bounds = np.flatnonzero(np.diff(codes.to_numpy()[order])) + 1
        for rows in np.split(order, bounds):
            block = values[rows]
            block = block[np.isfinite(block).any(axis=1)]
            if not len(block):
                continue
            obs, boot = _cell_ranks(block, rng, draws)
            seen = np.isfinite(obs)
            obs_sum[seen] += obs[seen]
            boot_sum[:, seen] += boot[:, seen]
            count += seen
        name = metric.split("_")[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_obs = np.where(count > 0, obs_sum / count, math.nan)
            mean_boot = np.where(count > 0, boot_sum / np.maximum(count, 1), math.nan)
        out[f"{name}_rank"] = mean_obs
        out[f"{name}_rank_low"] = np.where(count > 0, np.quantile(mean_boot, alpha, axis=0), math.nan)
        out[f"{name}_rank_high"] = np.where(count > 0, np.quantile(mean_boot, 1 - alpha, axis=0), math.nan)
        out["rank_cells"] = np.maximum(out.get("rank_cells", 0), count)
    return out
