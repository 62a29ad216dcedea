"""Nothing is lost when MLflow is away: the journal, and delivery through a real server outage.

- The journal round-trips entries (arrays, NaN, paths), skips a torn last line, last line wins.
- Against a real ``mlflow server`` (SQLite behind it): records logged while it is down are
  queued (the caller goes on), delivered once when it answers again, and a process that ended
  before delivering leaves them in the journal for the next one (``Tracker`` / ``nmlbench sync``).
- Through the CLI with real Ray: ``nmlbench run`` keeps sweeping while the server is killed and
  restarted on the same port and store; after the run (and ``nmlbench sync``) every fit is in
  the store exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import fit_records, synthetic_fits

from benchmark.reporting import finish_and_publish
from benchmark.tracking import Journal, Tracker, TrackingReader
from benchmark.tracking.store import search_all
from benchmark.ui_check import MlflowServer, free_port

BIN = Path(sys.executable).parent


def test_journal_round_trips_entries_and_survives_a_torn_line(tmp_path):
    j = Journal(tmp_path / "j" / "x.jsonl")
    assert j.read() == [] and not j.path.exists()
    j.append({"kind": "fit", "key": "a", "params": {"r": float("nan"), "p": tmp_path}, "v": np.float32(0.5)})
    j.append({"kind": "spectrum", "key": "s", "artifacts": {"spectrum.npy": np.arange(4.0)}})
    j.append({"kind": "fit", "key": "a", "metrics": {"acc": 0.9}})
    with open(j.path, "a") as f:
        f.write('{"kind": "fit", "key": "b", "metr')  # a crash in the middle of a write
    with pytest.warns(UserWarning, match="unreadable journal line"):
        entries = j.read()
    assert len(entries) == 3 and entries[0]["params"] == {"r": None, "p": str(tmp_path)} and entries[0]["v"] == 0.5
    np.testing.assert_array_equal(entries[1]["artifacts"]["spectrum.npy"], np.arange(4.0))
    with pytest.warns(UserWarning):
        latest = j.latest()
    assert list(latest) == [("spectrum", "s"), ("fit", "a")] and latest[("fit", "a")]["metrics"] == {"acc": 0.9}
    assert all(json.loads(line) for line in j.path.read_text().splitlines()[:3])  # plain JSON lines


def test_records_of_a_process_that_never_reached_the_store_are_delivered_by_the_next(tmp_path):
    """No server at all (a closed port): the sweep's records are journaled and queued; the next
    process, pointed at a store that answers, sends exactly those, once."""
    records = fit_records(synthetic_fits().head(6), "j")
    journal = tmp_path / "journal" / "j.jsonl"
    notes: list[str] = []
    away = Tracker(f"http://127.0.0.1:{free_port()}", "j", suite="j", journal=journal, echo=notes.append)
    assert [away.log_fit(r) for r in records[:4]] == [None] * 4
    assert away.completed_keys("fit") == {r["key"] for r in records[:4]}  # a resume skips them
    assert len(away.pending) == 4 and "not answering" in notes[0] and str(journal) in notes[0]
    report = finish_and_publish(away, wait_s=0)
    assert report.pending == 4 and report.leaderboard_rows is None and "nmlbench sync j" in notes[-1]
    del away
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    here = Tracker(uri, "j", suite="j", journal=journal)
    assert sorted(e["key"] for e in here.pending) == sorted(r["key"] for r in records[:4])
    for r in records[4:]:
        here.log_fit(r)
    assert here.pending == []
    assert sorted(_fit_keys(uri, "j")) == sorted(r["key"] for r in records)
    assert Tracker(uri, "j", suite="j", journal=journal).pending == []  # replaying sends nothing new


def _fit_keys(uri: str, experiment: str) -> list[str]:
    reader = TrackingReader(uri, experiment)
    return [
        r.data.tags["nmlbench.key"]
        for r in search_all(reader.client, reader.experiment_id, "tags.`nmlbench.kind` = 'fit'")
    ]


@pytest.mark.slow
def test_records_logged_while_the_server_is_away_arrive_exactly_once(tmp_path):
    """The same process sees the server come up on its port: the queue goes out, once, in order."""
    records = fit_records(synthetic_fits().head(16), "outage")
    journal = tmp_path / "work" / "journal" / "outage.jsonl"
    notes: list[str] = []
    server = MlflowServer(
        f"sqlite:///{tmp_path / 'server.db'}", artifacts=tmp_path / "artifacts", log=tmp_path / "server.log"
    )
    tracker = Tracker(server.url, "outage", suite="outage", journal=journal, echo=notes.append)
    try:
        # Nothing listens yet: each call journals its record, queues it and returns.
        assert [tracker.log_fit(r) for r in records[:8]] == [None] * 8
        assert len(tracker.pending) == 8 and "not answering" in notes[0]
        assert len(Journal(journal).read()) == 8
        server.start()
        assert tracker.flush(wait_s=120) == 0
        assert any("answers again: 8 queued records delivered" in n for n in notes)
        assert all(tracker.log_fit(r) is not None for r in records[8:])  # sent at once now
        report = finish_and_publish(tracker, wait_s=60)
        assert report.pending == 0 and report.leaderboard_rows == 2
        keys = _fit_keys(server.url, "outage")
        assert sorted(keys) == sorted(r["key"] for r in records) and len(keys) == len(set(keys)) == 16
        # Another process replaying the journal sends nothing new.
        assert Tracker(server.url, "outage", suite="outage", journal=journal).pending == []
        reader = TrackingReader(server.url, "outage")
        groups = search_all(reader.client, reader.experiment_id, "tags.`nmlbench.kind` = 'group'")
        assert [g.info.run_name for g in groups] == ["net @ 0%"]
        assert [
            r.info.run_name for r in search_all(reader.client, reader.experiment_id, "tags.`nmlbench.kind` = 'suite'")
        ] == ["outage"]
    finally:
        server.stop()


def outage_suite(tmp: Path, name: str) -> Path:
    """A tiny suite for a sweep through the CLI: a frozen random-init timm test_resnet on
    sklearn-digits, LP / MLP / NMTune (2 lambdas) x 2 seeds, one fit per Ray Tune trial (8 fits).
    The downstream keys are the only thing to update when the suite schema moves."""
    suite = {
        "name": name,
        "work_dir": str(tmp / "work"),
        "backbones": [
            {"family": "timm", "arch": "test_resnet", "image_size": 28, "seed": 0, "name": "test_resnet (random init)"}
        ],
        "downstream": {
            "id": ["sklearn-digits"],
            "ood": [],
            "heads": ["lp", "mlp", "nmtune"],
            "grid": {"lam": [0.01, 0.1], "depth": [1]},
            "seeds": [0, 1],
            "fractions": [1.0],
            "max_train": 300,
            "hparams": {"epochs": 4, "batch_size": 64, "preset": "paper"},
        },
        "selection": {"split": "val", "val_fraction": 0.2},
        "tracking": {"experiment": name},
        "ray": {"fits_per_trial": 1, "max_concurrent_trials": 1},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _count_fits(url: str, experiment: str) -> int:
    try:
        return len(_fit_keys(url, experiment))
    except Exception:  # not created yet, or the server is starting
        return 0


@pytest.mark.slow
def test_a_cli_sweep_goes_on_while_the_server_restarts_and_every_fit_lands_once(tmp_path):
    suite = outage_suite(tmp_path, "restart")
    total = (1 + 1 + 2) * 2  # (lp + mlp + 2 nmtune) x seeds
    journal = tmp_path / "work" / "journal" / "restart.jsonl"
    server = MlflowServer(
        f"sqlite:///{tmp_path / 'server.db'}", artifacts=tmp_path / "artifacts", log=tmp_path / "server.log"
    ).start()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "nmlbench"), "run", str(suite), "--tracking-uri", server.url]
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while _count_fits(server.url, "restart") < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        killed_at = _count_fits(server.url, "restart")
        server.stop()  # mid-sweep

        # The sweep goes on: fits keep landing in the journal while nothing answers.
        def journaled() -> int:
            return sum(e["kind"] == "fit" for e in Journal(journal).read())

        while journaled() < killed_at + 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        down_while = journaled()
        server.start()  # same port, same store
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    output = (tmp_path / "run.log").read_text()
    try:
        assert proc.returncode == 0, output[-4000:]
        assert 2 <= killed_at < total and down_while >= killed_at + 2, (killed_at, down_while, output[-3000:])
        assert "is not answering" in output
        # Whatever the run could not deliver itself (if the server came back after its end), sync
        # delivers; replaying the journal afterwards sends nothing.
        sync = subprocess.run(
            [str(BIN / "nmlbench"), "sync", str(suite), "--tracking-uri", server.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert sync.returncode == 0 and "0 still pending" in sync.stdout, sync.stdout[-3000:] + sync.stderr[-3000:]
        assert Tracker(server.url, "restart", suite="restart", journal=journal).pending == []
        keys = _fit_keys(server.url, "restart")
        assert len(keys) == len(set(keys)) == total
        assert set(keys) == {e["key"] for e in Journal(journal).read() if e["kind"] == "fit"}
        board = TrackingReader(server.url, "restart").leaderboard_frame("restart")
        # units: 2 head seeds (frozen backbone); the deterministic LP's two equal fits count once
        assert list(board["head"]) == ["lp", "mlp", "nmtune"] and board.n.tolist() == [1, 2, 2]
    finally:
        server.stop()
