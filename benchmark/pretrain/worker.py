"""Everything that runs inside a Ray Train worker: one data-parallel replica of a job.

Why it is shaped this way:

- Every worker reads the whole ``uint8`` corpus from the object store (one shared array, never
  re-pickled per worker) and each epoch takes its own shard: a seeded permutation of the
  equal-sharded corpus, every ``world``-th index from its rank (:func:`epoch_shard`). The shards of
  one epoch are disjoint and together cover the corpus; all ranks take the same number of steps.
- ``batch_size`` is per worker. One optimiser step averages (DDP all-reduce) the gradients of
  ``world`` batches, so the global batch is ``batch_size * world`` and an epoch has
  ``ceil((N // world) / batch_size)`` steps.
- Images are resized, repeated grey to RGB and normalised on the worker's device (GPU when
  present) with the mean/std that the checkpoint stores and that the ``nmlbench`` backbone family
  uses when it extracts features later (:func:`preprocess`).
- Every epoch reports its metrics; rank 0 alone attaches a checkpoint (model, optimiser,
  scheduler, epoch, metric history). A restarted worker group resumes from
  ``ray.train.get_checkpoint()``, so the epoch counter continues instead of starting again.
- The metrics make the run auditable: ``batch_per_worker``, ``global_batch``,
  ``steps_per_epoch`` and, per rank, the images of its shard, an order-free digest of the shard's
  indices (:func:`index_digest`: the ranks' digests add up to the digest of the whole corpus) and
  a digest of its parameters (:func:`param_digest`: equal on all ranks while DDP keeps the
  replicas in step).

Fault injection (for tests and drills): when the train config holds ``fault_kill_after_epoch=k``,
rank 0 SIGKILLs its own process right after the checkpoint of epoch ``k`` has been registered,
once per run (a marker file in the Ray run directory prevents a repeat after the restart).
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.backbones.base import SUITE_MEAN, SUITE_STD
from benchmark.errors import TrainingDiverged

#: Normalisation of suite-trained models (the backbones' SUITE_MEAN/STD: grey repeated to RGB,
#: [0, 1] -> [-1, 1]); stored in model.pt, so the ``nmlbench`` family extracts features with
#: exactly what training used.
PRETRAIN_MEAN: tuple[float, float, float] = SUITE_MEAN
PRETRAIN_STD: tuple[float, float, float] = SUITE_STD
STATE_FILE = "state.pt"  # the one file of each Ray Train checkpoint
_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # written by Ray Train V2 per registration
_GPU_RESIDENT_BYTES = 2 << 30  # corpora up to 2 GiB live on the device; larger stay on the host
_MASK64 = (1 << 64) - 1


def preprocess(images: torch.Tensor, image_size: int, mean: Sequence[float],
               std: Sequence[float]) -> torch.Tensor:
    """``uint8 [B, C, H, W]`` -> normalised ``float32 [B, 3, S, S]`` on the images' device.

    Matches ``benchmark.backbones.base.make_transform`` (antialiased bilinear resize of the
    uint8 image, scale to [0, 1], normalise), grey repeated to RGB as ``ImageSplit`` does.
    """
    from torchvision.transforms.v2 import functional as TF

    x = images
    if x.shape[-2:] != (image_size, image_size):
        x = TF.resize(x, [image_size, image_size], antialias=True)
    x = x.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def build_model(cfg: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """The job's freshly initialised model (seeded) and, for clip, its tokenizer."""
    from benchmark import backbones

    if cfg["objective"] == "supervised":
        model = backbones.create_timm_classifier(
            cfg["arch"], cfg["num_classes"], cfg["image_size"], cfg["seed"],
            **cfg.get("model_kwargs", {}))
        return model, None
    model, tokenizer = backbones.create_open_clip_model(cfg["arch"], cfg["seed"],
                                                        **(cfg.get("model_kwargs") or {}))
    return model, tokenizer


