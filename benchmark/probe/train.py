"""Training one head on prepared features: the reference recipe of every gradient-trained head.

Why no DataLoader: features are already an in-memory tensor, so a mini-batch is one index into
it (the point of caching features instead of re-encoding images every step).

Recipe: AdamW, cosine learning-rate decay stepped per mini-batch, mini-batches drawn from a
seeded ``torch.Generator``; the head's initialisation is seeded too (inside ``fork_rng``, so the
caller's global RNG is untouched). Same seed on the CPU gives bit-identical numbers. The last
incomplete batch is dropped only if it holds a single sample (BatchNorm needs two). A NaN or
infinite loss stops the fit with ``TrainingDiverged``. The loss is the head's declaration's
(``HeadSpec.loss``, built from the resolved ``HParams``, e.g. NMTune's weights), else cross-entropy;
a loss that declares ``needs_forward`` (LGM) is also handed the head as ``forward``.

After every epoch the head's BatchNorm statistics are recomputed over its training rows
(``probe.bnstats``: the running averages of a short run are far from them on features with a
small spread) and it is scored on the data's validation set (when it has one): the
training curve (mean loss and validation accuracy per epoch) is returned with the head, so a
reader can see whether it converged. With ``epoch_selection: best_val`` the weights of the epoch
with the best validation accuracy are kept (ties to the later epoch: it has seen more of the
schedule): the epoch count is chosen on validation within one cosine run, at no extra cost.

Sweeps train many heads at once with ``benchmark.probe.batched``; this one-head version is the
reference it is tested against (and what the re-encoding baseline in ``benchmarks/`` runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.errors import ConfigError, TrainingDiverged
from benchmark.heads.modules import create_head
from benchmark.heads.registry import HParams, as_int, get_head
from benchmark.heads.robust import StackedRowLoss
from benchmark.probe.bnstats import refresh_module
from benchmark.probe.data import PreparedData

LossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class TrainedHead:
    """A fitted head and how it was trained.

    ``curves``: per-epoch ``train_loss`` and ``val_accuracy`` (gradient heads) or the L2 search
    (the converged probe); ``summary``: scalars about the fit (``best_epoch``, ``chosen_l2`` ...)
    that the fit record carries as metrics.
    """

    head: nn.Module
    hparams: HParams
    train_loss: float
    epochs_run: int
    train_rows: int | None = None  # rows it was trained on (None: built by hand, not by train_head)
    curves: dict[str, list[float]] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)


def diverged(hp: HParams, epoch: int, step: int, x: torch.Tensor) -> TrainingDiverged:
    hint = (
        "train_x contains NaN or inf: clean the features"
        if not bool(torch.isfinite(x).all())
        else "lower lr or the weights of the head's loss"
    )
    return TrainingDiverged(
        f"{hp.head} head diverged: non-finite loss at epoch {epoch}, step {step} with hparams {hp.as_dict()}; {hint}"
    )


def head_loss(hp: HParams, device: Any = None) -> LossFn | None:
    """The head's own loss for one member (``None``: plain cross-entropy), built once from the
    resolved values: its declared ``loss``, else its ``stacked_loss`` applied to a batch of one.

    With a robust task loss (``hp.loss``: GCE, SCE; ``heads/robust.py``) the head's stacked loss is
    used on a batch of one, handed that loss instead of cross-entropy (its terms add to it); a head
    with neither trains with the robust loss alone; a head with only its own ``loss`` cannot
    compose with it and says so.
    """
    head = get_head(hp.head)
    where = torch.device(device) if device is not None else torch.device("cpu")
    robust = bool(getattr(hp, "loss", None))
    if robust and head.stacked_loss:
        return _OneOfStacked(head.resolve("stacked_loss")([hp], where), StackedRowLoss([hp]))
    if head.loss:
        if robust:
            raise ConfigError(
                f"head {hp.head!r} declares its own loss and no stacked_loss, so loss {hp.loss!r} cannot "
                "replace its cross-entropy; leave loss unset (ce) for it"
            )
        return head.resolve("loss")(hp)
    if head.stacked_loss:
        return _OneOfStacked(head.resolve("stacked_loss")([hp], where), StackedRowLoss([hp]))
    if robust:
        return _OneOfStacked(None, StackedRowLoss([hp]))
    return None


class _OneOfStacked:
    """A stacked loss (or none: the task loss alone) on a batch of one member."""

    def __init__(self, stacked: Callable[..., torch.Tensor] | None, rows: StackedRowLoss) -> None:
        self.stacked, self.rows = stacked, rows
        self.needs_forward = bool(getattr(stacked, "needs_forward", False))

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, z: torch.Tensor, f: torch.Tensor, forward: Any = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.rows.plain:
            base = F.cross_entropy(logits, y).unsqueeze(0)
        else:
            base = self.rows(logits.unsqueeze(0), y.unsqueeze(0)).mean(1)
        if self.stacked is None:
            return base[0], {"ce": base[0]}
        extra: dict[str, Any] = {}
        if self.needs_forward:

            def one(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                out_logits, out_z = forward(x[0])
                return out_logits.unsqueeze(0), out_z.unsqueeze(0)

            extra["forward"] = one
        total = self.stacked(logits.unsqueeze(0), y.unsqueeze(0), z.unsqueeze(0), f.unsqueeze(0), base, **extra)[0]
        return total, {"ce": base[0]}


def batch_plan(batch_size: int, n: int) -> tuple[int, int]:
    """Mini-batch size and steps per epoch on ``n`` rows: a last batch of a single row is dropped
    (BatchNorm needs two), any larger remainder is a short last batch."""
    bs = min(batch_size, n)
    return bs, n // bs + (1 if n % bs > 1 else 0)


def init_head(hp: HParams, dim: int, num_classes: int, seed: int, device: Any = None) -> nn.Module:
    """The head module initialised from ``seed`` alone (the caller's global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = create_head(hp.head, dim, num_classes, **hp.arch())
    return head if device is None else head.to(device)


def training_setup(
    hp: HParams, dim: int, num_classes: int, n: int, seed: int, device: Any = None
) -> tuple[nn.Module, LossFn | None, torch.optim.Optimizer, Any, torch.Generator, int, int]:
    """The seeded head, its loss, AdamW + cosine schedule, batch generator, batch size and steps
    per epoch of one fit. Shared with the re-encoding baseline in ``benchmarks/`` so the speed
    comparison trains exactly the same head."""
    bs, steps = batch_plan(hp.batch_size, n)
    head = init_head(hp, dim, num_classes, seed, device)
    opt = torch.optim.AdamW(head.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    head.train()
    return head, head_loss(hp, device), opt, sched, gen, bs, steps


def train_epoch(
    head: nn.Module,
    loss_fn: LossFn | None,
    opt: torch.optim.Optimizer,
    sched: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    bs: int,
    steps: int,
    hp: HParams,
    epoch: int,
) -> float:
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
            if loss_fn is None:
                loss = F.cross_entropy(logits, yb)
            elif getattr(loss_fn, "needs_forward", False):  # e.g. LGM: evaluates the head on other inputs
                loss = loss_fn(logits, yb, z, xb, forward=head)[0]
            else:
                loss = loss_fn(logits, yb, z, xb)[0]
        except torch.linalg.LinAlgError as err:  # SVD of a non-finite batch
            raise diverged(hp, epoch, step, x) from err
        if not bool(torch.isfinite(loss)):
            raise diverged(hp, epoch, step, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.detach()
    return float(total) / steps


def validation_accuracy(head: nn.Module, data: PreparedData) -> float | None:
    """Accuracy of ``head`` (eval mode) on the data's validation set; None without one."""
    sel = data.selection_set()
    if sel is None:
        return None
    x, y = sel
    assert data.selection is not None  # selection_set() is None exactly when selection is
    subset = data.class_subsets.get(data.selection)
    was_training = head.training
    head.eval()
    with torch.no_grad():
        logits = head(x)[0]
    head.train(was_training)
    pred = subset[logits[:, subset].argmax(dim=1)] if subset is not None else logits.argmax(dim=1)
    return float((pred == y).double().mean())


def needs_validation(hp: HParams, data: PreparedData) -> None:
    """``epoch_selection: best_val`` reads the validation set: say so before training starts."""
    if hp.epoch_selection == "best_val" and data.selection is None:
        raise ConfigError(
            f"{hp.head} with epoch_selection 'best_val' chooses its epoch on a validation set, and the data "
            "has none: pass the test sets as a dict that includes 'val' (validation rows carved from the "
            "training data), or set epoch_selection='last'"
        )


def train_head(data: PreparedData, hp: HParams, *, seed: int = 0, rows: torch.Tensor | None = None) -> TrainedHead:
    """Train ``hp.head``'s head on ``data.train_x`` (or on its ``rows``: a few-shot subset)."""
    seed = as_int("seed", seed, 0)
    needs_validation(hp, data)
    x, y = data.train_x, data.train_y
    if rows is not None:
        x, y = x[rows], y[rows]
    n, dim = x.shape
    head, loss_fn, opt, sched, gen, bs, steps = training_setup(hp, dim, data.num_classes, n, seed, data.device)
    losses: list[float] = []
    val_curve: list[float] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(hp.epochs):
        losses.append(train_epoch(head, loss_fn, opt, sched, x, y, gen, bs, steps, hp, epoch))
        refresh_module(head, x)  # evaluate with the training rows' BatchNorm statistics (probe.bnstats)
        acc = validation_accuracy(head, data)
        if acc is not None:
            val_curve.append(acc)
            if hp.epoch_selection == "best_val" and (best is None or acc >= best[0]):
                best = (acc, epoch, {k: v.detach().clone() for k, v in head.state_dict().items()})
    # The last update can overflow the weights although every loss so far was finite.
    if not all(bool(torch.isfinite(p).all()) for p in head.parameters()):
        raise diverged(hp, hp.epochs - 1, steps - 1, x)
    chosen = hp.epochs - 1
    if best is not None:
        chosen = best[1]
        head.load_state_dict(best[2])
    head.eval()
    curves = {"train_loss": losses, **({"val_accuracy": val_curve} if val_curve else {})}
    return TrainedHead(head, hp, losses[chosen], hp.epochs, n, curves=curves, summary={"best_epoch": float(chosen + 1)})
