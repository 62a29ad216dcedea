"""The driver's entry points to pre-training: run one job, or a suite's worth of them.

Why it is shaped this way:

- Work is keyed by ``job.key``: ``work_dir/pretrain/<key>/done.json`` marks a finished job and a
  re-run returns it at once without starting Ray Train (:func:`load_done`).
- Each ``TorchTrainer.fit`` pays a worker-group start-up (10-13 s on a 2-core Zen 5, 17-20 s on
  slower machines), which dwarfs the training of the embedded suites' small jobs.
  :func:`run_pretrain_jobs` therefore runs the small jobs (one worker, no GPU) as job lists, at
  most ``max_concurrent`` trainers, balanced by work (epochs x images) and each running its
  jobs in turn with a checkpoint per job and epoch (``worker.py``); big jobs (several workers
  or GPUs) keep a trainer each. Up to ``max_concurrent`` trainers run at once, each worker on
  ``cpus_per_worker`` torch threads, so concurrent trainers do not fight over cores.
- A restarted worker group (``FailureConfig(max_failures)``) resumes from the last checkpoint;
  re-running a job (or the same list of jobs) whose Ray run directory exists resumes from it.
- Ray is started only through ``benchmark.ray_session.init_ray``.

Fault injection (for tests and drills): set the environment variable
``NMLBENCH_FAULT_KILL_AFTER_EPOCH=k`` in the driver (or pass ``fault_kill_after_epoch=k``). The
driver hands the value to the workers in the train config (so it does not depend on environment
propagation); see ``worker.py`` for what rank 0 then does.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import ConfigError
from benchmark.hashing import config_hash
from benchmark.pretrain.job import PretrainJob, check_job, job_dir, snapshot_file
from benchmark.pretrain.progress import POLL_S, EpochBar
from benchmark.pretrain.trainer import Prepared, finish, fit, prepare
from benchmark.ray_session import init_ray

log = logging.getLogger(__name__)

FAULT_ENV = "NMLBENCH_FAULT_KILL_AFTER_EPOCH"


@dataclass
class PretrainResult:
    """What one job produced; ``error`` is set (and the paths may not exist) when it failed."""

    job: PretrainJob
    key: str
    checkpoint_path: Path
    noise_path: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False
    realised_ratio: float | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def job_dir(self) -> Path:
        return self.checkpoint_path.parent


def load_done(job: PretrainJob, work_dir: str | Path) -> PretrainResult | None:
    """The finished result of ``job`` if ``done.json`` exists and ``model.pt`` (and each snapshot)
    loads, else None."""
    out = job_dir(job, work_dir)
    done, model_path = out / "done.json", out / "model.pt"
    if not done.is_file() or not model_path.is_file():
        return None
    try:
        info = json.loads(done.read_text())
        for path in [model_path, *(out / snapshot_file(e) for e in job.snapshot_epochs)]:
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file means "train again"
        log.warning("%s: cannot reuse %s (%s); training again", job.name, out, e)
        return None
    if info.get("key") != job.key:
        log.warning("%s: %s belongs to key %s; training again", job.name, done, info.get("key"))
        return None
    return PretrainResult(
        job=job,
        key=job.key,
        checkpoint_path=model_path,
        noise_path=out / "noise.npz",
        metrics=info.get("metrics", []),
        reused=True,
        realised_ratio=info.get("realised_ratio"),
        seconds=float(info.get("seconds", 0.0)),
    )


def fault_kill_epoch(explicit: int | None = None) -> int | None:
    """The epoch after which a worker kills itself: ``explicit``, else ``$NMLBENCH_FAULT_KILL_AFTER_EPOCH``."""
    if explicit is not None:
        return int(explicit)
    raw = os.environ.get(FAULT_ENV, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{FAULT_ENV}={raw!r} is not an epoch number; unset it or give an integer") from None


def _failed(job: PretrainJob, work_dir: str | Path, e: BaseException) -> PretrainResult:
    log.error("pretrain job %s failed: %s", job.name, e)
    out = job_dir(job, work_dir)
    tb = "".join(traceback.format_exception_only(type(e), e)).strip()
    return PretrainResult(
        job=job, key=job.key, checkpoint_path=out / "model.pt", noise_path=out / "noise.npz", error=tb
    )


def _fresh(p: Prepared, info: dict[str, Any]) -> PretrainResult:
    return PretrainResult(
        job=p.job,
        key=p.job.key,
        checkpoint_path=p.out / "model.pt",
        noise_path=p.out / "noise.npz",
        metrics=info["metrics"],
        reused=False,
        realised_ratio=p.training_set.realised_ratio,
        seconds=info["seconds"],
    )


def _storage(work_dir: str | Path, storage_path: str | Path | None) -> Path:
    storage = Path(storage_path if storage_path is not None else Path(work_dir) / "ray_results").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    return storage


def run_pretrain(
    job: PretrainJob,
    work_dir: str | Path,
    *,
    storage_path: str | Path | None = None,
    max_failures: int = 2,
    progress: bool = True,
    cpus_per_worker: float | None = None,
    fault_kill_after_epoch: int | None = None,
    placement_strategy: str = "PACK",
    epoch_counter: Any = None,
) -> PretrainResult:
    """Train ``job`` with its own Ray Train trainer (or reuse its finished output).

    Outputs in ``work_dir/pretrain/<key>/``: ``noise.npz`` + ``noise.json`` (before training),
    ``model.pt`` (``save_pretrain_checkpoint``, family timm or open_clip) and ``done.json``
    (atomic; metrics per epoch and the realised noise ratio). Ray's own run directory is
    ``storage_path/<key>`` (default ``work_dir/ray_results``; on storage every node sees when
    the workers span nodes). ``cpus_per_worker`` overrides the job's. ``epoch_counter``: the
    progress actor its workers report finished epochs to (``progress.EpochBar``).
    """
    check_job(job)  # the one check of a job: prepare and the corpus trust it
    reused = load_done(job, work_dir)
    if reused is not None:
        return reused
    storage = _storage(work_dir, storage_path)
    p = prepare(job, work_dir, progress=progress, fault_kill_after_epoch=fault_kill_epoch(fault_kill_after_epoch))
    cpus = float(job.cpus_per_worker if cpus_per_worker is None else cpus_per_worker)
    state, _ = fit(
        [p],
        job.key,
        storage,
        cpus_per_worker=cpus,
        max_failures=max_failures,
        placement_strategy=placement_strategy,
        epoch_counter=epoch_counter,
    )
    info = finish(p, state["done"][job.key], run_dir=storage / job.key)
    if progress:
        last = info["metrics"][-1]["loss"] if info["metrics"] else float("nan")
        log.info("%s: done in %.1f s (final loss %.4f)", job.name, info["seconds"], last)
    return _fresh(p, info)


def shares_trainer(job: PretrainJob) -> bool:
    """Small jobs (one worker, no GPU) share a trainer with others; big ones get their own."""
    return int(job.workers) == 1 and float(job.gpus_per_worker) == 0.0


def job_work(job: PretrainJob) -> int:
    """Images a job trains on, over all epochs: the weight that balances job lists."""
    n = job.train_subset
    if n is None:
        from benchmark.data import get_dataset

        n = len(get_dataset(job.corpus, job.data_root).split("train"))
    return int(n) * int(job.epochs)


def trainer_lists(
    jobs: Sequence[PretrainJob], max_concurrent: int, group_small: bool = True
) -> list[list[PretrainJob]]:
    """The trainers to run: each big job alone; the small ones (:func:`shares_trainer`) in at
    most ``max_concurrent`` lists balanced by :func:`job_work`, largest jobs placed first."""
    big = [[j] for j in jobs if not (group_small and shares_trainer(j))]
    small = sorted((j for j in jobs if group_small and shares_trainer(j)), key=lambda j: -job_work(j))
    lists: list[list[PretrainJob]] = [[] for _ in range(min(max_concurrent, len(small)))]
    load = [0] * len(lists)
    for j in small:
        k = load.index(min(load))
        lists[k].append(j)
        load[k] += job_work(j)
    return big + [g for g in lists if g]


def trainer_name(jobs: Sequence[PretrainJob]) -> str:
    """Ray run directory name: the job key for one job, else a hash of the list's keys."""
    if len(jobs) == 1:
        return jobs[0].key
    return "jobs-" + config_hash([j.key for j in jobs])


