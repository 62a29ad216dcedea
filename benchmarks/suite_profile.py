"""Where a suite run's wall time went, from what ``nmlbench run`` leaves in its work dir.

Sources: ``runs/<suite>-<time>.json`` (wall seconds per phase and the sum of per-fit seconds),
``pretrain/<key>/done.json`` (per-epoch step seconds of each Ray Train job and its end-to-end
seconds), the feature cache's ``<key>.json`` files (seconds of each extraction) and the MLflow
store (each run's start and end time: how long the driver spent writing it).

Useful work is what a hand-written single-purpose script would also have to do: training
steps, backbone forward passes, head fits (and their evaluation). Phases run ``concurrency``
jobs at once, so a phase's useful wall time is its summed useful seconds / ``concurrency``;
the rest of the phase is overhead (Ray start-up, scheduling, MLflow writes, idle slots).
Extraction may start during pre-training (``pairs_extracted_early``): all of it is counted as the
features phase's useful work, so that phase's overhead can be negative; the overhead of the two
phases together, and the run's total, stay exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def latest_run(work_dir: Path) -> dict[str, Any]:
    runs = sorted((work_dir / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"no runs/*.json in {work_dir}: did `nmlbench run` finish?")
    return json.loads(runs[-1].read_text())


def pretrain_jobs(work_dir: Path) -> list[dict[str, Any]]:
    jobs = []
    for done in sorted((work_dir / "pretrain").glob("*/done.json")):
        info = json.loads(done.read_text())
        steps = [float(m["seconds"]) for m in info.get("metrics", [])]
        jobs.append(
            {
                "name": info.get("name"),
                "seconds": float(info.get("seconds", 0.0)),
                "step_seconds": sum(steps),
                "epochs": len(steps),
            }
        )
    return jobs


def extraction_seconds(work_dir: Path) -> tuple[float, int]:
    total, n = 0.0, 0
    for meta in (work_dir / "features").glob("*/*.json"):
        total += float(json.loads(meta.read_text()).get("seconds", 0.0))
        n += 1
    return total, n


def mlflow_write_seconds(tracking_uri: str, experiment: str) -> dict[str, float]:
    """Driver seconds spent writing runs (create -> terminate), per run kind."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, float] = {}
    if exp is None:
        return out
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        for r in page:
            kind = r.data.tags.get("nmlbench.kind", "other")
            if r.info.end_time and r.info.start_time:
                out[kind] = out.get(kind, 0.0) + (r.info.end_time - r.info.start_time) / 1000.0
            out[f"{kind}_runs"] = out.get(f"{kind}_runs", 0) + 1
        token = page.token
        if not token:
            return out


def breakdown(work_dir: str | Path, concurrency: int, wall_seconds: float | None = None) -> dict[str, Any]:
    """Shares of the run's wall time: per phase, and useful work vs overhead inside phases."""
    work = Path(work_dir)
    run = latest_run(work)
    sec = run["seconds"]
    total = float(sec["total"])
    jobs = pretrain_jobs(work)
    steps = sum(j["step_seconds"] for j in jobs)
    extract, n_extract = extraction_seconds(work)
    fits = float(run.get("fit_seconds", 0.0))
    mlflow = mlflow_write_seconds(run["tracking_uri"], run["experiment"])
    useful = {"pretrain": steps / concurrency, "features": extract / concurrency, "heads": fits / concurrency}
    overhead = {k: float(sec[k]) - useful[k] for k in useful}
    # Publishing the leaderboard (runs, table, figures, report) is neither training, extraction
    # nor fitting: overhead, like the fixed steps of "other". Before 2026-12-02 it was left out
    # of both sides, which understated the share by its ~5 s.
    overhead["publish"] = float(sec.get("publish", 0.0))
    overhead["other"] = float(sec["other"])
    phases = ("pretrain", "features", "heads", "publish", "other")
    out = {
        "total_seconds": total,
        "phase_seconds": {k: float(sec.get(k, 0.0)) for k in phases},
        "phase_share": {k: float(sec.get(k, 0.0)) / total for k in phases},
        "concurrency": concurrency,
        "pretrain": {
            "jobs": len(jobs),
            "sum_step_seconds": steps,
            "sum_job_seconds": sum(j["seconds"] for j in jobs),
            "sum_startup_seconds": sum(j["seconds"] - j["step_seconds"] for j in jobs),
            "startup_per_job_mean": (sum(j["seconds"] - j["step_seconds"] for j in jobs) / len(jobs)) if jobs else 0.0,
            "per_job": jobs,
        },
        "features": {
            "extractions": n_extract,
            "sum_extraction_seconds": extract,
            "pairs_extracted_early": run.get("pairs_extracted_early", 0),
        },
        "heads": {
            "fits_run": run.get("fits_run"),
            "sum_fit_seconds": fits,
            "fit_seconds_over_concurrency": fits / concurrency,
        },
        "mlflow_driver_write_seconds": mlflow,
        "useful_seconds": useful,
        "overhead_seconds": overhead,
        "useful_share": sum(useful.values()) / total,
        "overhead_share": sum(overhead.values()) / total,
        "overhead_share_by_phase": {k: v / total for k, v in overhead.items()},
    }
    if wall_seconds is not None:
        out["cli_wall_seconds"] = wall_seconds
        out["cli_outside_run_suite_seconds"] = wall_seconds - total
    return out
