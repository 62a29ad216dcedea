"""A leaderboard frame (``benchmark.leaderboard.leaderboard``) as text: terminal table, markdown
or csv, with the notes that say what the intervals are over and each head's mean rank.

Kept apart from the computation so that the rule that makes the numbers (selection, units of
replication, intervals) reads on its own, and the HTML report shares these cells and headers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from benchmark.errors import ConfigError
from benchmark.heads import head_label, head_order
from benchmark.leaderboard import LABEL_NOISE, columns, is_frozen
from benchmark.metrics import BoardColumn, board_columns

#: Count columns: integers in the csv whether computed or read back from MLflow (floats).
COUNT_COLUMNS = ("n", "n_pretrain", "n_head", "flagged", "rank_cells")
#: What an interval is over, by unit kind (said in the rendered column headers).
UNIT_TEXT = {"pretrain": "pre-training seeds", "head": "head seeds (frozen backbone)"}
FLAG = "⚠"


def _fmt(v: float | None, ci: float | None, scale: float, digits: int) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    text = f"{v * scale:.{digits}f}"
    if ci is not None and np.isfinite(ci):
        text += f" ± {ci * scale:.{digits}f}"
    return text


def units_text(df: pd.DataFrame) -> str:
    """What the rows' intervals are over, for the column headers."""
    if "n_pretrain" in df.columns:
        kinds = {"pretrain" if n > 0 else "head" for n in df["n_pretrain"].fillna(0)}
    else:
        kinds = {"head" if f else "pretrain" for f in is_frozen(df)}
    if kinds == {"head"}:
        return UNIT_TEXT["head"]
    if kinds == {"pretrain"}:
        return UNIT_TEXT["pretrain"]
    return "pre-training seeds; frozen backbones: head seeds"


def metric_cells(row: Any, fmt: Any) -> list[str]:
    """A row's metric cells in board order, each ``fmt(value, ci, scale, digits)`` (the registry
    says the scale, digits and whether a column has an interval)."""
    out = []
    for c in board_columns():
        m = c.metric
        out.append(fmt(row.get(c.name), row.get(f"{c.name}_ci") if m.interval else None, m.scale, m.digits))
    return out


def metric_headers(df: pd.DataFrame) -> list[str]:
    """The metric columns' headers; the first says what the intervals are over."""
    cols: list[BoardColumn] = board_columns()
    return [c.header + (f" ± 95 % CI over {units_text(df)}" if i == 0 else "") for i, c in enumerate(cols)]


def _display(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    all_columns = columns()
    keys = [c for c in df.columns if c not in all_columns and not c.endswith("_ci")]
    headers = []
    for k in keys:
        headers.append(
            {
                "backbone": "Backbone",
                "noise_ratio": "Noise",
                LABEL_NOISE: "Label noise",
                "head": "Head",
                "fraction": "Fraction",
            }.get(k, k)
        )
    headers += [*metric_headers(df), "n (units)"]
    rows = []
    for _, r in df.iterrows():
        row = []
        for k in keys:
            v = r[k]
            if k == "head":
                flagged = int(r["flagged"]) if "flagged" in r and pd.notna(r["flagged"]) else 0
                row.append(head_label(v) + (f" {FLAG}{flagged}" if flagged else ""))
            elif k in ("noise_ratio", LABEL_NOISE, "fraction"):
                row.append("–" if pd.isna(v) else f"{float(v):g}")
            else:
                row.append("–" if pd.isna(v) else str(v))
        row += [*metric_cells(r, _fmt), str(int(r["n"]))]
        rows.append(row)
    return headers, rows


def render_notes(df: pd.DataFrame) -> list[str]:
    """The lines under the table: what the intervals are over, what a flag means."""
    notes = [
        f"± is the 95 % t-interval half-width over units of replication: {units_text(df)} "
        "(head seeds averaged inside a pre-training; a deterministic head counted once)."
    ]
    if "n" in df.columns and (df["n"] == 1).any():
        notes.append(
            "No interval where n = 1: one unit (a single seed, or a deterministic head such as the LP "
            "on a frozen backbone; a bootstrap over test rows would need per-row predictions, which "
            "the fit records do not hold)."
        )
    if "flagged" in df.columns and (df["flagged"].fillna(0) > 0).any():
        notes.append(
            f"{FLAG}k: k of the row's selected fits stayed near chance on validation while fitting "
            "their training data (see the sweep's warning): the row's numbers are not a result."
        )
    return notes


def rank_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """One row per head: mean rank over cells with its bootstrap interval."""
    ranks = df.dropna(subset=["id_rank"]).drop_duplicates("head") if "id_rank" in df.columns else df.iloc[:0]
    ranks = ranks.assign(_m=ranks["head"].map(head_order)).sort_values("_m", kind="stable") if len(ranks) else ranks
    headers = ["Head", "ID rank [95 % bootstrap]", "OOD rank [95 % bootstrap]", "cells"]
    rows = []
    for _, r in ranks.iterrows():

        def cell(m: str, r: pd.Series = r) -> str:
            if not np.isfinite(r[f"{m}_rank"]):
                return "–"
            return f"{r[f'{m}_rank']:.2f} [{r[f'{m}_rank_low']:.2f}, {r[f'{m}_rank_high']:.2f}]"

        rows.append([head_label(r["head"]), cell("id"), cell("ood"), str(int(r["rank_cells"]))])
    return headers, rows


def render(df: pd.DataFrame, fmt: str = "table") -> str:
    """Text of a ``leaderboard()`` frame.

    ``table`` (terminal) and ``markdown`` show accuracies and F1 as percentages with two
    decimals and "±" the 95 % half-width (left out when n = 1), the header saying what the
    interval is over, notes under the table, then each head's mean rank over the (backbone,
    noise) cells with its bootstrap interval; ``csv`` keeps the raw numbers (fractions, full
    precision) for other tools.
    """
    from tabulate import tabulate

    if fmt == "csv":  # counts as integers whether the frame was computed or read back from MLflow (floats)
        counts = {c: "Int64" for c in COUNT_COLUMNS if c in df.columns}
        return df.astype(counts).to_csv(index=False)
    if fmt not in ("table", "markdown"):
        raise ConfigError(f"unknown leaderboard format {fmt!r} (allowed: table, csv, markdown)")
    headers, rows = _display(df)
    tablefmt = "github" if fmt == "markdown" else "simple"
    text = tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True, colalign=None) + "\n"
    if len(df):
        text += "\n" + "\n".join(render_notes(df)) + "\n"
    rank_headers, ranked = rank_rows(df)
    cells = ", label noise" if LABEL_NOISE in df.columns else ""
    if ranked:
        text += (
            f"\nMean rank of each head over the (backbone, noise ratio{cells}) cells (1 = best), with a 95 % "
            "bootstrap interval over units of replication:\n\n"
        )
        text += tabulate(ranked, headers=rank_headers, tablefmt=tablefmt, disable_numparse=True) + "\n"
    return text
