"""Publish a suite's leaderboard into MLflow: one run per row, and the suite run's artifacts.

Each leaderboard row (backbone x noise ratio x head [x fraction], as computed by
``benchmark.leaderboard.leaderboard``) becomes a run of kind ``leaderboard``: the row's numbers
are its metrics, what validation chose is in its params, so sorting the runs table by a metric
is the leaderboard. A row is keyed by its identity (``layout.leaderboard_key``) and replaced only
when its content changes; rows that no longer exist are deleted. The suite run (the root of the
study's tree) gets the whole table (``leaderboard.json`` in MLflow's table format, .csv, .md),
the figures, ``claims.md`` and the self-contained ``report.html``.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from benchmark.heads.registry import TIEBREAK_AXES
from benchmark.hashing import config_hash
from benchmark.leaderboard import leaderboard, selected_fits
from benchmark.tracking import layout
from benchmark.tracking.store import FINISHED, ROW_TAG, SUITE_TAG
from benchmark.tracking.writer import delete_stale, log_artifacts

if TYPE_CHECKING:
    from benchmark.tracking.reader import TrackingReader
    from benchmark.tracking.tracker import Tracker

#: Leaderboard metrics are stored rounded: the UI prints floats raw, and 6 decimals keep its table
#: readable while staying far below any difference the intervals can resolve.
METRIC_DECIMALS = 6
SELECTION_RULE = ("best val_accuracy per task and seed; ties: the smaller value of "
                  + ", then ".join(TIEBREAK_AXES))
PUBLISHED_TAG = "nmlbench.published"  # suite run: digest of the fit runs the published board summarises
_LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # MLflow's tag listing a run's tables (as log_table sets it)


def _hp_label(method: Any, lam: Any, depth: Any) -> str:
    parts = []
    if method == "nmtune" and lam is not None and not (isinstance(lam, float) and math.isnan(lam)):
        parts.append(f"λ{float(lam):g}")
    if method in ("mlp", "nmtune") and depth is not None and not pd.isna(depth) and float(depth) > 0:
        parts.append(f"d{int(depth)}")
    return " ".join(parts) or "no grid"


def leaderboard_rows(fits: pd.DataFrame) -> pd.DataFrame:
    """``leaderboard(fits)`` plus what each row summarises.

    Added columns: ``selected`` (the hyper-parameters validation chose and how often, e.g.
    ``λ0.01 d1 ×3, λ0.1 d1 ×1``), ``selections`` (task x seed selections averaged), ``fits``
    (candidate fits considered) and ``tasks``.
    """
    lb = leaderboard(fits)
    if lb.empty:
        return lb.assign(selected=pd.Series(dtype=object), selections=pd.Series(dtype=int),
                         fits=pd.Series(dtype=int), tasks=pd.Series(dtype=object))
    keys = [c for c in ("backbone", "noise_ratio", "method", "fraction") if c in lb.columns]
    chosen = selected_fits(fits)
    summary = []
    for ident, part in chosen.groupby(keys, dropna=False, sort=False):
        ident = ident if isinstance(ident, tuple) else (ident,)
        counts = Counter(_hp_label(r["method"], r.get("lam"), r.get("depth")) for r in part.to_dict("records"))
        summary.append({**dict(zip(keys, ident)),
                        "selected": ", ".join(f"{label} ×{n}" for label, n in counts.most_common()),
                        "selections": len(part), "tasks": ", ".join(sorted(map(str, part["task"].unique())))})
    work = fits.assign(fraction=fits["fraction"] if "fraction" in fits.columns else 1.0)
    sizes = work.groupby(keys, dropna=False).size().rename("fits").reset_index()
    # merge matches NaN keys with NaN keys: frozen backbones (no noise ratio) keep their summary
    out = lb.merge(pd.DataFrame(summary), on=keys, how="left").merge(sizes, on=keys, how="left")
    return out.reset_index(drop=True)


def _row_entry(suite: str, i: int, row: dict[str, Any], several_fractions: bool) -> dict[str, Any]:
    params = {k: row[k] for k in ("backbone", "noise_ratio", "method") if k in row}
    if several_fractions:
        params["fraction"] = row["fraction"]
    params.update({"selected": row.get("selected") or "", "selections": int(row.get("selections") or 0),
                   "fits": int(row.get("fits") or 0), "tasks": row.get("tasks") or "", "rule": SELECTION_RULE})
    metrics = {}
    for m in layout.LEADERBOARD_METRICS:
        v = row.get(m)
        if v is not None and not pd.isna(v):
            metrics[m] = round(float(v), METRIC_DECIMALS)
    return {"kind": "leaderboard", "key": layout.leaderboard_key(suite, row), "status": FINISHED,
            "name": layout.leaderboard_name(row, several_fractions), "params": params, "metrics": metrics,
            "tags": {SUITE_TAG: suite, ROW_TAG: i}, "parent": None, "overwrite": True}


def suite_fits(reader: "TrackingReader", suite: str) -> pd.DataFrame:
    """Finished fit runs of ``suite`` (all of the experiment's when runs carry no suite tag)."""
    fits = reader.runs_frame("fit")
    if SUITE_TAG in fits.columns:
        fits = fits[fits[SUITE_TAG].isna() | (fits[SUITE_TAG] == suite)].reset_index(drop=True)
    return fits


def publish_suite(tracker: "Tracker", *, force: bool = False) -> int:
    """Write the leaderboard runs and the suite run's artifacts; return the number of rows.

    Skipped (rows counted from the store) when the fit runs are the ones last published,
    unless ``force``.
    """
    from benchmark.report import make_report, spectra_for
    from benchmark.report_html import write_html_report

    suite = tracker.suite
    fits = suite_fits(tracker, suite)
    digest = config_hash(sorted(fits["run_id"])) if len(fits) else "none"
    assert tracker._writer is not None
    suite_run = tracker._writer.container(layout.suite_spec(suite))
    run = tracker.client.get_run(suite_run)
    if not force and run.data.tags.get(PUBLISHED_TAG) == digest:
        return int(run.data.metrics.get("leaderboard_rows", 0))
    rows = leaderboard_rows(fits)
    several = "fraction" in rows.columns
    keys = []
    for i, row in enumerate(rows.to_dict("records")):
        entry = _row_entry(suite, i, row, several)
        keys.append(entry["key"])
        tracker.log_entry(entry)
    if tracker.pending:  # the store went away mid-way: the next finish / sync publishes again
        return len(rows)
    delete_stale(tracker.client, tracker._writer, "leaderboard", keys, {SUITE_TAG: suite})
    with tempfile.TemporaryDirectory(prefix="nmlbench-publish-") as tmp:
        paths = make_report(fits, tmp, suite, spectra=spectra_for(tracker, fits))
        table = Path(tmp) / "leaderboard.json"
        # MLflow's table format (what MlflowClient.log_table writes); log_table itself appends
        # to an existing file, and a re-published board must replace the old one.
        rows.to_json(table, orient="split", index=False)
        html = write_html_report(tracker, suite, Path(tmp) / "report.html", fits=fits, rows=rows, figures=paths)
        files = {**{name: str(p) for name, p in paths.items()}, "leaderboard.json": str(table), "report.html": str(html)}
        figures = {n: p for n, p in files.items() if n.endswith(".png")}
        log_artifacts(tracker.client, suite_run, {**{f"figures/{n}": p for n, p in figures.items()},
                                                   **{n: p for n, p in files.items() if n not in figures}})
    tracker.client.set_tag(suite_run, _LOGGED_ARTIFACTS, '[{"path": "leaderboard.json", "type": "table"}]')
    tracker.client.log_metric(suite_run, "fits", float(len(fits)))
    tracker.client.log_metric(suite_run, "leaderboard_rows", float(len(rows)))
    tracker.client.set_tag(suite_run, PUBLISHED_TAG, digest)
    return len(rows)
