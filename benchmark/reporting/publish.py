"""Publish a suite's leaderboard into MLflow: one run per row, and the suite run's artifacts.

Each leaderboard row (backbone x noise ratio x head [x fraction], as computed by
``benchmark.leaderboard.leaderboard``) becomes a run of kind ``leaderboard``: the row's numbers
are its metrics, what validation chose is in its params, so sorting the runs table by a metric
is the leaderboard. A row is keyed by its identity (``layout.leaderboard_key``) and replaced only
when its content changes; rows that no longer exist are deleted. The suite run (the root of the
study's tree) gets the whole table (``leaderboard.json`` in MLflow's table format, .csv, .md),
the figures, ``claims.md`` and the self-contained ``report.html``.

Everything is read and written through the tracking layer's public API; the leaderboard and the
claims are computed once per publish and shared by the tables, the figures and the HTML page.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from benchmark.claims import claims_markdown
from benchmark.hashing import config_hash
from benchmark.heads import tiebreak_axes
from benchmark.leaderboard import columns, leaderboard, leaderboard_rows
from benchmark.report import make_report, spectra_for
from benchmark.report_html import write_html_report
from benchmark.tracking import layout
from benchmark.tracking.store import FINISHED, METRIC_DECIMALS, ROW_TAG, SUITE_TAG

if TYPE_CHECKING:
    from benchmark.tracking import FinishReport, Tracker

PUBLISHED_TAG = "nmlbench.published"  # suite run: digest of the fit runs the published board summarises
_LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # MLflow's tag listing a run's tables (as log_table sets it)

__all__ = [
    "METRIC_DECIMALS",
    "PUBLISHED_TAG",
    "finish_and_publish",
    "leaderboard_rows",
    "publish_suite",
    "selection_rule",
]


def selection_rule() -> str:
    """The rule a leaderboard row's ``rule`` param states (the tie-break axes of every registered head)."""
    return "best val_accuracy per task and seed; ties: the smaller value of " + ", then ".join(tiebreak_axes())


def _count(value: Any) -> int:
    """A count column of the rows table as an int (0 where a row has none: None or NaN)."""
    return 0 if value is None or pd.isna(value) else int(value)


def _row_entry(suite: str, i: int, row: dict[str, Any], several_fractions: bool) -> dict[str, Any]:
    params: dict[str, Any] = {k: row[k] for k in ("backbone", "noise_ratio", "label_noise_ratio", "head") if k in row}
    if several_fractions:
        params["fraction"] = row["fraction"]
    params.update(
        {
            "selected": row.get("selected") or "",
            "selections": _count(row.get("selections")),
            "fits": _count(row.get("fits")),
            "tasks": row.get("tasks") or "",
            "rule": selection_rule(),
        }
    )
    metrics = {}
    for m in columns():
        v = row.get(m)
        if v is not None and not pd.isna(v):
            metrics[m] = round(float(v), METRIC_DECIMALS)
    return {
        "kind": "leaderboard",
        "key": layout.leaderboard_key(suite, row),
        "status": FINISHED,
        "name": layout.leaderboard_name(row, several_fractions),
        "params": params,
        "metrics": metrics,
        "tags": {SUITE_TAG: suite, ROW_TAG: i},
        "parent": None,
        "overwrite": True,
    }


def publish_suite(tracker: Tracker, *, force: bool = False) -> int:
    """Write the leaderboard runs and the suite run's artifacts; return the number of rows.

    Skipped (rows counted from the store) when the fit runs are the ones last published,
    unless ``force``.
    """
    suite = tracker.suite
    fits = tracker.suite_fits(suite)
    digest = config_hash(sorted(fits["run_id"])) if len(fits) else "none"
    suite_run = tracker.structure_run(layout.suite_spec(suite))
    tags, marks = tracker.run_marks(suite_run)
    if not force and tags.get(PUBLISHED_TAG) == digest:
        return int(marks.get("leaderboard_rows", 0))
    board = leaderboard(fits)
    rows = leaderboard_rows(fits, board=board)
    several = "fraction" in rows.columns
    keys = []
    for i, row in enumerate(rows.to_dict("records")):
        entry = _row_entry(suite, i, row, several)
        keys.append(entry["key"])
        tracker.log_entry(entry)
    if tracker.pending:  # the store went away mid-way: the next finish / sync publishes again
        return len(rows)
    tracker.delete_stale("leaderboard", keys, {SUITE_TAG: suite})
    claims = claims_markdown(fits, suite)  # once: claims.md and the HTML page show the same text
    with tempfile.TemporaryDirectory(prefix="nmlbench-publish-") as tmp:
        paths = make_report(fits, tmp, suite, spectra=spectra_for(tracker, fits), board=board, claims=claims)
        table = Path(tmp) / "leaderboard.json"
        # MLflow's table format (what MlflowClient.log_table writes); log_table itself appends
        # to an existing file, and a re-published board must replace the old one.
        rows.to_json(table, orient="split", index=False)
        html = write_html_report(
            tracker,
            suite,
            Path(tmp) / "report.html",
            fits=fits,
            rows=rows,
            figures=paths,
            claims=claims,
            comparisons=paths["comparisons.md"].read_text() if "comparisons.md" in paths else "",
        )
        files = {
            **{name: str(p) for name, p in paths.items()},
            "leaderboard.json": str(table),
            "report.html": str(html),
        }
        figures = {n: p for n, p in files.items() if n.endswith(".png")}
        tracker.attach(
            suite_run,
            files={
                **{f"figures/{n}": p for n, p in figures.items()},
                **{n: p for n, p in files.items() if n not in figures},
            },
            tags={_LOGGED_ARTIFACTS: '[{"path": "leaderboard.json", "type": "table"}]'},
        )
    tracker.attach(
        suite_run,
        metrics={"fits": float(len(fits)), "leaderboard_rows": float(len(rows))},
        tags={PUBLISHED_TAG: digest},
    )
    return len(rows)


def finish_and_publish(
    tracker: Tracker, *, wait_s: float = 15.0, strict: bool = False, force: bool = False
) -> FinishReport:
    """The end of a run (or ``nmlbench sync``): deliver what is queued, then publish the suite.

    ``Tracker.finish`` with this layer's publisher: outages and errors are handled as it says.
    """
    return tracker.finish(wait_s=wait_s, strict=strict, publish=functools.partial(publish_suite, force=force))
