"""Tracker against a real MLflow: a SQLite store in tmp_path, and an ``mlflow server`` over HTTP.

Checked: fit records round-trip with typed params, one run per key (re-logging does not
duplicate, failures vanish when the key finishes), pre-training history and artifacts,
spectra, and the same behaviour through a tracking server.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark.pretrain import PretrainJob
from benchmark.tracking import Tracker, default_uri


def fit_record(key: str, ratio: float = 0.1, method: str = "nmtune", val: float = 0.8) -> dict:
    return {
        "key": key,
        "params": {
            "backbone": "net",
            "backbone_id": "abc",
            "objective": "supervised",
            "noise_kind": "symmetric",
            "noise_ratio": ratio,
            "pretrain_seed": 1,
            "task": "mnist-5k",
            "task_kind": "id",
            "head": method,
            "lam": 0.01 if method == "nmtune" else None,
            "depth": 2 if method != "lp" else None,
            "preset": "paper",
            "head_seed": 0,
            "fraction": 1.0,
        },
        "metrics": {
            "val_accuracy": val,
            "test_accuracy": 0.75,
            "test_macro_f1": 0.74,
            "test_sve": 3.5,
            "test_lsvr": 0.12,
            "test_sve_raw": 3.9,
            "test_lsvr_raw": 0.1,
            "test.accuracy": 0.75,
        },
        "tags": {"suite": "unit"},
    }


@pytest.fixture(scope="module")
def db_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'store' / 'mlflow.db'}"


@pytest.fixture
def tracker(db_uri, request) -> Tracker:
    return Tracker(db_uri, experiment=request.node.name, tags={"suite": "unit"})


def test_fit_roundtrip_types_and_artifacts(tracker):
    rec = fit_record("k1")
    rec["artifacts"] = {"confusion": np.eye(3), "hparams": {"lr": 0.1}}
    run_id = tracker.log_fit(rec)
    tracker.log_fit(fit_record("k2", ratio=0.0, method="lp", val=0.7))
    df = tracker.runs_frame("fit")
    assert list(df.key) == ["k1", "k2"] and df.run_id[0] == run_id
    r = df.iloc[0]
    assert r.noise_ratio == 0.1 and r["lam"] == 0.01 and r.depth == 2 and r.pretrain_seed == 1
    assert df.noise_ratio.dtype == "float64" and str(df.depth.dtype) == "Int64"
    assert df.loc[1, "noise_ratio"] == 0.0 and np.isnan(df.loc[1, "lam"]) and df.depth.isna()[1]
    assert r.test_accuracy == 0.75 and r["test.accuracy"] == 0.75 and r.suite == "unit"
    assert r.task == "mnist-5k" and r["head"] == "nmtune"
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["nmlbench.kind"] == "fit"
    names = sorted(a.path for a in tracker.client.list_artifacts(run_id))
    assert names == ["confusion.npy", "hparams.json"]
    local = tracker.client.download_artifacts(run_id, "confusion.npy", str(Path(tracker.uri[10:]).parent))
    np.testing.assert_array_equal(np.load(local), np.eye(3))


def test_relogging_a_key_never_duplicates_and_failures_are_replaced(tracker, db_uri):
    f1 = tracker.log_failure("k", fit_record("k")["params"], "RuntimeError: boom")
    f2 = tracker.log_fit({**fit_record("k"), "error": "TrainingDiverged: nan", "traceback": "tb"})
    assert f1 != f2 and tracker.client.get_run(f1).info.lifecycle_stage == "deleted"  # one failure kept
    failed = tracker.failures_frame()
    assert list(failed.key) == ["k"] and failed.error[0].startswith("TrainingDiverged: nan")
    assert tracker.completed_keys() == set()  # a failed key is retried
    ok = tracker.log_fit(fit_record("k"))
    assert tracker.log_fit(fit_record("k")) == ok  # no second run
    assert tracker.client.get_run(f2).info.lifecycle_stage == "deleted"
    assert tracker.failures_frame().empty
    # A fresh tracker (new process) sees the same single run and reuses the experiment.
    again = Tracker(db_uri, experiment=tracker.experiment)
    assert again.experiment_id == tracker.experiment_id
    assert again.log_fit(fit_record("k")) == ok
    assert len(again.runs_frame()) == 1 and again.completed_keys("fit") == {"k"}
    new = again.log_fit({**fit_record("k"), "metrics": {"val_accuracy": 0.9}}, overwrite=True)
    frame = again.runs_frame()
    assert new != ok and list(frame.run_id) == [new] and frame.val_accuracy[0] == 0.9


def test_pretrain_history_noise_file_and_kinds(tracker, tmp_path):
    job = PretrainJob(
        objective="supervised", corpus="fashion-mnist", arch="test_resnet", noise_ratio=0.2, epochs=2, display="tr"
    )
    noise = tmp_path / "noise.npz"
    np.savez(noise, noisy_labels=np.arange(4))
    result = {
        "metrics": [{"epoch": 0, "loss": 2.0, "train_accuracy": 0.3}, {"epoch": 1, "loss": 1.5, "train_accuracy": 0.5}],
        "noise_path": noise,
        "checkpoint_path": tmp_path / "model.pt",
        "realised_ratio": 0.2,
        "reused": False,
    }
    run_id = tracker.log_pretrain(job, result)
    assert tracker.log_pretrain(job, result) == run_id
    hist = tracker.client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(0, 2.0), (1, 1.5)]
    run = tracker.client.get_run(run_id)
    assert run.data.metrics["realised_ratio"] == 0.2 and run.data.metrics["train_accuracy"] == 0.5
    assert run.data.tags["checkpoint"] == str(tmp_path / "model.pt") and run.data.tags["nmlbench.key"] == job.key
    assert run.data.params["noise_ratio"] == "0.2" and json.loads(run.data.params["model_kwargs"]) == {}
    assert [a.path for a in tracker.client.list_artifacts(run_id)] == ["noise.npz"]
    tracker.log_fit(fit_record("f"))
    assert tracker.completed_keys("pretrain") == {job.key}
    assert tracker.completed_keys("fit") == {"f"} and tracker.completed_keys() == {"f", job.key}
    assert list(tracker.runs_frame("pretrain").key) == [job.key]


def test_pretrain_result_dataclass_and_failed_job(tracker, tmp_path):
    """The real ``PretrainResult`` (a dataclass holding its job) logs as is; errors log as FAILED."""
    from benchmark.pretrain import PretrainResult

    job = PretrainJob(
        objective="clip", corpus="fashion-mnist", arch="nml-tiny-clip", noise_kind="swap", noise_ratio=0.3, seed=1
    )
    ok = PretrainResult(
        job=job,
        key=job.key,
        checkpoint_path=tmp_path / "model.pt",
        noise_path=tmp_path / "absent.npz",
        metrics=[{"epoch": 0, "loss": 3.0}],
        realised_ratio=0.3,
        seconds=12.5,
    )
    run = tracker.client.get_run(tracker.log_pretrain(job, ok))
    assert run.data.metrics == {"loss": 3.0, "realised_ratio": 0.3, "seconds": 12.5}
    assert run.data.params["noise_kind"] == "swap" and run.data.params["name"] == job.name
    other = PretrainJob(objective="clip", corpus="fashion-mnist", arch="nml-tiny-clip", noise_kind="swap", seed=2)
    bad = PretrainResult(
        job=other,
        key=other.key,
        checkpoint_path=tmp_path / "x",
        noise_path=tmp_path / "y",
        error="TrainingDiverged: loss nan at epoch 0",
    )
    failed = tracker.client.get_run(tracker.log_pretrain(other, bad))
    assert failed.info.status == "FAILED" and failed.data.tags["error"].startswith("TrainingDiverged")
    assert tracker.completed_keys("pretrain") == {job.key}


def test_spectra_roundtrip_with_labels(tracker):
    params = {"backbone": "net", "noise_ratio": 0.1, "pretrain_seed": 0, "objective": "supervised"}
    tracker.log_spectrum(params, "mnist-5k", np.array([3.0, 2.0, 1.0]))
    tracker.log_spectrum({**params, "noise_ratio": 0.3}, "mnist-5k", np.array([2.0, 2.0, 2.0]))
    tracker.log_spectrum("frozen", "animal-mnist", np.array([5.0, 1.0]))
    tracker.log_spectrum("frozen", "animal-mnist", np.array([9.0]))  # same key: kept once
    on_task = tracker.load_spectra("mnist-5k", pretrain_seed=0)
    assert list(on_task) == ["net · noise 10%", "net · noise 30%"]
    np.testing.assert_array_equal(on_task["net · noise 10%"], [3.0, 2.0, 1.0])
    everything = tracker.load_spectra()
    assert set(everything) == {
        "net · noise 10% · s0 / mnist-5k",
        "net · noise 30% · s0 / mnist-5k",
        "frozen / animal-mnist",
    }
    np.testing.assert_array_equal(everything["frozen / animal-mnist"], [5.0, 1.0])


def test_runs_form_the_study_tree_with_short_readable_names(tracker, tmp_path):
    """suite run > backbone x noise ratio group > fit / pre-training / spectrum runs."""
    fit = tracker.log_fit(fit_record("tree-fit"))
    job = PretrainJob(
        objective="supervised",
        corpus="fashion-mnist",
        arch="test_resnet",
        noise_ratio=0.1,
        epochs=1,
        display="net",
        seed=3,
    )
    pre = tracker.log_pretrain(job, {"metrics": [{"epoch": 0, "loss": 1.0}]})
    spec = tracker.log_spectrum({"backbone": "net", "noise_ratio": 0.1, "pretrain_seed": 1}, "mnist-5k", np.ones(3))
    frozen = tracker.log_fit(
        {
            **fit_record("tree-frozen", method="lp"),
            "params": {
                **fit_record("x", method="lp")["params"],
                "backbone": "mobilenet",
                "noise_ratio": float("nan"),
                "objective": "frozen",
            },
        }
    )
    get = tracker.client.get_run
    names = {k: get(r).info.run_name for k, r in (("fit", fit), ("pre", pre), ("spec", spec), ("frozen", frozen))}
    assert names == {
        "fit": "nmtune λ0.01 d2 · mnist-5k · p1 s0",
        "pre": "pretrain p3 · fashion-mnist",
        "spec": "spectrum p1 · mnist-5k",
        "frozen": "lp · mnist-5k · s0",
    }
    group = get(get(fit).data.tags["mlflow.parentRunId"])
    assert group.info.run_name == "net @ 10%" and group.data.tags["nmlbench.kind"] == "group"
    assert get(pre).data.tags["mlflow.parentRunId"] == group.info.run_id  # same model, same group
    assert get(spec).data.tags["mlflow.parentRunId"] == group.info.run_id
    other = get(get(frozen).data.tags["mlflow.parentRunId"])
    assert other.info.run_name == "mobilenet (frozen)"
    suite = get(group.data.tags["mlflow.parentRunId"])
    assert suite.info.run_name == tracker.suite and suite.data.tags["nmlbench.kind"] == "suite"
    assert other.data.tags["mlflow.parentRunId"] == suite.info.run_id
    # Groups and the suite run are found again, never duplicated.
    tracker.log_fit(fit_record("tree-fit-2", ratio=0.1, method="mlp"))
    groups = tracker.client.search_runs([tracker.experiment_id], "tags.`nmlbench.kind` = 'group'")
    assert sorted(g.info.run_name for g in groups) == ["mobilenet (frozen)", "net @ 10%"]
    assert tracker.completed_keys() == {
        "tree-fit",
        "tree-fit-2",
        "tree-frozen",
        job.key,
        get(spec).data.tags["nmlbench.key"],
    }


def test_experiment_opens_on_training_runs_and_offers_the_leaderboard_view(tracker):
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.leaderboard"])
    assert view["searchFilter"] == "tags.`nmlbench.kind` = 'leaderboard'"
    assert view["orderByKey"] == "metrics.`id_acc`" and view["orderByAsc"] is False
    assert "metrics.`id_acc_ci`" in view["selectedColumns"]
    link = tracker.leaderboard_url("http://127.0.0.1:5000")
    assert link == (
        f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs"
        "?viewStateShareKey=leaderboard&workflowType=machine_learning"
    )
    assert link.split("5000/")[1] in exp.tags["mlflow.note.content"]


def test_a_record_the_store_rejects_raises_and_does_not_block_the_next(tracker):
    bad = {**fit_record("bad"), "params": {**fit_record("bad")["params"], "bad*name": 1}}
    with pytest.raises(Exception, match="bad\\*name|Invalid"):
        tracker.log_fit(bad)
    assert tracker.pending == []  # dropped from the queue (it stays in the journal, if any)
    assert tracker.log_fit(fit_record("good")) is not None
    assert tracker.completed_keys("fit") == {"good"}


def test_default_uri_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_uri() == f"sqlite:///{tmp_path / '.nmlbench' / 'mlflow.db'}"


@pytest.mark.slow
def test_through_an_mlflow_server(tmp_path):
    from benchmark.ui_check import MlflowServer

    with MlflowServer(
        f"sqlite:///{tmp_path / 'server.db'}", artifacts=tmp_path / "artifacts", log=tmp_path / "server.log"
    ) as server:
        uri = server.url
        tracker = Tracker(uri, "served")
        tracker.log_failure("a", fit_record("a")["params"], "boom")
        first = tracker.log_fit({**fit_record("a"), "artifacts": {"s": np.arange(3.0)}})
        tracker.log_fit(fit_record("b", ratio=0.3))
        reader = Tracker(uri, "served")  # another client: a CLI reading while a sweep writes
        assert reader.log_fit(fit_record("a")) == first
        df = reader.runs_frame()
        assert list(df.key) == ["a", "b"] and list(df.noise_ratio) == [0.1, 0.3]
        assert reader.completed_keys("fit") == {"a", "b"} and reader.failures_frame().empty
        tracker.log_spectrum("net", "t", np.array([2.0, 1.0]))
        np.testing.assert_array_equal(reader.load_spectra("t")["net"], [2.0, 1.0])


def test_sweep_sink_writes_records_in_order_off_the_callers_thread(db_uri, tmp_path):
    """The heads stage hands fit records to one writer thread (Ray Tune's loop must not wait on
    MLflow): every record handed over is in MLflow, in order, once ``close`` returns."""
    from benchmark.sink import TrackerSink

    tracker = Tracker(db_uri, experiment="sink-order", journal=tmp_path / "journal.jsonl")
    sink = TrackerSink(tracker, total=6)
    for i in range(6):
        sink(fit_record(f"s{i}", val=0.5 + i / 100))
    sink.close()
    df = tracker.runs_frame("fit")
    assert list(df.key) == [f"s{i}" for i in range(6)] and list(df.val_accuracy) == [0.5 + i / 100 for i in range(6)]
    assert (sink.ok, sink.failed) == (6, 0) and not sink.thread.is_alive()


def test_sweep_sink_stops_at_a_record_it_cannot_write_and_keeps_the_earlier_ones(db_uri, tmp_path):
    from benchmark.sink import TrackerSink

    tracker = Tracker(db_uri, experiment="sink-error", journal=tmp_path / "journal.jsonl")
    sink = TrackerSink(tracker, total=3)
    bad = fit_record("bad")
    del bad["key"]  # a record the tracker cannot file
    for rec in (fit_record("first"), bad, fit_record("after")):
        sink(rec)
    with pytest.raises(KeyError):
        sink.close()
    assert list(tracker.runs_frame("fit").key) == ["first"]  # written before; nothing after the failure
    with pytest.raises(KeyError):
        sink(fit_record("later"))  # the sweep's next record raises in the caller: the run stops there
