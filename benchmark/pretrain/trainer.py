"""One Ray Train ``TorchTrainer`` fit, for one job or a list of small jobs, and what the driver
does around it: prepare each job (noise record, model check, label table), fit, and write each
finished job's ``model.pt`` and ``done.json``.

Why it is shaped this way:

- The noisy label table and its record are made in the driver before any worker starts
  (``corpus.py``): the labels a model saw are on disk even if training fails, and they do not
  depend on the number of workers. The table (and the corpus subset's indices) go to the
  workers through the object store (``ray.put`` once per job); the images never do: every
  worker re-opens the corpus from the data root (``inputs.py``).
- A trainer takes a list of jobs (``train_loop_per_worker`` runs them in order), so small
  single-worker jobs share one worker-group start-up (``launch.run_pretrain_jobs`` groups them).
  Its checkpoint holds the finished jobs' models, so a restart resumes per job.
- ``job.workers`` data-parallel workers each take ``job.batch_size`` images per micro-batch;
  ``placement_strategy`` (Ray's PACK, SPREAD, STRICT_SPREAD) says how they spread over nodes.
- The run directory, ``storage_path/<name>``, must be on storage every node sees when the
  workers span nodes; a trainer started again with the same name resumes from it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.atomic import atomic_write_json
from benchmark.errors import ConfigError, NMLBenchError
from benchmark.pretrain.corpus import CorpusRef, TrainingSet, build_training_set, write_noise_record
from benchmark.pretrain.job import PretrainJob, job_dir, snapshot_file
from benchmark.pretrain.objectives import get_objective
from benchmark.pretrain.recipe import PRETRAIN_MEAN, PRETRAIN_STD
from benchmark.pretrain.worker import STATE_FILE, train_loop_per_worker
from benchmark.ray_session import cluster_resources, init_ray

log = logging.getLogger(__name__)

#: Seconds between Ray Train's controller polls of its workers (Ray's default: 2). Every fit
#: waits on these polls to see its workers start and finish, which a small job feels: a no-op
#: one-worker fit took 14.7-16.0 s at 2 s and 10.0-13.0 s at 0.5 s (2-core Zen 5 EPYC). A value
#: the user exports wins.
HEALTH_CHECK_INTERVAL_S = "0.5"


@dataclass
class Prepared:
    """A job ready to train: its worker config, noise record and the driver's copy of the model."""

    job: PretrainJob
    cfg: dict[str, Any]
    training_set: TrainingSet
    model: torch.nn.Module
    out: Path
    t_start: float


def check_resources(job: PretrainJob, cpus_per_worker: float) -> None:
    """Fail fast where Ray Train would wait for ever on a placement group that cannot fit."""
    have = cluster_resources()
    need_cpu = job.workers * cpus_per_worker
    if need_cpu > have.get("CPU", 0):
        raise ConfigError(
            f"pretrain job {job.name}: {job.workers} worker(s) x {cpus_per_worker} "
            f"CPU need {need_cpu} CPUs, the Ray cluster has {have.get('CPU', 0)}; "
            "lower workers or cpus_per_worker"
        )
    need_gpu = job.workers * job.gpus_per_worker
    if need_gpu > have.get("GPU", 0):
        raise ConfigError(
            f"pretrain job {job.name}: needs {need_gpu} GPUs, the Ray cluster has "
            f"{have.get('GPU', 0)}; set gpus_per_worker: 0 to train on CPU"
        )


def _data_root(job: PretrainJob) -> str | None:
    """The data root as an absolute path, so workers on any node and in any working directory
    open the same files (``$NMLBENCH_DATA_ROOT`` read here: workers may not inherit it)."""
    root = job.data_root or os.environ.get("NMLBENCH_DATA_ROOT") or None
    return None if root is None else str(Path(root).expanduser().resolve())


def prepare(job: PretrainJob, work_dir: str | Path, *, progress: bool, fault_kill_after_epoch: int | None) -> Prepared:
    """Write the (checked) job's noise record and put its label table in the object store."""
    import ray

    objective = get_objective(job.objective)
    t_start = time.perf_counter()
    out = job_dir(job, work_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        **job.worker_config(),
        "mean": PRETRAIN_MEAN,
        "std": PRETRAIN_STD,
        "progress": bool(progress),
        "fault_kill_after_epoch": fault_kill_after_epoch,
    }
    # Build the model once in the driver: a wrong arch or kwargs fails here, in a second,
    # instead of in every retry of every Ray Train worker (before the noise, when the model
    # does not depend on the corpus' classes).
    model = None
    if not objective.needs_classes:
        model, _ = objective.build_model({**cfg, "num_classes": 0})
        objective.check_model(job, model)
    ts = build_training_set(job)
    ts.corpus = CorpusRef(ts.corpus.name, _data_root(job), ts.corpus.indices)
    write_noise_record(ts, out)
    cfg.update(
        num_classes=len(ts.classes),
        classes=list(ts.classes),
        has_caption_table=ts.has_caption_table,
        data=ray.put({"corpus": ts.corpus, "labels": ts.labels}),
    )
    if model is None:
        model, _ = objective.build_model(cfg)
        objective.check_model(job, model)
    if progress:
        log.info(
            "%s: %d images on %d worker(s) x batch %d x accumulation %d (global batch %d) -> %s",
            job.name,
            len(ts),
            job.workers,
            job.batch_size,
            job.grad_accum,
            job.global_batch,
            out,
        )
    return Prepared(job, cfg, ts, model, out, t_start)