def _run_list(
    jobs: list[PretrainJob],
    work_dir: str | Path,
    *,
    storage_path: Any = None,
    max_failures: int = 2,
    progress: bool = True,
    cpus_per_worker: float | None = None,
    fault_kill_after_epoch: int | None = None,
    placement_strategy: str = "PACK",
    epoch_counter: Any = None,
) -> list[PretrainResult]:
    """One trainer for ``jobs``; a job that cannot be prepared fails alone, before the fit."""
    if len(jobs) == 1:
        try:
            return [
                run_pretrain(
                    jobs[0],
                    work_dir,
                    storage_path=storage_path,
                    max_failures=max_failures,
                    progress=progress,
                    cpus_per_worker=cpus_per_worker,
                    fault_kill_after_epoch=fault_kill_after_epoch,
                    placement_strategy=placement_strategy,
                    epoch_counter=epoch_counter,
                )
            ]
        except Exception as e:  # noqa: BLE001 - reported per job, the batch goes on
            return [_failed(jobs[0], work_dir, e)]
    t0 = time.perf_counter()
    storage = _storage(work_dir, storage_path)
    results: dict[str, PretrainResult] = {}
    ready: list[Prepared] = []
    for j in jobs:
        try:
            check_job(j)  # the one check of a listed job (run_pretrain checks a lone one)
            ready.append(
                prepare(j, work_dir, progress=progress, fault_kill_after_epoch=fault_kill_epoch(fault_kill_after_epoch))
            )
        except Exception as e:  # noqa: BLE001
            results[j.key] = _failed(j, work_dir, e)
    if ready:
        name = trainer_name([p.job for p in ready])
        cpus = float(ready[0].job.cpus_per_worker if cpus_per_worker is None else cpus_per_worker)
        try:
            state, _ = fit(
                ready,
                name,
                storage,
                cpus_per_worker=cpus,
                max_failures=max_failures,
                placement_strategy=placement_strategy,
                epoch_counter=epoch_counter,
            )
        except Exception as e:  # noqa: BLE001 - the whole list failed in Ray Train
            return [results.get(j.key) or _failed(j, work_dir, e) for j in jobs]
        wall = time.perf_counter() - t0
        done = state["done"]
        own = {p.job.key: float(done.get(p.job.key, {}).get("seconds", 0.0)) for p in ready}
        share = max(0.0, wall - sum(own.values())) / len(ready)  # start-up, split evenly
        trainer = {"name": name, "jobs": [p.job.key for p in ready], "seconds": wall}
        for p in ready:
            try:
                info = finish(
                    p,
                    done.get(p.job.key, {"error": "missing from the checkpoint"}),
                    run_dir=storage / name,
                    seconds=own[p.job.key] + share,
                    trainer=trainer,
                )
                results[p.job.key] = _fresh(p, info)
            except Exception as e:  # noqa: BLE001
                results[p.job.key] = _failed(p.job, work_dir, e)
    return [results[j.key] for j in jobs]


