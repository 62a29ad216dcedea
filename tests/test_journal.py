"""Nothing is lost when MLflow is away: the journal, and delivery through a real server outage.

- The journal round-trips entries (arrays, NaN, paths), skips a torn last line, last line wins.
- Against a real ``mlflow server`` (SQLite behind it): records logged while it is down are
  queued (the caller goes on), delivered once when it answers again, and a process that ended
  before delivering leaves them in the journal for the next one (``Tracker`` / ``nmlbench sync``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.tracking import Journal, Tracker, TrackingReader
from benchmark.tracking.store import search_all
from benchmark.ui_check import MlflowServer, free_port
from tests.conftest import fit_records, synthetic_fits


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


def _fit_keys(uri: str, experiment: str) -> list[str]:
    reader = TrackingReader(uri, experiment)
    return [r.data.tags["nmlbench.key"] for r in search_all(reader.client, reader.experiment_id,
                                                             "tags.`nmlbench.kind` = 'fit'")]


@pytest.mark.slow
def test_records_logged_while_the_server_is_away_arrive_exactly_once(tmp_path):
    records = fit_records(synthetic_fits().head(16), "outage")
    journal = tmp_path / "work" / "journal" / "outage.jsonl"
    notes: list[str] = []
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", artifacts=tmp_path / "artifacts",
                          log=tmp_path / "server.log").start()
    try:
        tracker = Tracker(server.url, "outage", suite="outage", journal=journal, echo=notes.append)
        assert all(tracker.log_fit(r) is not None for r in records[:4])
        server.stop()
        # The server is gone: each call journals its record, queues it and returns.
        assert [tracker.log_fit(r) for r in records[4:8]] == [None] * 4
        assert len(tracker.pending) == 4 and "not answering" in notes[0]
        assert len(journal.read_text().splitlines()) == 8
        server.start()  # same port, same store
        assert tracker.flush(wait_s=120) == 0
        assert any("answers again" in n for n in notes)
        assert sorted(_fit_keys(server.url, "outage")) == sorted(r["key"] for r in records[:8])

        # A process that could not reach the server at all (wrong port) and ended: its records
        # are only in the journal; the next process delivers them, once.
        dead = f"http://127.0.0.1:{free_port()}"
        lost = Tracker(dead, "outage", suite="outage", journal=journal, echo=notes.append)
        assert [lost.log_fit(r) for r in records[8:12]] == [None] * 4
        assert lost.completed_keys("fit") >= {r["key"] for r in records[:12]}  # a resume would skip them
        del lost
        again = Tracker(server.url, "outage", suite="outage", journal=journal, echo=notes.append)
        assert sorted(e["key"] for e in again.pending) == sorted(r["key"] for r in records[8:12])
        for r in records[12:]:
            again.log_fit(r)
        report = again.finish(wait_s=60)
        assert report.pending == 0 and report.leaderboard_rows == 2
        keys = _fit_keys(server.url, "outage")
        assert sorted(keys) == sorted(r["key"] for r in records) and len(keys) == len(set(keys)) == 16
        # Replaying the whole journal again sends nothing new.
        assert Tracker(server.url, "outage", suite="outage", journal=journal).pending == []
        reader = TrackingReader(server.url, "outage")
        groups = search_all(reader.client, reader.experiment_id, "tags.`nmlbench.kind` = 'group'")
        assert [g.info.run_name for g in groups] == ["net @ 0%"]
    finally:
        server.stop()
