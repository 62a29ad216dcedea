"""The leaderboard lives in MLflow: one run per row, sortable by metric, replaced never duplicated.

Against real SQLite MLflow stores: the shared published study (read only) and a store of this
module's own that is changed and re-published.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import fit_records, synthetic_fits
from typer.testing import CliRunner

from benchmark.leaderboard import COLUMNS, columns, leaderboard, leaderboard_rows, selected_fits
from benchmark.leaderboard_text import render
from benchmark.reporting import finish_and_publish, publish_suite
from benchmark.tracking import Tracker, TrackingReader
from benchmark.tracking.layout import leaderboard_name, suite_spec
from benchmark.tracking.store import search_all


def _board_runs(reader) -> list:
    return search_all(reader.client, reader.experiment_id, "tags.`nmlbench.kind` = 'leaderboard'")


def test_each_row_is_a_run_with_the_rows_numbers_and_its_selection(study):
    reader = TrackingReader(study.uri, study.experiment)
    expected = leaderboard(study.fits)
    runs = _board_runs(reader)
    assert len(runs) == len(expected) == 6
    by_name = {r.info.run_name: r for r in runs}
    for row in expected.to_dict("records"):
        run = by_name[leaderboard_name(row)]  # e.g. "NMTune · net @ 10%", "LP · mobilenet (frozen)"
        assert "mlflow.parentRunId" not in run.data.tags  # top level: the table sorts rows, not trees
        for m in COLUMNS:
            if pd.isna(row[m]):
                assert m not in run.data.metrics  # e.g. OOD columns of the frozen backbone
            else:
                assert run.data.metrics[m] == pytest.approx(row[m], abs=1e-6)
        p = run.data.params
        assert p["head"] == row["head"] and p["backbone"] == row["backbone"]
    # What validation chose: counts over the (task x seed) selections; LP has no grid.
    chosen = selected_fits(study.fits)
    nm = by_name["NMTune · net @ 0%"].data.params
    part = chosen[(chosen.backbone == "net") & (chosen.noise_ratio == 0.0) & (chosen["head"] == "nmtune")]
    assert int(nm["selections"]) == len(part) == 6 and int(nm["fits"]) == 24
    counts = {label: int(n) for label, n in (s.rsplit(" ×", 1) for s in nm["selected"].split(", "))}
    assert sum(counts.values()) == 6
    want = part.apply(lambda r: f"λ{r['lam']:g} d{int(r['depth'])}", axis=1).value_counts().to_dict()
    assert counts == want
    assert by_name["LP · net @ 0%"].data.params["selected"] == "no grid ×6"


def test_sorting_runs_by_a_metric_is_the_leaderboard(study):
    reader = TrackingReader(study.uri, study.experiment)
    ordered = reader.client.search_runs(
        [reader.experiment_id], "tags.`nmlbench.kind` = 'leaderboard'", order_by=["metrics.id_acc DESC"]
    )
    expected = leaderboard(study.fits).sort_values("id_acc", ascending=False)
    assert [r.info.run_name for r in ordered] == [leaderboard_name(r) for r in expected.to_dict("records")]


def test_published_frame_and_cli_equal_the_computed_leaderboard(study):
    from benchmark.cli import app

    reader = TrackingReader(study.uri, study.experiment)
    board = reader.leaderboard_frame(study.experiment, columns=columns())
    expected = leaderboard(study.fits)
    pd.testing.assert_frame_equal(board, expected, check_dtype=False, atol=1e-6)
    # without the reporting layer's columns: the same values, the registry's metric columns first
    plain = reader.leaderboard_frame(study.experiment)
    assert list(plain.columns[3:10]) == list(COLUMNS[:7]) and set(plain.columns) == set(expected.columns)
    pd.testing.assert_frame_equal(plain[list(expected.columns)], expected, check_dtype=False, atol=1e-6)
    res = CliRunner().invoke(
        app, ["leaderboard", str(_suite_file(study)), "--tracking-uri", study.uri, "--format", "csv"]
    )
    assert res.exit_code == 0, res.output
    back = pd.read_csv(__import__("io").StringIO(res.stdout))
    pd.testing.assert_frame_equal(back, expected, check_dtype=False, atol=1e-6)
    table = CliRunner().invoke(app, ["leaderboard", str(_suite_file(study)), "--tracking-uri", study.uri])
    assert table.exit_code == 0 and render(expected, "table").splitlines()[2] in table.stdout


def test_suite_run_holds_table_figures_claims_and_report(study, tmp_path):
    reader = TrackingReader(study.uri, study.experiment)
    suite = search_all(
        reader.client, reader.experiment_id, f"tags.`nmlbench.key` = '{suite_spec(study.experiment)['key']}'"
    )
    assert len(suite) == 1 and suite[0].info.run_name == study.experiment
    run_id = suite[0].info.run_id
    top = {a.path for a in reader.client.list_artifacts(run_id)}
    assert {"leaderboard.json", "leaderboard.csv", "leaderboard.md", "claims.md", "report.html", "figures"} <= top
    figures = {a.path for a in reader.client.list_artifacts(run_id, "figures")}
    assert {"figures/id_ood_vs_noise.png", "figures/spectra.png"} <= figures
    table = json.loads(Path(reader.client.download_artifacts(run_id, "leaderboard.json", str(tmp_path))).read_text())
    assert table["columns"][:3] == ["backbone", "noise_ratio", "head"] and len(table["data"]) == 6
    assert json.loads(suite[0].data.tags["mlflow.loggedArtifacts"]) == [{"path": "leaderboard.json", "type": "table"}]
    assert suite[0].data.metrics["fits"] == len(study.fits)


def _suite_file(study) -> Path:
    """A suite file naming the study's experiment (the CLI resolves store and experiment from it)."""
    return _suite_yaml(study.root, study.experiment)


