"""MLflow as the study's record: one run per keyed record, a tree that reads like the study, a
read-only reader, and a local journal so that nothing is lost when the tracking server is away.

This layer writes records (journal, then MLflow) and reads them back; it knows nothing of the
leaderboard, claims or reports, which sit above it (``benchmark.reporting``) and use only the
public API below (``.importlinter`` holds it to that).

- ``Tracker`` (``tracker.py``): the driver's writer (``log_fit``, ``log_failure``,
  ``log_pretrain``, ``log_spectrum``, ``log_entry``, ``flush``, ``finish(publish=...)``; for
  derived runs ``structure_run``, ``attach``, ``run_marks``, ``delete_stale``) plus everything
  the reader does.
- ``TrackingReader`` (``reader.py``): reads without ever creating a store, experiment or run.
- ``journal.py``: the append-only JSON-lines journal in the work dir.
- ``layout.py``: run names, the run tree, the experiment's tags and its leaderboard view.
"""

from benchmark.tracking.journal import Journal, journal_path
from benchmark.tracking.reader import PretrainRecord, TrackingReader
from benchmark.tracking.store import (
    ERROR_TAG,
    FLOAT_PARAMS,
    INT_PARAMS,
    KEY_TAG,
    KIND_TAG,
    METRIC_DECIMALS,
    NothingTracked,
    TrackingUnavailable,
    default_uri,
)
from benchmark.tracking.tracker import FinishReport, Tracker

__all__ = [
    "ERROR_TAG",
    "FLOAT_PARAMS",
    "INT_PARAMS",
    "FinishReport",
    "Journal",
    "KEY_TAG",
    "KIND_TAG",
    "METRIC_DECIMALS",
    "NothingTracked",
    "PretrainRecord",
    "Tracker",
    "TrackingReader",
    "TrackingUnavailable",
    "default_uri",
    "journal_path",
]
