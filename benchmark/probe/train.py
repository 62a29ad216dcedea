"""Training one head on prepared features: the recipe every head fit of a sweep follows.

Why no DataLoader: features are already an in-memory tensor, so a mini-batch is one index into
it (the point of caching features instead of re-encoding images every step).

Recipe: AdamW, cosine learning-rate decay stepped per mini-batch, mini-batches drawn from a
seeded ``torch.Generator``; the head's initialisation is seeded too (inside ``fork_rng``, so the
caller's global RNG is untouched). Same seed on the CPU gives bit-identical numbers. The last
incomplete batch is dropped only if it holds a single sample (BatchNorm needs two). A NaN or
infinite loss stops the fit with ``TrainingDiverged``. The loss is the registry's: cross-entropy,
or the head's own loss object built from the resolved ``HParams`` (NMTune's weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.errors import TrainingDiverged
from benchmark.heads.modules import create_head
from benchmark.heads.registry import HParams, as_int, get_head
from benchmark.probe.data import PreparedData

LossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class TrainedHead:
    """A fitted head and how it was trained."""

    head: nn.Module
    hparams: HParams
    train_loss: float
    epochs_run: int
    train_rows: int | None = None  # rows it was trained on (None: built by hand, not by train_head)

    @property
    def method(self) -> str:
        return self.hparams.method


def _diverged(hp: HParams, epoch: int, step: int, x: torch.Tensor) -> TrainingDiverged:
    hint = (
        "train_x contains NaN or inf: clean the features"
        if not bool(torch.isfinite(x).all())
        else "lower lr or the NMTune weights"
    )
    return TrainingDiverged(
        f"{hp.method} head diverged: non-finite loss at epoch {epoch}, step {step} "
        f"with hparams {hp.as_dict()}; {hint}"
    )


def head_loss(hp: HParams) -> LossFn | None:
    """The head's own loss (``None``: plain cross-entropy), built once from resolved weights."""
    head = get_head(hp.method)
    return head.resolve("loss")(hp) if head.loss else None


def training_setup(hp: HParams, dim: int, num_classes: int, n: int, seed: int, device: Any = None
                   ) -> tuple[nn.Module, LossFn | None, torch.optim.Optimizer, Any, torch.Generator, int, int]:
    """The seeded head, its loss, AdamW + cosine schedule, batch generator, batch size and steps
    per epoch of one fit. Shared with the re-encoding baseline in ``benchmarks/`` so the speed
    comparison trains exactly the same head."""
    bs = min(hp.batch_size, n)
    steps = n // bs + (1 if n % bs > 1 else 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = create_head(hp.method, dim, num_classes, **hp.arch())
        if device is not None:
            head = head.to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    head.train()
    return head, head_loss(hp), opt, sched, gen, bs, steps


def train_epoch(head: nn.Module, loss_fn: LossFn | None, opt: torch.optim.Optimizer, sched: Any,
                x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, bs: int, steps: int, hp: HParams,
                epoch: int) -> float:
    """One epoch of seeded mini-batch steps over ``x``; the mean loss. Shared with the re-encoding
    baseline in ``benchmarks/``, which calls it with freshly encoded ``x`` every epoch."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=gen).to(x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for step in range(steps):
        idx = perm[step * bs : (step + 1) * bs]
        xb, yb = x[idx], y[idx]
        try:
            logits, z = head(xb)
            loss = F.cross_entropy(logits, yb) if loss_fn is None else loss_fn(logits, yb, z, xb)[0]
        except torch.linalg.LinAlgError as err:  # SVD of a non-finite batch
            raise _diverged(hp, epoch, step, x) from err
        if not bool(torch.isfinite(loss)):
            raise _diverged(hp, epoch, step, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.detach()
    return float(total) / steps


def train_head(data: PreparedData, hp: HParams, *, seed: int = 0,
               rows: torch.Tensor | None = None) -> TrainedHead:
    """Train ``hp.method``'s head on ``data.train_x`` (or on its ``rows``: a few-shot subset)."""
    seed = as_int("seed", seed, 0)
    x, y = data.train_x, data.train_y
    if rows is not None:
        x, y = x[rows], y[rows]
    n, dim = x.shape
    head, loss_fn, opt, sched, gen, bs, steps = training_setup(hp, dim, data.num_classes, n, seed, data.device)
    epoch_loss = float("nan")
    for epoch in range(hp.epochs):
        epoch_loss = train_epoch(head, loss_fn, opt, sched, x, y, gen, bs, steps, hp, epoch)
    # The last update can overflow the weights although every loss so far was finite.
    if not all(bool(torch.isfinite(p).all()) for p in head.parameters()):
        raise _diverged(hp, hp.epochs - 1, steps - 1, x)
    head.eval()
    return TrainedHead(head, hp, epoch_loss, hp.epochs, n)
