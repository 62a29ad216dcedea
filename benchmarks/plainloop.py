"""The baseline of measurement 4: the pre-training recipe of ``benchmark.pretrain`` as a plain
PyTorch loop in the calling process, with no Ray, no checkpoints and no noise record on disk.

It builds the same noisy training set (``build_training_set``), the same seeded model
(``build_model``), feeds the same mini-batches in the same seeded order through the same
``preprocess`` and optimiser schedule as one Ray Train worker (``train_loop_per_worker`` with
world size 1), and saves the final weights once. Per-epoch ``seconds`` and ``images_per_s``
are measured the same way (the step loop only), so steady-state throughputs compare directly.
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
    build_model,
    build_training_set,
    epoch_shard,
    preprocess,
)


def train_plain(job: PretrainJob, threads: int = 1) -> dict[str, Any]:
    """Train a supervised ``job`` end to end; returns per-epoch metrics and phase seconds."""
    if job.objective != "supervised":
        raise ValueError("the plain-loop baseline covers supervised jobs only")
    t_start = time.perf_counter()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ts = build_training_set(job)
        t_data = time.perf_counter() - t_start
        cfg = {"objective": "supervised", "arch": job.arch, "seed": int(job.seed),
               "image_size": int(job.image_size), "model_kwargs": dict(job.model_kwargs),
               "num_classes": len(ts.classes)}
        torch.manual_seed(int(job.seed))
        model, _ = build_model(cfg)
        images = torch.from_numpy(ts.images)
        targets = torch.from_numpy(ts.targets)
        n = images.shape[0]
        batch = int(job.batch_size)
        steps = math.ceil(n / batch)
        opt = torch.optim.AdamW(model.parameters(), lr=float(job.lr), weight_decay=float(job.weight_decay))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, job.epochs * steps))
        history = []
        for epoch in range(int(job.epochs)):
            model.train()
            order = epoch_shard(n, 1, 0, int(job.seed), epoch)  # the worker's order at world size 1
            sums = torch.zeros(3, dtype=torch.float64)
            t0 = time.perf_counter()
            for step in range(steps):
                idx = order[step * batch : (step + 1) * batch]
                x = preprocess(images[idx], int(job.image_size), PRETRAIN_MEAN, PRETRAIN_STD)
                y = targets[idx]
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                sums += torch.stack([loss.detach().double() * len(idx), torch.tensor(float(len(idx)), dtype=torch.float64),
                                     (logits.argmax(1) == y).sum().double()])
            seconds = time.perf_counter() - t0
            loss_sum, seen, correct = sums.tolist()
            history.append({"epoch": epoch, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                            "seconds": seconds, "images_per_s": seen / seconds})
        with tempfile.TemporaryDirectory(prefix="bench-plain-") as d:
            torch.save(model.state_dict(), Path(d) / "model.pt")
    finally:
        torch.set_num_threads(before)
    return {"metrics": history, "seconds": time.perf_counter() - t_start, "data_seconds": t_data}
