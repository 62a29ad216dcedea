"""The driver's writer: journal first, then MLflow; a store that is away never stops a sweep.

All writes happen in the calling (driver) process. Ray workers return records; the driver hands
them to ``Tracker``. That is deliberate: SQLite answers "database is locked" to concurrent writers
and an MLflow setup inside each worker silently falls back to a local store, so a single writer is
the only arrangement that is both correct and fast.

Every ``log_*`` call turns its record into an *entry* (``entries.py``: kind, key, status, name,
params, metrics, per-epoch steps, tags, artifacts, parent), appends it to the journal
(``journal.py``) and then sends it (``writer.py``). When the store does not answer (connection refused, timeout, 5xx),
the entry stays queued and the sweep goes on: MLflow's HTTP client is limited to 2 quick
retries (``store.HTTP_DEFAULTS``), and the Tracker itself tries again only after a back-off
(2, 4, 8 ... at most 60 s), at the next ``log_*`` call, at ``flush`` / ``finish``, or in a later
process (``nmlbench sync`` reads the journal). Delivery is idempotent by key and content digest.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from benchmark.hashing import config_hash
from benchmark.tracking import entries, layout
from benchmark.tracking.journal import Journal, decode, encode
from benchmark.tracking.reader import TrackingReader
from benchmark.tracking.store import (
    FINISHED,
    TrackingUnavailable,
    auth_refused,
    brief,
    credentials_from_uri,
    default_uri,
    is_transient,
    make_client,
    sqlite_path,
)
from benchmark.tracking.writer import RunWriter, delete_stale, log_artifacts


@dataclasses.dataclass
class FinishReport:
    """What ``Tracker.finish`` achieved: records still undelivered, leaderboard rows published."""

    pending: int
    leaderboard_rows: int | None
    journal: Path | None


class Tracker(TrackingReader):
    """Writes fit, pre-training, spectrum and leaderboard runs to one MLflow experiment.

    ``uri``: ``sqlite:///abs/path.db`` (the default, created with its folder) or the
    ``http://host:port`` of an ``mlflow server``. ``tags`` go on every run. ``suite`` names the
    parent run of the study's tree (default: the experiment name). ``journal``: path of the
    append-only journal file (``journal.journal_path(work_dir, experiment)``); without one,
    undelivered records are queued in memory only. ``echo`` receives progress and outage notes.
    Reading methods are those of ``TrackingReader``.
    """

    def __init__(
        self,
        uri: str | None = None,
        experiment: str = "nmlbench",
        tags: Mapping[str, str] | None = None,
        *,
        suite: str | None = None,
        journal: str | Path | None = None,
        echo: Callable[[str], None] | None = None,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.uri = credentials_from_uri(uri or default_uri())  # a password never sits in a printed URI
        self.experiment = experiment
        self.suite = suite or experiment
        self.default_tags = {k: str(v) for k, v in (tags or {}).items()}
        self.journal = Journal(journal) if journal is not None else None
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.max_backoff_s = max_backoff_s
        db = sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        self.client = make_client(self.uri)
        self.experiment_id: str | None = None
        self._writer: RunWriter | None = None
        self._queue: collections.OrderedDict[tuple[str, str], dict[str, Any]] = collections.OrderedDict()
        self._delivered: dict[tuple[str, str], str] = {}
        self._failures, self._retry_at = 0, 0.0
        try:
            self._connect()
        except Exception as exc:
            if not is_transient(exc) or self.journal is None:
                if is_transient(exc):
                    raise TrackingUnavailable(
                        f"MLflow at {self.uri} did not answer ({brief(exc)}); start the "
                        "tracking server, or use a sqlite:/// URI"
                    ) from exc
                raise
            self._went_down(exc)
        if self.journal is not None:
            self._queue_from_journal()

    # -- connection --------------------------------------------------------------------------
    def _connect(self) -> None:
        """Find or create the experiment (tagged for the training UI) and the run writer."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            db = sqlite_path(self.uri)
            # Next to a local database, artifacts go beside it instead of into ./mlruns of the cwd.
            location = (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None
            try:
                exp_id = self.client.create_experiment(self.experiment, artifact_location=location)
            except MlflowException:
                exp = self.client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp_id)
        have = dict(exp.tags) if exp is not None else {}
        for k, v in layout.experiment_tags(exp_id).items():
            if have.get(k) != v:
                self.client.set_experiment_tag(exp_id, k, v)
        self.experiment_id = exp_id
        self._writer = RunWriter(self.client, exp_id, self.default_tags)

    def _went_down(self, exc: BaseException) -> None:
        self._failures += 1
        delay = min(self.max_backoff_s, 2.0**self._failures)
        self._retry_at = time.monotonic() + delay
        if self._writer is not None:
            self._writer.reset()  # what landed before the outage is re-read when it is back
        if self._failures == 1:
            where = f"kept in {self.journal.path}" if self.journal else "queued in memory"
            state, back = (
                ("refuses the credentials", "it takes them")
                if auth_refused(exc)
                else ("is not answering", "it is back")
            )
            self.echo(
                f"MLflow at {self.uri} {state} ({brief(exc)}); records are {where} "
                f"and will be sent when {back} (next try in {delay:.0f} s)"
            )

    @property
    def down(self) -> bool:
        return self._failures > 0

    # -- the queue ---------------------------------------------------------------------------
    def _queue_from_journal(self) -> None:
        """Queue journal entries the store lacks (all of them while it does not answer)."""
        assert self.journal is not None
        for ident, entry in self.journal.latest().items():
            if self._writer is not None and not self.down:
                try:
                    held = self._writer.holder(entry)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    self._went_down(exc)
                    held = None
                if held is not None:
                    self._delivered[ident] = held
                    continue
            self._queue[ident] = entry

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Entries not yet delivered (in the order they will be sent)."""
        return list(self._queue.values())

    def _drain(self, force: bool = False) -> None:
        if not self._queue or (self.down and not force and time.monotonic() < self._retry_at):
            return
        was_down, sent = self.down, 0
        try:
            if self._writer is None:
                self._connect()
            assert self._writer is not None
            while self._queue:
                ident, entry = next(iter(self._queue.items()))
                try:
                    self._delivered[ident] = self._writer.write(entry)
                except Exception as exc:
                    if not is_transient(exc):
                        # A record the store rejects: it must not block the ones behind it.
                        # It stays in the journal; the error goes to the caller.
                        self._queue.pop(ident)
                    raise
                self._queue.pop(ident)
                sent += 1
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._went_down(exc)
            return
        self._failures = 0
        if was_down:
            self.echo(f"MLflow at {self.uri} answers again: {sent} queued records delivered")

    def log_entry(self, entry: dict[str, Any]) -> str | None:
        """Journal ``entry``, then send it (with anything queued before it); the run id, or None if queued."""
        entry = encode({**entry, "t": time.time()})
        entry["digest"] = config_hash({k: v for k, v in entry.items() if k not in ("t", "digest")})
        if self.journal is not None:
            self.journal.append(entry)
        entry = decode(entry)  # arrays back from their journal form
        ident = (entry["kind"], entry["key"])
        self._queue.pop(ident, None)
        self._queue[ident] = entry
        self._drain()
        return None if ident in self._queue else self._delivered.get(ident)

    def flush(self, wait_s: float = 0.0) -> int:
        """Try to deliver everything queued now, retrying for up to ``wait_s``; return how many are left."""
        deadline = time.monotonic() + wait_s
        self._drain(force=True)
        while self._queue and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self._retry_at, deadline) - time.monotonic()))
            self._drain(force=True)
        return len(self._queue)

    def finish(
        self, *, wait_s: float = 15.0, publish: Callable[[Tracker], int] | None = None, strict: bool = False
    ) -> FinishReport:
        """End of a run (or ``nmlbench sync``): deliver the queue, then run ``publish(self)``.

        ``publish`` is the reporting layer's publisher (``reporting.publish.publish_suite``, which
        ``reporting.finish_and_publish`` passes): it reads the records back and writes derived
        runs and artifacts through this tracker's public API, and returns the leaderboard rows.
        It needs every record in the store, so it waits for the next ``finish`` when some are
        still queued. A publishing error other than an outage is raised when ``strict``, else
        reported through ``echo`` (the records themselves are safe; ``nmlbench sync`` publishes
        again). ``publish=None``: deliver only (tracking never imports the reporting layer).
        """
        rows = None
        left = self.flush(wait_s)
        if left == 0 and publish is not None:
            try:
                rows = publish(self)
            except Exception as exc:
                if is_transient(exc):
                    self._went_down(exc)
                elif strict:
                    raise
                else:
                    self.echo(
                        f"publishing the leaderboard of {self.suite!r} failed ({type(exc).__name__}: "
                        f"{exc}); the records are in MLflow, `nmlbench sync {self.suite}` publishes again"
                    )
            left = self.flush(0.0)
        if left:
            where = f" (kept in {self.journal.path})" if self.journal else " (in memory only: no journal)"
            self.echo(
                f"{left} records are not in MLflow at {self.uri} yet{where}; "
                f"deliver them with `nmlbench sync {self.suite}` once the server answers"
            )
        return FinishReport(left, rows, self.journal.path if self.journal else None)

    # -- derived runs: what the reporting layer writes ---------------------------------------
    def _connected_writer(self) -> RunWriter:
        if self._writer is None:
            self._connect()
        assert self._writer is not None
        return self._writer

    def structure_run(self, spec: Mapping[str, Any]) -> str:
        """The run id of a keyed suite / group run (``layout.suite_spec``), created when missing."""
        return self._connected_writer().container(spec)

    def run_marks(self, run_id: str) -> tuple[dict[str, str], dict[str, float]]:
        """A run's tags and latest metric values."""
        run = self.client.get_run(run_id)
        return dict(run.data.tags), dict(run.data.metrics)

    def attach(
        self,
        run_id: str,
        *,
        files: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log artifacts (``{artifact path: local file}``, replacing what is there), then metrics,
        then tags (last: a tag can mark the attachment complete)."""
        if files:
            log_artifacts(self.client, run_id, files)
        for k, v in (metrics or {}).items():
            self.client.log_metric(run_id, k, float(v))
        for k, text in (tags or {}).items():
            self.client.set_tag(run_id, k, text)

    def delete_stale(self, kind: str, keep: Iterable[str], where: Mapping[str, str]) -> int:
        """Delete runs of ``kind`` matching the tags ``where`` whose key is not in ``keep``; how many."""
        return delete_stale(self.client, self._connected_writer(), kind, keep, where)

    # -- reading -----------------------------------------------------------------------------
    def _search(self, filter_string: str = "") -> list[Any]:
        if self._writer is None:  # the store did not answer at start: try again now
            try:
                self._connect()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._went_down(exc)
                raise TrackingUnavailable(f"MLflow at {self.uri} does not answer ({brief(exc)})") from exc
        return super()._search(filter_string)

    def completed_keys(self, kind: str | None = None) -> set[str]:
        """Finished keys in the store plus finished records still queued (they will be delivered)."""
        queued = {
            e["key"]
            for e in self._queue.values()
            if e.get("status", FINISHED) == FINISHED and (kind is None or e["kind"] == kind)
        }
        try:
            stored = super().completed_keys(kind)
        except Exception as exc:
            if not (is_transient(exc) or isinstance(exc, TrackingUnavailable)) or self.journal is None:
                raise
            self._went_down(exc)
            stored = set()
        return stored | queued

    # -- records -----------------------------------------------------------------------------
    def log_fit(self, record: Mapping[str, Any], *, overwrite: bool = False) -> str | None:
        """Log one head fit ``{"key", "params", "metrics", "tags", "artifacts", "curves"}``.

        Returns the run id, or None when the store is away (the record is queued). A record with
        an ``"error"`` entry (a fit that raised in a worker) is logged as a failure. A key that
        already finished is not logged again (its run id is returned) unless ``overwrite`` and
        the content differs.
        """
        return self.log_entry(entries.fit_entry(self.suite, record, overwrite=overwrite))

    def log_failure(
        self,
        key: str,
        params: Mapping[str, Any],
        error_text: str,
        *,
        kind: str = "fit",
        tags: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Record a failed attempt (status FAILED, tag ``error``); earlier failures of the key go.

        The key stays out of ``completed_keys`` so the next run retries it.
        """
        return self.log_entry(entries.failure_entry(self.suite, key, params, error_text, kind=kind, tags=tags))

    def log_pretrain(
        self, job: Any, result: Any, *, overwrite: bool = False, backbone: str | None = None
    ) -> str | None:
        """Log a pre-training job (``PretrainJob``) and its result (``entries.pretrain_entry``
        says which entries of ``result`` become metrics, steps, tags and artifacts)."""
        return self.log_entry(entries.pretrain_entry(self.suite, job, result, overwrite=overwrite, backbone=backbone))

    def log_spectrum(
        self, backbone: str | Mapping[str, Any], task: str, values: Any, *, overwrite: bool = False, **params: Any
    ) -> str | None:
        """Store the singular values of a backbone's features on ``task`` (artifact spectrum.npy).

        ``backbone`` is a display name, or a mapping of backbone params that holds one under
        ``"backbone"`` (e.g. the fit params: noise_ratio, pretrain_seed, ...). All params are
        recorded and keyed, so each (backbone, noise ratio, seed, task) keeps its own spectrum.
        """
        return self.log_entry(entries.spectrum_entry(self.suite, backbone, task, values, overwrite=overwrite, **params))
