"""Reporting above the record: what is derived from the fit runs, published and written.

The layer picture (``.importlinter`` states it; ``tests/test_layers.py`` checks it):
``tracking`` writes records (journal, then MLflow) and reads them back; the reporting modules
(``leaderboard``, ``ranks``, ``claims``, ``report``, ``report_html`` and this package) sit above
it and call only its public API (``TrackingReader`` reads; ``Tracker.log_entry``,
``structure_run``, ``attach``, ``delete_stale`` write derived runs).

- ``publish.py``: ``publish_suite(tracker)`` writes the leaderboard runs and the suite run's
  table, figures, claims and HTML report (claims and the board computed once per publish);
  ``finish_and_publish(tracker)``: deliver the queue, then publish (the end of a run, ``sync``).
- ``folder.py``: ``make_report_from_tracking``: a report folder read from MLflow (read-only).
"""

from benchmark.reporting.publish import finish_and_publish, publish_suite

__all__ = ["finish_and_publish", "publish_suite"]
