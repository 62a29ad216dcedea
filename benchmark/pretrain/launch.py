"""The driver's half of pre-training: one Ray Train ``TorchTrainer`` per ``PretrainJob``.

Why it is shaped this way:

- The noisy training set and its record are made here, in the driver, before any worker starts
  (``corpus.py``): the labels a model saw are on disk even if training fails, and they do not
  depend on the number of workers.
- Images travel to the workers as one ``uint8`` array through the Ray object store
  (``ray.put`` once, an ``ObjectRef`` in the train config), never re-pickled per worker. What a
  worker does with them is ``worker.py``'s job.
- ``job.workers`` data-parallel workers each take ``job.batch_size`` images per step, so the
  global batch is ``batch_size * workers``; the per-epoch metrics record both.
- A restarted worker group (``FailureConfig(max_failures)``) resumes from the last checkpoint;
  re-running a job whose Ray run directory exists resumes from it too.
- Work is keyed by ``job.key``: ``work_dir/pretrain/<key>/done.json`` marks a finished job and a
  re-run returns it at once without starting Ray Train.
- Each fit has ~20 s of fixed start-up on a small machine, so :func:`run_pretrain_jobs` overlaps
  several jobs (threads, each driving its own trainer). Ray is started only through
  ``benchmark.ray_session.init_ray``.

Fault injection (for tests and drills): set the environment variable
``NMLBENCH_FAULT_KILL_AFTER_EPOCH=k`` in the driver (or pass ``fault_kill_after_epoch=k`` to
:func:`run_pretrain`). The driver hands the value to the workers in the train config (so it
does not depend on environment propagation); see ``worker.py`` for what rank 0 then does.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.atomic import atomic_write_json
from benchmark.errors import ConfigError, NMLBenchError
from benchmark.pretrain.corpus import TrainingSet, build_training_set, write_noise_record
from benchmark.pretrain.job import PretrainJob, check_job, job_dir
from benchmark.pretrain.worker import (
    PRETRAIN_MEAN,
    PRETRAIN_STD,
    STATE_FILE,
    build_model,
    train_loop_per_worker,
)
from benchmark.ray_session import cluster_resources, init_ray

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


def _check_resources(job: PretrainJob, cpus_per_worker: float) -> None:
    """Fail fast where Ray Train would wait for ever on a placement group that cannot fit."""
    have = cluster_resources()
    need_cpu = job.workers * cpus_per_worker
    if need_cpu > have.get("CPU", 0):
        raise ConfigError(f"pretrain job {job.name}: {job.workers} worker(s) x {cpus_per_worker} "
                          f"CPU need {need_cpu} CPUs, the Ray cluster has {have.get('CPU', 0)}; "
                          "lower workers or cpus_per_worker")
    need_gpu = job.workers * job.gpus_per_worker
    if need_gpu > have.get("GPU", 0):
        raise ConfigError(f"pretrain job {job.name}: needs {need_gpu} GPUs, the Ray cluster has "
                          f"{have.get('GPU', 0)}; set gpus_per_worker: 0 to train on CPU")


def load_done(job: PretrainJob, work_dir: str | Path) -> PretrainResult | None:
    """The finished result of ``job`` if ``done.json`` exists and ``model.pt`` loads, else None."""
    out = job_dir(job, work_dir)
    done, model_path = out / "done.json", out / "model.pt"
    if not done.is_file() or not model_path.is_file():
        return None
    try:
        info = json.loads(done.read_text())
        torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file means "train again"
        log.warning("%s: cannot reuse %s (%s); training again", job.name, out, e)
        return None
    if info.get("key") != job.key:
        log.warning("%s: %s belongs to key %s; training again", job.name, done, info.get("key"))
        return None
    return PretrainResult(job=job, key=job.key, checkpoint_path=model_path,
                          noise_path=out / "noise.npz", metrics=info.get("metrics", []),
                          reused=True, realised_ratio=info.get("realised_ratio"),
                          seconds=float(info.get("seconds", 0.0)))


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
        raise ConfigError(f"{FAULT_ENV}={raw!r} is not an epoch number; unset it or give an "
                          "integer") from None


def _check_clip_image_size(job: PretrainJob, model: torch.nn.Module) -> None:
    """open_clip vision towers fix their input size; the job must train at that size."""
    size = getattr(getattr(model, "visual", None), "image_size", None)
    if size is None:
        return
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    if size != job.image_size:
        raise ConfigError(f"clip job {job.name}: {job.arch} takes {size}px images, the job says "
                          f"image_size {job.image_size}; set image_size: {size} (or pass "
                          f"model_kwargs force_image_size: {job.image_size})")


def _fit(job: PretrainJob, cfg: dict[str, Any], ts: TrainingSet, storage: Path,
         cpus_per_worker: float, max_failures: int) -> dict[str, Any]:
    """One ``TorchTrainer.fit`` of ``job.workers`` workers; the state of its last checkpoint."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    init_ray()
    _check_resources(job, cpus_per_worker)
    cfg = {**cfg, "data": ray.put({"images": ts.images, "targets": ts.targets,
                                   "clean": ts.clean_labels})}
    resources = {"CPU": float(cpus_per_worker)}
    if job.gpus_per_worker > 0:
        resources["GPU"] = float(job.gpus_per_worker)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(num_workers=int(job.workers),
                                               use_gpu=job.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=job.key, storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=int(max_failures)),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if getattr(result, "error", None) is not None:
        raise NMLBenchError(f"pretrain job {job.name} failed in Ray Train: {result.error}")
    if result.checkpoint is None:
        raise NMLBenchError(f"pretrain job {job.name}: Ray Train finished without a checkpoint "
                            f"in {storage / job.key}; delete that folder and run again")
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)


