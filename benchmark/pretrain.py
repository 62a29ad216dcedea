"""Noisy pre-training with Ray Train: one ``TorchTrainer`` per ``PretrainJob``.

Why it is shaped this way:

- The noisy training set is built once, in the driver: the corpus subset, the seeded noise
  (``benchmark.noise``) and its record (``noise.npz`` + ``noise.json``) are written *before*
  training starts, so the exact labels a model saw are on disk even if training later fails.
- Images travel to the workers as one ``uint8`` array through the Ray object store
  (``ray.put`` once, an ``ObjectRef`` in the train config), never re-pickled per worker; every
  worker resizes, repeats grey to RGB and normalises on its own device (GPU when present), with
  the mean/std that are stored in the checkpoint and that the ``nmlbench`` backbone family uses
  when it extracts features later.
- Every epoch reports its metrics with a checkpoint (model, optimiser, scheduler, epoch and the
  metric history). A restarted worker group (``FailureConfig(max_failures)``) resumes from
  ``ray.train.get_checkpoint()``, so the epoch counter continues instead of starting again;
  re-running a job whose Ray run directory exists resumes from its last checkpoint too.
- Work is keyed by ``job.key``: ``work_dir/pretrain/<key>/done.json`` marks a finished job and a
  re-run returns it at once without starting Ray Train.
- Each fit has ~20 s of fixed start-up on a small machine, so :func:`run_pretrain_jobs` overlaps
  several jobs (threads, each driving its own trainer).

Fault injection (for tests and drills): set the environment variable
``NMLBENCH_FAULT_KILL_AFTER_EPOCH=k`` in the driver (or pass ``fault_kill_after_epoch=k`` to
:func:`run_pretrain`). The driver hands the value to the workers in the train config (so it
does not depend on environment propagation); rank 0 SIGKILLs its own process right after the
checkpoint of epoch ``k`` has been registered, once per run (a marker file in the Ray run
directory prevents a repeat after the restart).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.backbones.base import SUITE_MEAN, SUITE_STD
from benchmark.atomic import atomic_write, atomic_write_json
from benchmark.errors import ConfigError, NMLBenchError, TrainingDiverged
from benchmark.jobs import PretrainJob

log = logging.getLogger(__name__)

OBJECTIVES: tuple[str, ...] = ("supervised", "clip")
FAULT_ENV = "NMLBENCH_FAULT_KILL_AFTER_EPOCH"
#: Normalisation of suite-trained models (the backbones' SUITE_MEAN/STD: grey repeated to RGB,
#: [0, 1] -> [-1, 1]); stored in model.pt, so the ``nmlbench`` family extracts features with
#: exactly what training used.
PRETRAIN_MEAN: tuple[float, float, float] = SUITE_MEAN
PRETRAIN_STD: tuple[float, float, float] = SUITE_STD
_STATE_FILE = "state.pt"
_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # written by Ray Train V2 per registration
_GPU_RESIDENT_BYTES = 2 << 30  # corpora up to 2 GiB live on the device; larger stay on the host


# ============================================================================================
# Results
# ============================================================================================

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


def job_dir(job: PretrainJob, work_dir: str | Path) -> Path:
    """``work_dir/pretrain/<key>``: everything one job writes (absolute)."""
    return Path(work_dir).resolve() / "pretrain" / job.key


# ============================================================================================
# Driver side: the noisy training set
# ============================================================================================

@dataclass
class TrainingSet:
    """The exact tensors one job trains on, plus its noise record.

    ``images`` is ``uint8 [N, C, H, W]`` (C = 1 grey or 3 colour); ``targets`` is the noisy
    label vector (supervised) or the tokenised noisy captions ``int [N, L]`` (clip).
    """

    images: np.ndarray
    targets: np.ndarray
    clean_labels: np.ndarray
    classes: list[str]
    indices: np.ndarray
    realised_ratio: float
    record: dict[str, np.ndarray]
    summary: dict[str, Any]


def check_job(job: PretrainJob) -> None:
    """Reject a job that cannot run, before anything is loaded (ConfigError names the fix)."""
    if job.objective not in OBJECTIVES:
        raise ConfigError(f"pretrain job {job.name}: objective {job.objective!r} is unknown; "
                          f"use one of {list(OBJECTIVES)}")
    if job.objective == "clip" and job.noise_kind != "swap":
        raise ConfigError(f"pretrain job {job.name}: clip jobs take noise_kind 'swap' "
                          f"(caption swaps), got {job.noise_kind!r}")
    if job.objective == "supervised" and job.noise_kind == "swap":
        raise ConfigError(f"pretrain job {job.name}: 'swap' noise is for clip jobs; use a label "
                          "flip kind (symmetric, pairflip, asymmetric, instance)")
    if not 0.0 <= float(job.noise_ratio) < 1.0:
        raise ConfigError(f"pretrain job {job.name}: noise_ratio {job.noise_ratio} must be in "
                          "[0, 1)")
    for name in ("epochs", "batch_size", "image_size", "workers"):
        if int(getattr(job, name)) < 1:
            raise ConfigError(f"pretrain job {job.name}: {name} must be >= 1, got "
                              f"{getattr(job, name)}")
    if job.train_subset is not None and int(job.train_subset) < 2:
        raise ConfigError(f"pretrain job {job.name}: train_subset must be >= 2 or null (all), "
                          f"got {job.train_subset}")


def subset_indices(n: int, train_subset: int | None, seed: int) -> np.ndarray:
    """Sorted first-``train_subset`` items of a seeded shuffle of ``range(n)`` (all if None).

    The generator is seeded from (seed, "subset") so the subset draw never shares a stream with
    the noise draw, which uses ``seed`` itself.
    """
    if train_subset is None or int(train_subset) >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 0x5B5E7])
    return np.sort(rng.permutation(n)[: int(train_subset)]).astype(np.int64)


def split_to_uint8(split: Any, image_size: int) -> np.ndarray:
    """All images of a split as ``uint8 [N, C, H, W]``, without PIL when the split is an array.

    Image splits that decode files may hold mixed sizes: those are resized to ``image_size``
    here (once), array splits keep their native size and are resized on the device.
    """
    if hasattr(split, "arrays"):
        images, _ = split.arrays()
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ConfigError(f"{split!r}: images must be uint8, got {images.dtype}")
        if images.ndim == 3:
            return np.ascontiguousarray(images[:, None])
        if images.ndim == 4 and images.shape[-1] == 3:
            return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        raise ConfigError(f"{split!r}: arrays must be (N, H, W) or (N, H, W, 3), got "
                          f"{images.shape}")
    from PIL import Image

    out = np.empty((len(split), 3, image_size, image_size), dtype=np.uint8)
    for i in range(len(split)):
        img, _ = split[i]
        img = img.convert("RGB")
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    return out


def _npz_fields(write: Any) -> dict[str, np.ndarray]:
    """Arrays that ``write(file)`` would save with ``np.savez*``, as a dict (to merge extras)."""
    buf = io.BytesIO()
    write(buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _caption_transition(image_labels: np.ndarray, caption_labels: np.ndarray,
                        k: int) -> np.ndarray:
    """Row-stochastic T[i, j] = P(caption class j | image class i) after swapping."""
    counts = np.zeros((k, k), dtype=np.float64)
    np.add.at(counts, (image_labels, caption_labels), 1.0)
    rows = counts.sum(1, keepdims=True)
    return np.where(rows > 0, counts / np.maximum(rows, 1.0), np.eye(k))


def build_training_set(job: PretrainJob, tokenizer: Any = None) -> TrainingSet:
    """Load the corpus subset and apply the job's seeded noise (no Ray involved).

    Supervised: ``flip_labels(labels, K, noise_ratio, noise_kind, seed)``. Clip: one caption
    per image from class templates (``benchmark.captions``), then ``swap_captions`` with the
    same seed, then tokenised with the model's own tokenizer.
    """
    from benchmark.data import get_dataset
    from benchmark.noise import flip_labels, swap_captions

    check_job(job)
    split = get_dataset(job.corpus, job.data_root).split("train")
    idx = subset_indices(len(split), job.train_subset, job.seed)
    if len(idx) < len(split):
        split = split.subset(idx)
    clean = np.asarray(split.labels, dtype=np.int64)
    classes = list(split.classes)
    images = split_to_uint8(split, job.image_size)
    base = {"objective": job.objective, "kind": job.noise_kind, "ratio": float(job.noise_ratio),
            "seed": int(job.seed), "n": int(len(clean)), "corpus": job.corpus,
            "classes": classes, "key": job.key}
    if job.objective == "supervised":
        # Instance-dependent noise (Xia et al.) draws flip rates from the samples themselves:
        # the raw pixels are the features, so the noise does not depend on any model.
        feats = (images.reshape(len(images), -1).astype(np.float32) / 255.0
                 if job.noise_kind == "instance" else None)
        nr = flip_labels(clean, len(classes), float(job.noise_ratio), kind=job.noise_kind,
                         seed=job.seed, class_map=job.class_map, features=feats)
        record = {**_npz_fields(nr.to_npz), "indices": idx, "clean_labels": clean}
        summary = {**base, "realised_ratio": float(nr.realised_ratio),
                   "num_flipped": int(nr.flipped.sum())}
        return TrainingSet(images, nr.noisy_labels.astype(np.int64), clean, classes, idx,
                           float(nr.realised_ratio), record, summary)

    from benchmark.captions import class_captions

    if tokenizer is None:
        raise ConfigError(f"clip job {job.name}: a tokenizer is needed to encode captions")
    captions = class_captions(clean, classes, seed=job.seed)
    sw = swap_captions(captions, float(job.noise_ratio), seed=job.seed)
    text_class = {c: y for c, y in zip(captions, clean.tolist())}
    cap_labels = np.array([text_class[c] for c in sw.captions], dtype=np.int64)
    tokens = np.asarray(tokenizer(sw.captions)).astype(np.int64)
    record = {
        "mismatched": sw.mismatched.astype(bool),
        "realised_ratio": np.float64(sw.realised_ratio),
        "transition": _caption_transition(clean, cap_labels, len(classes)),
        "kind": np.str_("swap"), "ratio": np.float64(job.noise_ratio),
        "seed": np.int64(job.seed), "indices": idx, "clean_labels": clean,
        "caption_labels": cap_labels,
        "clean_captions": np.array(captions, dtype=np.str_),
        "captions": np.array(sw.captions, dtype=np.str_),
    }
    summary = {**base, "realised_ratio": float(sw.realised_ratio),
               "num_mismatched": int(sw.mismatched.sum()),
               # Swaps between two templates of one class change the text, not the class.
               "num_class_mismatched": int((cap_labels != clean).sum())}
    return TrainingSet(images, tokens, clean, classes, idx, float(sw.realised_ratio),
                       record, summary)


def write_noise_record(ts: TrainingSet, out_dir: Path) -> Path:
    """``noise.npz`` (matrix, flipped / mismatched mask, labels, indices) + ``noise.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "noise.npz"
    atomic_write(path, lambda f: np.savez_compressed(f, **ts.record))
    atomic_write_json(out_dir / "noise.json", ts.summary)
    return path


