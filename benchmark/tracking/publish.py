"""Moved: publishing is the reporting layer's (``benchmark.reporting.publish``).

Only ``METRIC_DECIMALS`` (how stored leaderboard metrics are rounded, ``tracking.store``) is left
here, for ``tests/test_pipeline.py``; delete this module once it imports the name from
``benchmark.tracking.store``.
"""

from benchmark.tracking.store import METRIC_DECIMALS

__all__ = ["METRIC_DECIMALS"]
