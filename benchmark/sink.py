"""The driver's receiver of head-fit records (``TrackerSink``): one writer thread that records
each fit as it arrives and shows progress, so Ray Tune's event loop never waits on MLflow.

Kept apart from the runner, which decides what runs; this decides only how results are written.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from benchmark.noise.downstream import realised_line


class TrackerSink:
    """Driver-side receiver of fit records: records them and shows progress.

    Why a writer thread: Ray Tune calls the sink from its event loop, the loop that also starts
    the next trial when one ends, and recording a fit run takes tens of milliseconds (journal
    line, MLflow run with its curves). Written inline, each trial's ten or so records held a core
    idle between trials; handed to one thread here, they are written while the next trial runs.
    Still one writer (this thread) and the same order; ``close`` waits for the last record.
    ``first`` (other writes for the same tracker, the spectra) runs in this thread before them.
    """

    def __init__(self, tracker: Any, total: int, first: Callable[[], None] | None = None) -> None:
        from tqdm.auto import tqdm

        from benchmark.provenance import code_tag
        from benchmark.tracking.store import CODE_TAG

        self.tracker, self.ok, self.failed, self.fit_seconds = tracker, 0, 0, 0.0
        self.code = {CODE_TAG: code_tag()}  # which commit made these fits (results' provenance)
        self.bar = tqdm(total=total, desc="head fits", unit="fit", mininterval=1.0)
        self.queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.first = first
        self.noise_seen: set[tuple[str, float]] = set()  # (task, label-noise ratio) already reported
        self.thread = threading.Thread(target=self._drain, name="nmlbench-fit-records", daemon=True)
        self.thread.start()

    def __call__(self, record: dict[str, Any]) -> None:
        if self.error is not None:  # stop the sweep at the first record that could not be written
            raise self.error
        self.queue.put(record)

    def close(self, raise_error: bool = True) -> None:
        """Wait until every record handed over is written; re-raise a write that failed."""
        self.queue.put(None)
        self.thread.join()
        self.bar.close()
        if raise_error and self.error is not None:
            raise self.error

    def _drain(self) -> None:
        if self.first is not None:
            try:
                self.first()
            except BaseException as err:  # noqa: BLE001 - raised in the driver by __call__ / close
                self.error = err
        while (record := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self._write(record)
                except BaseException as err:  # noqa: BLE001 - raised in the driver by __call__ / close
                    self.error = err

    def _write(self, record: dict[str, Any]) -> None:
        record = {**record, "tags": {**(record.get("tags") or {}), **self.code}}
        if "error" in record:
            self.failed += 1
            self.tracker.log_fit(record)
            p = record["params"]
            self.bar.write(
                f"      fit failed ({p.get('backbone')} / {p.get('task')} / {p.get('head')}): {record['error']}"
            )
        else:
            self.ok += 1
            self.fit_seconds += float(record["metrics"].get("fit_seconds", 0.0))
            self.tracker.log_fit(record)
            noise = realised_line(record)
            if noise is not None and noise[0] not in self.noise_seen:
                self.noise_seen.add(noise[0])
                self.bar.write(noise[1])
        self.bar.update(1)