def _suite_yaml(root: Path, experiment: str, uri: str | None = None) -> Path:
    """``root/suite.yaml``: the quick suite named ``experiment``, working in ``root`` (and tracking
    to ``uri`` when given), written once."""
    import yaml

    path = root / "suite.yaml"
    if not path.exists():
        base = yaml.safe_load((Path(__file__).resolve().parents[1] / "suites" / "quick.yaml").read_text())
        base.update(name=experiment, work_dir=str(root))
        base["tracking"] = {"experiment": experiment, **({"uri": uri} if uri else {})}
        path.write_text(yaml.safe_dump(base))
    return path


def test_republishing_replaces_changed_rows_and_drops_stale_ones(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    df = synthetic_fits()
    df = df[df.backbone == "net"].reset_index(drop=True)
    tracker = Tracker(uri, "mutable", suite="mutable")
    records = fit_records(df, "mutable")
    for rec in records:
        tracker.log_fit(rec)
    assert finish_and_publish(tracker).leaderboard_rows == 4
    first = {r.info.run_name: r.info.run_id for r in _board_runs(tracker)}
    # Nothing changed: publishing again keeps every run (no churn, no duplicates).
    assert publish_suite(tracker, force=True) == 4
    assert {r.info.run_name: r.info.run_id for r in _board_runs(tracker)} == first
    # A better LP fit at 10 % noise changes one row only.
    extra = dict(
        records[
            [
                i
                for i, r in enumerate(records)
                if r["params"]["head"] == "lp" and r["params"]["noise_ratio"] == 0.1 and r["params"]["task"] == "a"
            ][0]
        ]
    )
    extra = {
        **extra,
        "key": "extra",
        "params": {**extra["params"], "head_seed": 1},
        "metrics": {**extra["metrics"], "test_accuracy": 0.999},
    }
    tracker.log_fit(extra)
    finish_and_publish(tracker)
    now = {r.info.run_name: r.info.run_id for r in _board_runs(tracker)}
    assert set(now) == set(first)
    assert [n for n in now if now[n] != first[n]] == ["LP · net @ 10%"]
    board = TrackingReader(uri, "mutable").leaderboard_frame("mutable")
    # the new head seed is averaged inside its pre-training seed: still 2 units, one of them of 2 head seeds
    assert board.n.tolist() == [2, 2, 2, 2] and board.n_head.tolist() == [1, 1, 2, 1]
    # The fits of one head disappear: its rows go too.
    for run in search_all(tracker.client, tracker.experiment_id, "params.head = 'nmtune'"):
        tracker.client.delete_run(run.info.run_id)
    finish_and_publish(tracker)
    assert sorted(r.info.run_name for r in _board_runs(tracker)) == ["LP · net @ 0%", "LP · net @ 10%"]
    rows = leaderboard_rows(TrackingReader(uri, "mutable").runs_frame("fit"))
    assert list(rows["head"]) == ["lp", "lp"] and (rows.fits == [6, 7]).all()
    assert np.isfinite(rows.id_acc).all()


def test_a_publication_stopped_part_way_is_not_shown_as_the_leaderboard(tmp_path, monkeypatch):
    """A publication that fails after some rows (the suite run, written last, never marked) leaves
    those rows in the store: ``nmlbench leaderboard`` shows the board computed from every fit, not
    the partial one, and says how to publish it (the contenders suite once showed 2 of 80 rows)."""
    from benchmark.cli import app
    from benchmark.reporting import publish as publish_module

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    df = synthetic_fits()
    notes: list[str] = []
    tracker = Tracker(uri, "partial", suite="partial", echo=notes.append)
    for rec in fit_records(df, "partial"):
        tracker.log_fit(rec)
    real_entry = publish_module._row_entry

    def fail_on_third(suite, i, row, several):
        if i == 2:
            raise ValueError("injected: publication stops after two rows")
        return real_entry(suite, i, row, several)

    monkeypatch.setattr(publish_module, "_row_entry", fail_on_third)
    finish_and_publish(tracker)  # not strict: the failure is a note, the fit records stay
    assert len(_board_runs(tracker)) == 2 and any("injected" in n for n in notes), notes

    suite_file = str(_suite_yaml(tmp_path, "partial", uri))
    # `nmlbench sync` meets the same failure: one error line after the traceback, exit 2, nothing lost
    failed = CliRunner().invoke(app, ["sync", suite_file, "--wait", "1"])
    assert failed.exit_code == 2, failed.output
    assert "publishing the leaderboard of 'partial' failed (ValueError: injected" in failed.stderr
    assert "bug in nml-bench" in failed.stderr and "nmlbench leaderboard" in failed.stderr
    assert len(TrackingReader(uri, "partial").runs_frame("fit")) == len(df)
    monkeypatch.setattr(publish_module, "_row_entry", real_entry)
    res = CliRunner().invoke(app, ["leaderboard", suite_file, "--format", "csv"])
    assert res.exit_code == 0, res.output
    shown = pd.read_csv(__import__("io").StringIO(res.stdout))
    expected = leaderboard(df)
    assert len(shown) == len(expected) == 6
    assert "not all published" in res.stderr and "nmlbench sync partial" in res.stderr
    # once published in full, the published rows are what it shows, without a note
    finish_and_publish(tracker)
    again = CliRunner().invoke(app, ["leaderboard", suite_file, "--format", "csv"])
    assert again.exit_code == 0 and len(pd.read_csv(__import__("io").StringIO(again.stdout))) == 6
    assert "published" not in again.stderr