# ============================================================================================
# Worker side
# ============================================================================================

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


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


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


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """One Ray Train worker: build, shard, train, report a checkpoint every epoch, resume."""
    import ray
    import ray.train
    import ray.train.torch

    torch.set_num_threads(max(1, int(cfg["torch_threads"])))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    supervised = cfg["objective"] == "supervised"
    seed = int(cfg["seed"])
    torch.manual_seed(seed)

    data = ray.get(cfg["data"])
    images = torch.from_numpy(np.array(data["images"]))  # writable copy of the shared array
    targets = torch.from_numpy(np.array(data["targets"]))
    clean = torch.from_numpy(np.array(data["clean"]))
    if images.numel() <= _GPU_RESIDENT_BYTES:
        images, targets, clean = images.to(device), targets.to(device), clean.to(device)

    model, _ = build_model(cfg)
    model.to(device)
    n_total = images.shape[0] - images.shape[0] % world  # equal shards keep DDP steps aligned
    per_worker = n_total // world
    batch = max(1, int(cfg["batch_size"]) // world)
    steps_per_epoch = math.ceil(per_worker / batch)
    epochs = int(cfg["epochs"])
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]),
                            weight_decay=float(cfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))

    start_epoch, history, resumed_from = 0, [], -1
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / _STATE_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
        resumed_from = int(state["epoch"])
        start_epoch = resumed_from + 1
        if cfg.get("progress"):
            print(f"[nmlbench] {cfg['name']}: resuming after epoch {resumed_from}", flush=True)
    model = ray.train.torch.prepare_model(model)
    amp = device.type == "cuda"
    mean, std, size = cfg["mean"], cfg["std"], int(cfg["image_size"])

    for epoch in range(start_epoch, epochs):
        model.train()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n_total, generator=g)[rank::world].to(images.device)
        # Running sums stay on the device (no host sync per step): loss, n, correct, clean.
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        ones = torch.ones((), dtype=torch.float64, device=device)
        t0 = time.perf_counter()
        for step in range(steps_per_epoch):
            idx = order[step * batch:(step + 1) * batch]
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
            loss.backward()
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
                f"batch {cfg['batch_size']}); lower lr or check the data")
        metrics = {"epoch": epoch, "loss": loss_sum / n, "train_accuracy": correct / n,
                   "seconds": seconds, "images_per_s": n / seconds,
                   "lr": float(sched.get_last_lr()[0]), "resumed_from_epoch": resumed_from,
                   "world_size": world}
        if supervised:
            metrics["clean_accuracy"] = clean_ok / n
        history.append(metrics)
        if cfg.get("progress") and rank == 0:
            print(f"[nmlbench] {cfg['name']} epoch {epoch + 1}/{epochs}: loss {metrics['loss']:.4f}"
                  f" acc {metrics['train_accuracy']:.3f} {metrics['images_per_s']:.0f} img/s",
                  flush=True)
        name = f"epoch_{epoch:04d}"
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "epoch": epoch,
                            "history": history}, Path(d) / _STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=name)
        else:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        _maybe_inject_fault(cfg, epoch, rank)


