"""The pre-training stage's progress bar: finished epochs over all jobs, as workers report them.

Why an actor: the epochs finish inside Ray Train workers, in other processes and maybe on other
nodes; the driver only sees a job when its whole trainer ends. Rank 0 of each trainer tells one
small actor (no CPU reserved) the epochs each job has finished, fire-and-forget, and the
driver's bar polls it about once a second. A job's count is the highest epoch reported, so an
epoch trained again after a restart is not counted twice; a finished (or failed) job counts all
its epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Seconds between the driver's polls of the epoch counter.
POLL_S = 1.0


def _counter_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class EpochCounter:
        """job key -> epochs finished (the highest reported)."""

        def __init__(self) -> None:
            self.done: dict[str, int] = {}

        def report(self, key: str, epochs: int) -> None:
            self.done[key] = max(self.done.get(key, 0), int(epochs))

        def counts(self) -> dict[str, int]:
            return dict(self.done)

    return EpochCounter


def report_epoch(counter: Any, key: str, epochs: int) -> None:
    """Worker side: ``epochs`` of job ``key`` are done (never fails the training)."""
    if counter is None:
        return
    try:
        counter.report.remote(key, int(epochs))
    except Exception:  # noqa: BLE001 - progress is a display, never a reason to fail a job
        pass


class EpochBar:
    """A tqdm bar over ``sum(job.epochs)`` of the jobs to train, fed by the counter actor."""

    def __init__(self, jobs: Sequence[Any]) -> None:
        from tqdm.auto import tqdm

        self.epochs = {j.key: int(j.epochs) for j in jobs}
        self.finished: set[str] = set()
        self.counter = _counter_class().remote()
        self.bar = tqdm(total=sum(self.epochs.values()), desc="pre-training", unit="epoch", mininterval=1.0)

    def job_finished(self, key: str) -> None:
        self.finished.add(key)
        self.poll()

    def poll(self) -> None:
        import ray

        try:
            counts = ray.get(self.counter.counts.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - keep the last count shown
            counts = {}
        n = sum(e if k in self.finished else min(e, counts.get(k, 0)) for k, e in self.epochs.items())
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)

    def close(self) -> None:
        import ray

        self.poll()
        self.bar.close()
        ray.kill(self.counter)
