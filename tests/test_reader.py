"""Read-only commands write nothing: no database file, no experiment, no run, no restored experiment.

`nmlbench leaderboard` and `nmlbench report` go through ``TrackingReader``; checked on a missing
store, on a store without the suite's experiment, on a deleted experiment, and on the shared
published study (the database file must stay byte-for-byte the same).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.tracking import NothingTracked, Tracker, TrackingReader

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _suite(tmp: Path, name: str) -> Path:
    data = yaml.safe_load((REPO / "suites" / "quick.yaml").read_text())
    data.update(name=name, work_dir=str(tmp / "work"))
    data["tracking"] = {"experiment": name}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_missing_store_says_nothing_ran_and_creates_no_file(tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    with pytest.raises(NothingTracked, match="nothing has been run yet") as err:
        TrackingReader(uri, "quick")
    assert uri in str(err.value)
    suite = _suite(tmp_path, "never-run")
    res = runner.invoke(app, ["leaderboard", str(suite), "--tracking-uri", uri])
    assert res.exit_code == 0 and uri in res.output and "nothing has been run yet" in res.output
    res = runner.invoke(app, ["report", str(suite), "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--html"])
    assert res.exit_code == 2 and "nothing has been run yet" in res.output
    assert not db.exists() and not db.parent.exists() and not (tmp_path / "out").exists()
    assert not (tmp_path / "work").exists()
    # A file a run has only just created (no tables yet): reported, never migrated by the reader.
    db.parent.mkdir()
    db.touch()
    with pytest.raises(NothingTracked, match="not complete"):
        TrackingReader(uri, "quick")
    assert db.stat().st_size == 0


def test_reading_the_study_changes_no_byte_of_the_store(study, tmp_path, monkeypatch):
    suite = _suite(tmp_path, study.experiment)
    before = _snapshot(study.root)
    cwd = tmp_path / "cwd"  # nothing may appear where the command runs (MLflow once made `file:/<path>` folders)
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    runs_before = len(
        TrackingReader(study.uri, study.experiment).client.search_runs(
            [TrackingReader(study.uri, study.experiment).experiment_id], max_results=5000
        )
    )
    for args in (
        ["leaderboard", str(suite)],
        ["leaderboard", str(suite), "--format", "markdown"],
        ["report", str(suite), "--out", str(tmp_path / "report"), "--html"],
    ):
        res = runner.invoke(app, [*args, "--tracking-uri", study.uri])
        assert res.exit_code == 0, res.output
    assert _snapshot(study.root) == before
    assert list(cwd.iterdir()) == []
    reader = TrackingReader(study.uri, study.experiment)
    assert len(reader.client.search_runs([reader.experiment_id], max_results=5000)) == runs_before
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    assert "NMTune" in (tmp_path / "report" / "leaderboard.md").read_text()


def test_missing_or_deleted_experiment_is_reported_not_created_or_restored(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "exists")
    client = tracker.client
    n_experiments = len(client.search_experiments(view_type=3))  # ALL: active and deleted
    with pytest.raises(NothingTracked, match="no experiment 'other'"):
        TrackingReader(uri, "other")
    res = runner.invoke(app, ["leaderboard", str(_suite(tmp_path, "other")), "--tracking-uri", uri])
    assert res.exit_code == 0 and "no experiment 'other'" in res.output
    assert len(client.search_experiments(view_type=3)) == n_experiments
    client.delete_experiment(tracker.experiment_id)
    with pytest.raises(NothingTracked, match="was deleted"):
        TrackingReader(uri, "exists")
    res = runner.invoke(
        app, ["report", str(_suite(tmp_path, "exists")), "--tracking-uri", uri, "--out", str(tmp_path / "out")]
    )
    assert res.exit_code == 2 and "was deleted" in res.output
    assert client.get_experiment(tracker.experiment_id).lifecycle_stage == "deleted"


def test_a_store_written_with_the_old_param_names_reads_with_todays(tmp_path):
    """Stores written before issue 24's renames hold ``method`` (the head), ``ratio`` (in a fit:
    the MLP width) and the pre-training epoch metric ``world_size``; the reader gives them as
    ``head``, ``width`` and ``workers`` (``tracking.store.OLD_PARAM_NAMES``), values unchanged."""
    from benchmark.tracking.store import EPOCH_TAG, KEY_TAG, KIND_TAG, OLD_PARAM_NAMES, ROW_TAG

    assert OLD_PARAM_NAMES == {None: {"method": "head", "world_size": "workers"}, "fit": {"ratio": "width"}}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "old-names")
    client, exp = tracker.client, tracker.experiment_id

    def run(kind: str, key: str, params: dict, metrics: dict, tags: dict | None = None) -> str:
        rid = client.create_run(exp, tags={KIND_TAG: kind, KEY_TAG: key, **(tags or {})}).info.run_id
        for k, v in params.items():
            client.log_param(rid, k, v)
        for k, v in metrics.items():
            for step, value in enumerate(v if isinstance(v, list) else [v]):
                client.log_metric(rid, k, value, step=step)
        client.set_terminated(rid, "FINISHED")
        return rid

    fit = {"backbone": "net", "noise_ratio": "0.1", "method": "mlp", "ratio": "2.0", "depth": "1", "task": "a"}
    run("fit", "f1", fit, {"test_accuracy": 0.75})
    run(
        "leaderboard", "l1", {"backbone": "net", "noise_ratio": "0.1", "method": "mlp"}, {"id_acc": 0.5}, {ROW_TAG: "0"}
    )
    run(
        "pretrain",
        "p1",
        {"name": "net-p0", "noise_ratio": "0.1", "workers": "2"},
        {"loss": [2.0, 1.0], "world_size": [2, 2]},
        {EPOCH_TAG: "loss,world_size"},
    )
    run("spectrum", "s1", {"backbone": "net", "task": "a", "ratio": "0.5"}, {})

    reader = TrackingReader(uri, "old-names")
    fits = reader.runs_frame("fit")
    assert "method" not in fits.columns and "ratio" not in fits.columns
    row = fits.iloc[0]
    assert (row["head"], row["width"], row["noise_ratio"], row["depth"]) == ("mlp", 2.0, 0.1, 1)
    board = reader.leaderboard_frame()
    assert list(board.columns[:3]) == ["backbone", "noise_ratio", "head"] and board["head"].tolist() == ["mlp"]
    (pre,) = reader.pretrain_records()
    assert pre.curves == {"loss": [(0, 2.0), (1, 1.0)], "workers": [(0, 2.0), (1, 2.0)]}
    assert pre.metrics["workers"] == 2.0 and "world_size" not in pre.metrics and pre.params["workers"] == 2
    # ``ratio`` outside a fit run is not the MLP width: it keeps its name.
    assert reader.runs_frame("spectrum").iloc[0]["ratio"] == 0.5
