"""Everything that runs inside a Ray Train worker: one data-parallel replica of one or more jobs.

Why it is shaped this way:

- A trainer runs a *list* of jobs in order (``cfg["jobs"]``): one job for a multi-worker run,
  several small single-worker jobs in a row to pay Ray Train's start-up once for all of them
  (``launch.py`` decides). The checkpoint carries the finished jobs' models and the current
  job's full state, so a restarted worker group skips what is done and resumes the rest.
- Each worker opens the corpus itself (``corpus.CorpusRef``) and reads only its own shard
  (``inputs.py``): a seeded permutation of the equal-sharded corpus, every ``world``-th index
  from its rank (``audit.epoch_shard``). The shards of one epoch are disjoint and together cover
  the corpus; all ranks take the same number of steps. Only the label table (noisy targets,
  true labels, the flipped / mismatched mask) comes from the driver, through the object store.
- ``batch_size`` is per worker and micro-batch; ``grad_accum`` micro-batches make one optimiser
  step (DDP all-reduces on the last one only), so the global batch is
  ``batch_size * world * grad_accum``.
- Images are normalised on the worker's device with the mean/std the checkpoint stores and the
  ``nmlbench`` backbone family uses when it extracts features later (``recipe.preprocess``).
- A resumed run is the uninterrupted run, bit for bit (on one machine): deterministic
  algorithms and a thread count fixed by the config (``benchmark.determinism``), the global RNG
  reseeded from (seed, epoch, rank) at every epoch, augmentation seeded per sample, and the
  checkpoint holding the model, optimiser and schedule states.
- Every epoch reports its metrics (``recipe.epoch_metrics``, memorisation included) on every
  rank; rank 0 alone attaches the checkpoint.
- The metrics make the run auditable: ``batch_per_worker``, ``global_batch``,
  ``steps_per_epoch`` and, per rank, the images of its shard, an order-free digest of the shard's
  indices (``audit.index_digest``: the ranks' digests add up to the digest of the whole corpus), a
  digest of its parameters (``audit.param_digest``: equal on all ranks while DDP keeps the
  replicas in step), its Ray node and its peak memory (and its loader processes').

Fault injection (for tests and drills): a job config holding ``fault_kill_after_epoch=k`` makes
rank 0 SIGKILL its own process right after the checkpoint of epoch ``k`` has been registered,
once per run (a marker file in the Ray run directory prevents a repeat after the restart).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmark.determinism import deterministic_torch, epoch_seed
from benchmark.errors import TrainingDiverged
from benchmark.pretrain.audit import epoch_shard, rank_records
from benchmark.pretrain.objectives import get_objective
from benchmark.pretrain.progress import report_epoch
from benchmark.pretrain.recipe import autocast_dtype, make_optimizer, preprocess, unwrap

STATE_FILE = "state.pt"  # the one file of each Ray Train checkpoint
_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # written by Ray Train V2 per registration


def _wait_registered(run_dir: Path, checkpoint_name: str, timeout: float = 60.0) -> None:
    """Block until Ray Train has recorded ``checkpoint_name`` in its run snapshot, so a kill
    right after never loses the checkpoint it is meant to resume from."""
    snap = run_dir / _SNAPSHOT_FILE
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if checkpoint_name in snap.read_text():
                return
        except OSError:
            pass
        time.sleep(0.1)


def _maybe_inject_fault(cfg: dict[str, Any], run_dir: Path, name: str, tag: str, epoch: int, rank: int) -> None:
    k = cfg.get("fault_kill_after_epoch")
    if k is None or epoch != int(k) or rank != 0:
        return
    marker = run_dir / f"fault_injected_{tag}after_epoch_{epoch}"
    if marker.exists():
        return
    _wait_registered(run_dir, name)
    marker.touch()
    print(f"[nmlbench] fault injection: SIGKILL of worker pid {os.getpid()} after epoch {epoch}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _restored_state(keys: list[str], device: torch.device) -> dict[str, Any]:
    """``{"done": {key: {...}}, "current": state or None}`` from Ray Train's latest checkpoint."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return {"done": {}, "current": None}
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=True)
    if "done" not in state:  # a one-job checkpoint written before trainers ran job lists
        return {"done": {}, "current": {**state, "key": keys[0]}}
    return state


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """One Ray Train worker: train each job of ``cfg["jobs"]`` in turn (skipping finished ones,
    resuming the interrupted one), reporting a checkpoint every epoch."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    deterministic_torch(int(cfg["torch_threads"]))
    jobs = list(cfg["jobs"])
    state = _restored_state([j["key"] for j in jobs], device)
    for j, job in enumerate(jobs):
        if job["key"] in state["done"]:
            continue
        current = state["current"] if (state["current"] or {}).get("key") == job["key"] else None
        try:
            _train_job(job, j, len(jobs), cfg, state, current, rank, world, device)
        except Exception as e:  # noqa: BLE001 - one job's failure must not sink its group
            if len(jobs) == 1:
                raise
            state["done"][job["key"]] = {"error": f"{type(e).__name__}: {e}"}
            state["current"] = None
            _report(state, {"job": job["key"], "error": str(e)}, _ckpt_name(j, len(jobs), -1), rank)


def _ckpt_name(j: int, n_jobs: int, epoch: int) -> str:
    name = f"epoch_{epoch:04d}" if epoch >= 0 else "failed"
    return name if n_jobs == 1 else f"job{j:02d}_{name}"


def _compute_line(device: torch.device, amp: Any, channels_last: bool, inp: Any) -> str:
    """One line naming the branches a job takes (device, autocast, memory format, input, process
    group), so a run on new hardware shows which of them it exercised."""
    import torch.distributed as dist

    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"
    pinned = "pinned " if getattr(inp, "pin", False) else ""
    return (
        f"device {device}, autocast {str(amp).replace('torch.', '') if amp is not None else 'off'}, "
        f"{'channels-last' if channels_last else 'contiguous'}, {pinned}{inp.kind} input, "
        f"process group {backend}"
    )


def _train_job(
    cfg: dict[str, Any],
    j: int,
    n_jobs: int,
    run: dict[str, Any],
    state: dict[str, Any],
    current: dict[str, Any] | None,
    rank: int,
    world: int,
    device: torch.device,
) -> None:
    """Train one job from scratch or from ``current``; its final epoch moves it to ``done``."""
    import ray
    import ray.train.torch

    from benchmark.pretrain.inputs import make_input

    t_job = time.perf_counter()
    objective = get_objective(cfg["objective"])
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    data = ray.get(cfg["data"])
    split, table = data["corpus"].open(), data["labels"]
    inp = make_input(split, cfg, device)
    loaders = int(cfg.get("loader_workers", 0)) if inp.kind == "stream" else 0
    torch.set_num_threads(max(1, int(run["torch_threads"]) - loaders))  # loaders take their share
    model, tokenizer = objective.build_model(cfg)
    model.to(device)
    channels_last = bool(cfg.get("channels_last")) and device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batch, accum = int(cfg["batch_size"]), int(cfg.get("grad_accum", 1))
    n = len(table)
    micro = math.ceil((n // world) / batch)
    steps_per_epoch = math.ceil(micro / accum)
    epochs = int(cfg["epochs"])
    opt, sched = make_optimizer(model, cfg, steps_per_epoch)
    start_epoch, history, resumed_from = 0, [], -1
    keep = {int(e) for e in cfg.get("snapshot_epochs", ())}  # 1-based: weights after that epoch
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    if current is not None:
        snapshots = dict(current.get("snapshots", {}))
        model.load_state_dict(current["model"])
        opt.load_state_dict(current["optimizer"])
        sched.load_state_dict(current["scheduler"])
        resumed_from = int(current["epoch"])
        start_epoch, history = resumed_from + 1, list(current["history"])
        if run.get("progress"):
            print(f"[nmlbench] {cfg['name']}: resuming after epoch {resumed_from}", flush=True)
    model = ray.train.torch.prepare_model(model)
    on = getattr(inp, "images").device if inp.kind == "array" else device  # noqa: B009
    step = objective.batch_step(split, table, cfg, tokenizer, device, on, rank, world)
    amp = autocast_dtype(cfg.get("precision", "auto"), device)
    if run.get("progress") and start_epoch < epochs:  # what ran where: `make gpu-check` reads this line
        print(f"[nmlbench] {cfg['name']}: {_compute_line(device, amp, channels_last, inp)}", flush=True)
    mean, std, size = cfg["mean"], cfg["std"], int(cfg["image_size"])
    n_sums = len(objective.sums)
    run_dir = Path(run["run_dir"])

    for epoch in range(start_epoch, epochs):
        torch.manual_seed(epoch_seed(seed, epoch, rank))  # what a resume at this epoch draws too
        model.train()
        shard = epoch_shard(n, world, rank, seed, epoch)
        sums = torch.zeros(n_sums, dtype=torch.float64, device=device)
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        for m, (x, pos) in enumerate(inp.batches(shard, batch, epoch)):
            x = preprocess(x.to(device, non_blocking=True), size, mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            group = m // accum
            group_len = accum if (group + 1) * accum <= micro else micro - group * accum
            last = (m + 1) % accum == 0 or m + 1 == micro
            ddp: Any = model  # DistributedDataParallel when world > 1
            sync = ddp.no_sync() if (world > 1 and not last) else contextlib.nullcontext()
            pos_on = pos.to(on, non_blocking=True)
            cast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
            with sync:
                with cast:
                    loss, s = step(model, x, pos_on, pos)
                (loss / group_len).backward()
            if last:
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step.after_update(model)
            sums += s
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        values = sums.tolist()
        if not math.isfinite(values[0]):
            raise TrainingDiverged(
                f"{cfg['name']}: loss became {values[0] / values[1]} in epoch {epoch} (lr "
                f"{cfg['lr']}, batch {batch} per worker x {world}); lower lr or check the data"
            )
        metrics = {
            "job": cfg["key"],
            "epoch": epoch,
            **objective.epoch_metrics(values),
            "seconds": seconds,
            "images_per_s": values[1] / seconds,
            "lr": float(sched.get_last_lr()[0]),
            "resumed_from_epoch": resumed_from,
            "workers": world,
            "batch_per_worker": batch,
            "grad_accum": accum,
            "global_batch": batch * world * accum,
            "steps_per_epoch": steps_per_epoch,
            "input": inp.kind,
            "ranks": rank_records(shard, model, device, world, inp.loader_peak_mb),
        }
        history.append(metrics)
        if cfg.get("progress"):
            print(f"[nmlbench] {cfg['name']}: epoch {epoch} loss {metrics['loss']:.4f} ({seconds:.1f} s)", flush=True)
        final = epoch == epochs - 1
        if rank == 0 and epoch + 1 in keep and not final:
            snapshots[epoch + 1] = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}
        if rank == 0:
            if final:
                state["done"][cfg["key"]] = {
                    "model": unwrap(model).state_dict(),
                    "history": history,
                    "snapshots": snapshots,
                    "seconds": time.perf_counter() - t_job,
                }
                state["current"] = None
            else:
                state["current"] = {
                    "key": cfg["key"],
                    "model": unwrap(model).state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "snapshots": snapshots,
                }
        elif final:
            state["done"][cfg["key"]] = {}
        name = _ckpt_name(j, n_jobs, epoch)
        _report(state, metrics, name, rank)
        if rank == 0:
            report_epoch(run.get("epoch_counter"), cfg["key"], epoch + 1)
        _maybe_inject_fault(cfg, run_dir, name, "" if n_jobs == 1 else f"job{j:02d}_", epoch, rank)


def _report(state: dict[str, Any], metrics: dict[str, Any], name: str, rank: int) -> None:
    """Report the epoch on every rank; only rank 0 writes the checkpoint (one per epoch)."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, Path(d) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)