def run_pretrain_jobs(
    jobs: Sequence[PretrainJob],
    work_dir: str | Path,
    *,
    max_concurrent: int = 2,
    on_result: Callable[[PretrainResult], None] | None = None,
    on_slot_free: Callable[[], None] | None = None,
    group_small: bool = True,
    **kw: Any,
) -> list[PretrainResult]:
    """Run several jobs, up to ``max_concurrent`` Ray Train trainers at once, results in job order.

    Finished jobs return at once (reuse). Jobs with equal keys run once. Small jobs share
    trainers (:func:`trainer_lists`; ``group_small=False``: one trainer per job). An exception
    in one job becomes a result with ``error`` set (the traceback's last lines), the others go
    on. ``on_result`` is called in the calling thread as each job finishes (reused ones first),
    so the driver can log progress and records without waiting for the whole batch. ``kw`` goes
    to :func:`run_pretrain` (``storage_path``, ``max_failures``, ``cpus_per_worker`` ...).

    ``on_slot_free`` is called in the calling thread, after ``on_result``, each time a trainer
    finishes while others still run and none is left waiting to start: the resources it held
    stay idle until the stage ends, so the caller may give them other work (the runner extracts
    the features of the backbones finished so far). It is never called while a trainer still
    waits for a slot, so that work cannot hold the CPUs or GPUs a trainer is about to ask for.

    With ``progress`` (the default) a bar counts the finished epochs of all the jobs to train,
    as their workers report them (``progress.EpochBar``), like the features and heads stages'.
    """
    if max_concurrent < 1:
        raise ConfigError(f"max_concurrent must be >= 1, got {max_concurrent}")
    jobs = list(jobs)
    firsts: dict[str, PretrainJob] = {}
    for j in jobs:
        firsts.setdefault(j.key, j)
    done: dict[str, PretrainResult] = {}
    pending = []
    for key, j in firsts.items():
        r = load_done(j, work_dir)
        if r is not None:
            done[key] = r
            if on_result is not None:
                on_result(r)
        else:
            pending.append(j)
    if pending:
        init_ray()  # in this thread: ray.init must not run first inside a worker thread
    lists = trainer_lists(pending, max_concurrent, group_small)
    slots = min(max_concurrent, max(1, len(lists)))
    bar = EpochBar(pending) if pending and kw.get("progress", True) else None
    if bar is not None:
        kw = {**kw, "epoch_counter": bar.counter}
    try:
        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="nmlbench-pretrain") as pool:
            futures = [pool.submit(_run_list, g, work_dir, **kw) for g in lists]
            for finished, fut in enumerate(_as_completed(futures, bar), start=1):
                for r in fut.result():
                    done[r.key] = r
                    if bar is not None:
                        bar.job_finished(r.key)
                    if on_result is not None:
                        on_result(r)
                if on_slot_free is not None and len(lists) - slots < finished < len(lists):
                    on_slot_free()  # no list took the slot, and other trainers still run
    finally:
        if bar is not None:
            bar.close()
    return [done[j.key] if j is firsts[j.key] else _as_duplicate(done[j.key], j) for j in jobs]


def _as_completed(futures: list[Future[Any]], bar: EpochBar | None) -> Iterator[Future[Any]]:
    """``as_completed``, polling the progress bar about once a second while it waits."""
    if bar is None:
        yield from as_completed(futures)
        return
    pending = set(futures)
    while pending:
        ready, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
        bar.poll()
        yield from ready


def _as_duplicate(r: PretrainResult, job: PretrainJob) -> PretrainResult:
    """The result of an equal-key job, relabelled with this job's own display fields."""
    return PretrainResult(**{**r.__dict__, "job": job})