def run_pretrain(
    job: PretrainJob,
    work_dir: str | Path,
    *,
    storage_path: str | Path | None = None,
    max_failures: int = 2,
    progress: bool = True,
    cpus_per_worker: float = 1.0,
    fault_kill_after_epoch: int | None = None,
) -> PretrainResult:
    """Train ``job`` with Ray Train (or reuse its finished output) and write ``model.pt``.

    Outputs in ``work_dir/pretrain/<key>/``: ``noise.npz`` + ``noise.json`` (before training),
    ``model.pt`` (``save_pretrain_checkpoint``, family timm or open_clip) and ``done.json``
    (atomic; metrics per epoch and the realised noise ratio). Ray's own run directory is
    ``storage_path/<key>`` (default ``work_dir/ray_results``).
    """
    from benchmark.backbones import save_pretrain_checkpoint

    check_job(job)
    reused = load_done(job, work_dir)
    if reused is not None:
        return reused
    t_start = time.perf_counter()
    out = job_dir(job, work_dir)
    out.mkdir(parents=True, exist_ok=True)
    storage = Path(storage_path if storage_path is not None
                   else Path(work_dir) / "ray_results").resolve()
    storage.mkdir(parents=True, exist_ok=True)

    cfg: dict[str, Any] = {
        "name": job.name, "objective": job.objective, "arch": job.arch, "seed": int(job.seed),
        "image_size": int(job.image_size), "model_kwargs": dict(job.model_kwargs),
        "epochs": int(job.epochs), "batch_size": int(job.batch_size), "lr": float(job.lr),
        "weight_decay": float(job.weight_decay), "mean": PRETRAIN_MEAN, "std": PRETRAIN_STD,
        "torch_threads": max(1, int(cpus_per_worker)), "progress": bool(progress),
        "run_dir": str(storage / job.key),
        "fault_kill_after_epoch": fault_kill_epoch(fault_kill_after_epoch),
    }
    # Build the model once in the driver: a wrong arch or kwargs fails here, in a second,
    # instead of in every retry of every Ray Train worker.
    tokenizer = None
    if job.objective == "clip":
        model, tokenizer = build_model({**cfg, "num_classes": 0})
        _check_clip_image_size(job, model)
    ts = build_training_set(job, tokenizer)
    noise_path = write_noise_record(ts, out)
    cfg["num_classes"] = len(ts.classes)
    if job.objective == "supervised":
        model, _ = build_model(cfg)

    if progress:
        log.info("%s: training %d images on %d worker(s) x batch %d (global batch %d) -> %s",
                 job.name, len(ts.targets), job.workers, job.batch_size,
                 job.batch_size * job.workers, out)
    state = _fit(job, cfg, ts, storage, cpus_per_worker, max_failures)
    model.load_state_dict(state["model"])  # the driver's copy, built (seeded) before the fit
    family = "timm" if job.objective == "supervised" else "open_clip"
    model_path = out / "model.pt"
    save_pretrain_checkpoint(model_path, family=family, arch=job.arch, model=model,
                             image_size=job.image_size, mean=PRETRAIN_MEAN, std=PRETRAIN_STD,
                             job={**asdict(job), "name": job.name, "key": job.key})
    metrics = list(state["history"])
    seconds = time.perf_counter() - t_start
    atomic_write_json(out / "done.json", {
        "key": job.key, "name": job.name, "job": asdict(job), "metrics": metrics,
        "realised_ratio": ts.realised_ratio, "noise": ts.summary, "seconds": seconds,
        "ray_run_dir": str(storage / job.key), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    if progress:
        log.info("%s: done in %.1f s (final loss %.4f)", job.name, seconds,
                 metrics[-1]["loss"] if metrics else float("nan"))
    return PretrainResult(job=job, key=job.key, checkpoint_path=model_path,
                          noise_path=noise_path, metrics=metrics, reused=False,
                          realised_ratio=ts.realised_ratio, seconds=seconds)


def run_pretrain_jobs(
    jobs: Sequence[PretrainJob],
    work_dir: str | Path,
    *,
    max_concurrent: int = 2,
    on_result: Callable[[PretrainResult], None] | None = None,
    **kw: Any,
) -> list[PretrainResult]:
    """Run several jobs, up to ``max_concurrent`` Ray Train fits at once, results in job order.

    Finished jobs return at once (reuse). Jobs with equal keys run once. An exception in one job
    becomes a result with ``error`` set (the traceback's last lines), the others go on.
    ``on_result`` is called in the calling thread as each job finishes (reused ones first), so
    the driver can log progress and records without waiting for the whole batch.
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

    def _one(j: PretrainJob) -> PretrainResult:
        try:
            return run_pretrain(j, work_dir, **kw)
        except Exception as e:  # noqa: BLE001 - reported per job, the batch goes on
            log.error("pretrain job %s failed: %s", j.name, e)
            out = job_dir(j, work_dir)
            tb = "".join(traceback.format_exception_only(type(e), e)).strip()
            return PretrainResult(job=j, key=j.key, checkpoint_path=out / "model.pt",
                                  noise_path=out / "noise.npz", error=tb)

    with ThreadPoolExecutor(max_workers=min(max_concurrent, max(1, len(pending))),
                            thread_name_prefix="nmlbench-pretrain") as pool:
        futures = {pool.submit(_one, j): j for j in pending}
        for fut in as_completed(futures):
            j = futures[fut]
            done[j.key] = r = fut.result()
            if on_result is not None:
                on_result(r)
    return [done[j.key] if j is firsts[j.key] else _as_duplicate(done[j.key], j) for j in jobs]


def _as_duplicate(r: PretrainResult, job: PretrainJob) -> PretrainResult:
    """The result of an equal-key job, relabelled with this job's own display fields."""
    return PretrainResult(**{**r.__dict__, "job": job})
