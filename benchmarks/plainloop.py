"""The baselines of the pre-training measurements: the recipe of ``benchmark.pretrain`` as a
plain PyTorch loop in the calling process, with no Ray, no checkpoints and no noise record on disk.

- :func:`train_plain` (embedded corpora): the same noisy label table (``build_training_set``),
  the same seeded model (``build_model``), the same mini-batches in the same seeded order through
  the same ``preprocess``, optimiser and schedule (``make_optimizer``) as one Ray Train worker on
  the in-memory array path (world size 1).
- :func:`train_plain_files` (image files): what a user would write without nml-bench:
  torchvision's ``ImageFolder`` with ``RandomResizedCrop`` + ``RandomHorizontalFlip`` and a
  ``DataLoader`` with the same number of loader processes, the same model, optimiser and batch.

Per-epoch ``seconds`` and ``images_per_s`` are measured the same way as the worker (the step loop
only, loader start-up included), so steady-state throughputs compare directly.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmark.pretrain import (
    PRETRAIN_MEAN,
    PRETRAIN_STD,
    PretrainJob,
    array_images,
    build_model,
    build_training_set,
    epoch_shard,
    make_optimizer,
    preprocess,
)


def _model_cfg(job: PretrainJob, num_classes: int) -> dict[str, Any]:
    return {
        "objective": "supervised",
        "arch": job.arch,
        "seed": int(job.seed),
        "image_size": int(job.image_size),
        "model_kwargs": dict(job.model_kwargs),
        "num_classes": num_classes,
        "lr": float(job.lr),
        "weight_decay": float(job.weight_decay),
        "epochs": int(job.epochs),
        "warmup_epochs": float(job.warmup_epochs),
    }


def train_plain(job: PretrainJob, threads: int = 1) -> dict[str, Any]:
    """Train a supervised ``job`` on an embedded corpus end to end; per-epoch metrics and phase seconds."""
    if job.objective != "supervised":
        raise ValueError("the plain-loop baseline covers supervised jobs only")
    t_start = time.perf_counter()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ts = build_training_set(job)
        images = torch.from_numpy(array_images(ts.corpus.open()))
        targets = torch.from_numpy(ts.labels.targets)
        t_data = time.perf_counter() - t_start
        cfg = _model_cfg(job, len(ts.classes))
        torch.manual_seed(int(job.seed))
        model, _ = build_model(cfg)
        n = images.shape[0]
        batch = int(job.batch_size)
        steps = math.ceil(n / batch)
        opt, sched = make_optimizer(model, cfg, steps)
        history = []
        for epoch in range(int(job.epochs)):
            model.train()
            order = epoch_shard(n, 1, 0, int(job.seed), epoch)  # the worker's order at world size 1
            sums = torch.zeros(3, dtype=torch.float64)
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            for step in range(steps):
                idx = order[step * batch : (step + 1) * batch]
                x = preprocess(images[idx], int(job.image_size), PRETRAIN_MEAN, PRETRAIN_STD)
                y = targets[idx]
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                sums += torch.stack(
                    [
                        loss.detach().double() * len(idx),
                        torch.tensor(float(len(idx)), dtype=torch.float64),
                        (logits.argmax(1) == y).sum().double(),
                    ]
                )
            seconds = time.perf_counter() - t0
            loss_sum, seen, correct = sums.tolist()
            history.append(
                {
                    "epoch": epoch,
                    "loss": loss_sum / seen,
                    "train_accuracy": correct / seen,
                    "seconds": seconds,
                    "images_per_s": seen / seconds,
                }
            )
        with tempfile.TemporaryDirectory(prefix="bench-plain-") as d:
            torch.save(model.state_dict(), Path(d) / "model.pt")
    finally:
        torch.set_num_threads(before)
    return {"metrics": history, "seconds": time.perf_counter() - t_start, "data_seconds": t_data}


def train_plain_files(
    job: PretrainJob, folder: str | Path, *, loader_workers: int, threads: int = 1, epochs: int | None = None
) -> dict[str, Any]:
    """A hand-written ImageNet-style loop over an ``ImageFolder`` (random-resized crop + flip of
    ``job.crop_scale``, ``job.batch_size``, AdamW); per-epoch step seconds and images/s."""
    from torchvision import datasets, transforms

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(int(job.image_size), scale=tuple(job.crop_scale)),
                transforms.RandomHorizontalFlip(),
                transforms.PILToTensor(),
            ]
        )
        data = datasets.ImageFolder(str(folder), transform=tf)
        loader = torch.utils.data.DataLoader(
            data, batch_size=int(job.batch_size), shuffle=True, num_workers=loader_workers, drop_last=False
        )
        torch.manual_seed(int(job.seed))
        model, _ = build_model(_model_cfg(job, len(data.classes)))
        opt = torch.optim.AdamW(model.parameters(), lr=float(job.lr), weight_decay=float(job.weight_decay))
        history = []
        for epoch in range(int(epochs or job.epochs)):
            model.train()
            seen = 0
            t0 = time.perf_counter()
            for x, y in loader:
                x = preprocess(x, int(job.image_size), PRETRAIN_MEAN, PRETRAIN_STD)
                loss = F.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(y)
            seconds = time.perf_counter() - t0
            history.append({"epoch": epoch, "seconds": seconds, "images_per_s": seen / seconds})
    finally:
        torch.set_num_threads(before)
    return {"metrics": history, "images": len(data)}