def fit(
    prepared: list[Prepared],
    name: str,
    storage: Path,
    *,
    cpus_per_worker: float,
    max_failures: int,
    placement_strategy: str = "PACK",
    epoch_counter: Any = None,
) -> tuple[dict[str, Any], float]:
    """One ``TorchTrainer.fit`` over the prepared jobs (equal worker counts and GPUs); the state
    of its last checkpoint (``{"done": {key: ...}}``) and the fit's wall seconds. Rank 0 tells
    ``epoch_counter`` (a ``progress`` actor) each finished epoch."""
    import ray.train
    from ray.train.torch import TorchTrainer

    init_ray()
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)  # read by the controller
    lead = prepared[0].job
    check_resources(lead, cpus_per_worker)
    resources = {"CPU": float(cpus_per_worker)}
    if lead.gpus_per_worker > 0:
        resources["GPU"] = float(lead.gpus_per_worker)
    config = {
        "jobs": [p.cfg for p in prepared],
        "torch_threads": max(1, int(cpus_per_worker)),
        "run_dir": str(storage / name),
        "progress": any(p.cfg["progress"] for p in prepared),
    }
    if epoch_counter is not None:
        config["epoch_counter"] = epoch_counter
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(lead.workers),
            use_gpu=lead.gpus_per_worker > 0,
            resources_per_worker=resources,
            placement_strategy=placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=int(max_failures)),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    names = ", ".join(p.job.name for p in prepared)
    if getattr(result, "error", None) is not None:
        raise NMLBenchError(f"pretrain job(s) {names} failed in Ray Train: {result.error}")
    if result.checkpoint is None:
        raise NMLBenchError(
            f"pretrain job(s) {names}: Ray Train finished without a checkpoint "
            f"in {storage / name}; delete that folder and run again"
        )
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True), seconds


def finish(
    p: Prepared,
    done: dict[str, Any],
    *,
    run_dir: Path,
    seconds: float | None = None,
    trainer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model.pt`` and ``done.json`` of a trained job; its ``done.json`` content.

    ``seconds`` defaults to the driver's wall time since :func:`prepare`; jobs that shared a
    trainer pass their own share instead (``trainer`` says which trainer and its wall time).
    """
    from benchmark.backbones import save_pretrain_checkpoint

    job = p.job
    if "error" in done:
        raise NMLBenchError(f"pretrain job {job.name} failed in its trainer: {done['error']}")
    family = get_objective(job.objective).family
    snapshots = done.get("snapshots", {})
    missing = [e for e in job.snapshot_epochs if int(e) not in snapshots]
    if missing:
        raise NMLBenchError(
            f"pretrain job {job.name}: its trainer kept no weights after epoch(s) "
            f"{missing}; delete {run_dir} and run again"
        )
    for epoch in job.snapshot_epochs:  # earlier points of the same run (suite checkpoint_epochs)
        p.model.load_state_dict(snapshots[int(epoch)])
        save_pretrain_checkpoint(
            p.out / snapshot_file(epoch),
            family=family,
            arch=job.arch,
            model=p.model,
            image_size=job.image_size,
            mean=PRETRAIN_MEAN,
            std=PRETRAIN_STD,
            job={**asdict(job), "name": job.name, "key": job.key, "epoch": int(epoch)},
        )
    p.model.load_state_dict(done["model"])  # the driver's copy, built (seeded) before the fit
    save_pretrain_checkpoint(
        p.out / "model.pt",
        family=family,
        arch=job.arch,
        model=p.model,
        image_size=job.image_size,
        mean=PRETRAIN_MEAN,
        std=PRETRAIN_STD,
        job={**asdict(job), "name": job.name, "key": job.key},
    )
    info = {
        "key": job.key,
        "name": job.name,
        "job": asdict(job),
        "metrics": list(done["history"]),
        "realised_ratio": p.training_set.realised_ratio,
        "noise": p.training_set.summary,
        "seconds": time.perf_counter() - p.t_start if seconds is None else seconds,
        "ray_run_dir": str(run_dir),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if trainer is not None:
        info["trainer"] = trainer
    atomic_write_json(p.out / "done.json", info)
    return info
