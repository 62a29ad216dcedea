"""MLflow as the study's record: one run per keyed record, a tree that reads like the study,
the leaderboard as runs, a read-only reader, and a local journal so that nothing is lost when
the tracking server is away.

- ``Tracker`` (``tracker.py``): the driver's writer (``log_fit``, ``log_failure``,
  ``log_pretrain``, ``log_spectrum``, ``flush``, ``finish``) plus everything the reader does.
- ``TrackingReader`` (``reader.py``): reads without ever creating a store, experiment or run.
- ``journal.py``: the append-only JSON-lines journal in the work dir.
- ``layout.py``: run names, the run tree, the experiment's tags and its leaderboard view.
- ``publish.py``: leaderboard rows as runs, and the suite run's table, figures and report.
"""

from benchmark.tracking.journal import Journal, journal_path
from benchmark.tracking.reader import PretrainRecord, TrackingReader
from benchmark.tracking.store import (
    ERROR_TAG, FLOAT_PARAMS, INT_PARAMS, KEY_TAG, KIND_TAG, NothingTracked, TrackingUnavailable, default_uri,
)
from benchmark.tracking.tracker import FinishReport, Tracker

__all__ = ["ERROR_TAG", "FLOAT_PARAMS", "INT_PARAMS", "FinishReport", "Journal", "KEY_TAG", "KIND_TAG",
           "NothingTracked", "PretrainRecord", "Tracker", "TrackingReader", "TrackingUnavailable", "default_uri",
           "journal_path"]