def epoch_shard(n: int, world: int, rank: int, seed: int, epoch: int) -> torch.Tensor:
    """Sample indices that ``rank`` trains on in ``epoch`` (int64, in training order).

    The first ``n - n % world`` items of a permutation seeded by (seed, epoch), every
    ``world``-th from ``rank``: equal shards keep the DDP steps of all ranks aligned, and the
    same seed gives every rank the same permutation without any communication.
    """
    n_total = n - n % world
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    return torch.randperm(n_total, generator=g)[rank::world]


def index_digest(indices: Any) -> int:
    """Order-free 64-bit digest of a set of sample indices, additive over disjoint sets.

    The sum (mod 2**64) of a splitmix64 hash of each index. Shards that are disjoint and cover
    ``range(n)`` have digests that add up to ``index_digest(range(n))``; an overlap or a gap
    breaks the sum except with probability about 2**-64.
    """
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    x = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return int(x.sum(dtype=np.uint64))


def param_digest(model: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of a model's parameters, in ``named_parameters`` order.

    Buffers are left out: BatchNorm running statistics are updated by each rank's own forward
    pass, so they legitimately differ across ranks after a step; parameters must not.
    """
    h = hashlib.sha256()
    for name, p in _unwrap(model).named_parameters():
        h.update(name.encode())
        h.update(p.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _as_int64(value: int) -> int:
    """A 64-bit unsigned value as the signed int64 with the same bits (for a torch tensor)."""
    return value - (1 << 64) if value >= (1 << 63) else value


def _rank_records(shard: torch.Tensor, model: torch.nn.Module, device: torch.device,
                  world: int) -> list[dict[str, Any]]:
    """Per rank: images in its shard, the shard's index digest, its parameter digest."""
    local = torch.tensor([shard.numel(), _as_int64(index_digest(shard)),
                          _as_int64(int(param_digest(model), 16))],
                         dtype=torch.int64, device=device)
    parts = [local]
    if world > 1:
        import torch.distributed as dist

        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
    return [{"rank": r, "images": int(p[0]), "index_digest": f"{int(p[1]) & _MASK64:016x}",
             "param_digest": f"{int(p[2]) & _MASK64:016x}"} for r, p in enumerate(parts)]


def _clip_loss(out: Any, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over the global batch (features gathered with gradients) and the
    number of local images whose top text is their own caption."""
    if isinstance(out, dict):
        img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
    else:
        img, txt, scale = out[0], out[1], out[2]
    if world > 1:
        import torch.distributed.nn.functional as dnn

        all_img = torch.cat(dnn.all_gather(img), 0)
        all_txt = torch.cat(dnn.all_gather(txt), 0)
    else:
        all_img, all_txt = img, txt
    target = torch.arange(img.shape[0], device=img.device) + rank * img.shape[0]
    logits_i = scale * img @ all_txt.T
    logits_t = scale * txt @ all_img.T
    loss = 0.5 * (F.cross_entropy(logits_i, target) + F.cross_entropy(logits_t, target))
    return loss, (logits_i.argmax(1) == target).sum()


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


def _maybe_inject_fault(cfg: dict[str, Any], epoch: int, rank: int) -> None:
    k = cfg.get("fault_kill_after_epoch")
    if k is None or epoch != int(k) or rank != 0:
        return
    run_dir = Path(cfg["run_dir"])
    marker = run_dir / f"fault_injected_after_epoch_{epoch}"
    if marker.exists():
        return
    _wait_registered(run_dir, f"epoch_{epoch:04d}")
    marker.touch()
    print(f"[nmlbench] fault injection: SIGKILL of worker pid {os.getpid()} after epoch {epoch}",
          flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _load_data(ref: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Images, noisy targets and clean labels from the object store, on the device if small."""
    import ray

    data = ray.get(ref)
    images = torch.from_numpy(np.array(data["images"]))  # writable copy of the shared array
    targets = torch.from_numpy(np.array(data["targets"]))
    clean = torch.from_numpy(np.array(data["clean"]))
    if images.numel() <= _GPU_RESIDENT_BYTES:
        images, targets, clean = images.to(device), targets.to(device), clean.to(device)
    return images, targets, clean


def _resume(cfg: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
            sched: Any, device: torch.device) -> tuple[int, list[dict[str, Any]], int]:
    """(first epoch to train, metric history so far, epoch resumed from or -1)."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, [], -1
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    resumed_from = int(state["epoch"])
    if cfg.get("progress"):
        print(f"[nmlbench] {cfg['name']}: resuming after epoch {resumed_from}", flush=True)
    return resumed_from + 1, list(state["history"]), resumed_from


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """One Ray Train worker: build, shard, train, report a checkpoint every epoch, resume."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(max(1, int(cfg["torch_threads"])))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    supervised = cfg["objective"] == "supervised"
    seed = int(cfg["seed"])
    torch.manual_seed(seed)

    images, targets, clean = _load_data(cfg["data"], device)
    model, _ = build_model(cfg)
    model.to(device)
    batch = int(cfg["batch_size"])  # per worker: one optimiser step sees batch * world images
    steps_per_epoch = math.ceil((images.shape[0] // world) / batch)
    epochs = int(cfg["epochs"])
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]),
                            weight_decay=float(cfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    start_epoch, history, resumed_from = _resume(cfg, model, opt, sched, device)
    model = ray.train.torch.prepare_model(model)
    amp = device.type == "cuda"
    mean, std, size = cfg["mean"], cfg["std"], int(cfg["image_size"])

    for epoch in range(start_epoch, epochs):
        model.train()
        shard = epoch_shard(images.shape[0], world, rank, seed, epoch).to(images.device)
        # Running sums stay on the device (no host sync per step): loss, n, correct, clean.
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        ones = torch.ones((), dtype=torch.float64, device=device)
        t0 = time.perf_counter()
        for step in range(steps_per_epoch):
            idx = shard[step * batch:(step + 1) * batch]
            x = preprocess(images[idx].to(device, non_blocking=True), size, mean, std)
            y = targets[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                if supervised:
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y)
                    pred = logits.argmax(1)
                    correct = (pred == y).sum()
                    clean_ok = (pred == clean[idx].to(device)).sum()
                else:
                    loss, correct = _clip_loss(model(x, y), rank, world)
                    clean_ok = torch.zeros((), device=device)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients of all ranks here
            opt.step()
            sched.step()
            if not supervised:
                with torch.no_grad():  # the usual CLIP clamp: temperature at most 100
                    _unwrap(model).logit_scale.clamp_(0, math.log(100.0))
            sums += torch.stack([loss.detach().double() * len(idx), ones * len(idx),
                                 correct.double(), clean_ok.double()])
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        loss_sum, n, correct, clean_ok = sums.tolist()
        if not math.isfinite(loss_sum):
            raise TrainingDiverged(
                f"{cfg['name']}: loss became {loss_sum / n} in epoch {epoch} (lr {cfg['lr']}, "
                f"batch {batch} per worker x {world}); lower lr or check the data")
        metrics = {"epoch": epoch, "loss": loss_sum / n, "train_accuracy": correct / n,
                   "seconds": seconds, "images_per_s": n / seconds,
                   "lr": float(sched.get_last_lr()[0]), "resumed_from_epoch": resumed_from,
                   "world_size": world, "batch_per_worker": batch, "global_batch": batch * world,
                   "steps_per_epoch": steps_per_epoch,
                   "ranks": _rank_records(shard, model, device, world)}
        if supervised:
            metrics["clean_accuracy"] = clean_ok / n
        history.append(metrics)
        if cfg.get("progress") and rank == 0:
            print(f"[nmlbench] {cfg['name']} epoch {epoch + 1}/{epochs}: loss {metrics['loss']:.4f}"
                  f" acc {metrics['train_accuracy']:.3f} {metrics['images_per_s']:.0f} img/s",
                  flush=True)
        _report(metrics, history, model, opt, sched, epoch, rank)
        _maybe_inject_fault(cfg, epoch, rank)


def _report(metrics: dict[str, Any], history: list[dict[str, Any]], model: torch.nn.Module,
            opt: torch.optim.Optimizer, sched: Any, epoch: int, rank: int) -> None:
    """Report the epoch on every rank; only rank 0 writes the checkpoint (one per epoch)."""
    import ray.train

    name = f"epoch_{epoch:04d}"
    if rank != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "epoch": epoch, "history": history},
                   Path(d) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=name)