# ============================================================================================
# Driver side: running jobs
# ============================================================================================

_ray_init_lock = threading.Lock()


def ensure_ray(**init_kwargs: Any) -> None:
    """Start a local Ray instance if none is connected (dashboard off: it is not needed here)."""
    import ray

    with _ray_init_lock:
        if not ray.is_initialized():
            init_kwargs.setdefault("include_dashboard", False)
            ray.init(**init_kwargs)


def _check_resources(job: PretrainJob, cpus_per_worker: float) -> None:
    """Fail fast where Ray Train would wait for ever on a placement group that cannot fit."""
    import ray

    have = ray.cluster_resources()
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
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

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

    ensure_ray()
    _check_resources(job, cpus_per_worker)
    cfg["data"] = ray.put({"images": ts.images, "targets": ts.targets, "clean": ts.clean_labels})
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
    if progress:
        log.info("%s: training %d images on %d worker(s) -> %s", job.name, len(ts.targets),
                 job.workers, out)
    result = trainer.fit()
    if getattr(result, "error", None) is not None:
        raise NMLBenchError(f"pretrain job {job.name} failed in Ray Train: {result.error}")
    if result.checkpoint is None:
        raise NMLBenchError(f"pretrain job {job.name}: Ray Train finished without a checkpoint "
                            f"in {storage / job.key}; delete that folder and run again")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / _STATE_FILE, map_location="cpu", weights_only=True)

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
        ensure_ray()  # in this thread: ray.init must not run first inside a worker thread

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
