"""Many gradient-trained heads of one pair trained as one computation.

Why: a head fit on small cached features is a few hundred tiny matrix products, so its cost is
per-operation overhead, not arithmetic. The fits of a pair share their features, so the seeds x
hyper-parameter values of a pair that share an architecture, epochs, batch size and epoch
selection (``HParams.batch_key``) are trained together: their weights are stacked along a
leading member axis and every step is one batched product (``torch.baddbmm``) for all of them.

What stays per member, so that each member's result equals fitting it alone
(``benchmark.probe.train.train_head``, the reference this is tested against):
- the initialisation (each member's module is built with its own seed, then stacked);
- the mini-batch order (each member's own seeded ``torch.Generator``);
- BatchNorm statistics (the members' channels are laid side by side and normalised by one
  ``F.batch_norm`` call: per channel means per member; no ``vmap``, whose BatchNorm running
  statistics are a trap), and after every epoch recomputed over the training rows before the
  head is scored (``probe.bnstats``);
- AdamW's state, learning rate, weight decay and cosine schedule (the arithmetic of
  ``torch.optim.AdamW``'s single-tensor path and of ``CosineAnnealingLR``, per member);
- the loss: each member's head's own (``HeadSpec.stacked_loss`` for all of a head's members at
  once, else its per-member ``loss`` member by member, else cross-entropy), with that member's
  weights (a loss declaring ``needs_forward``, LGM's, gets its members' forward pass); and the
  validation curve and best epoch.
A member whose loss turns non-finite is dropped at that step with the error the lone fit would
raise; the others redo the step without it (BatchNorm statistics restored), so one diverging
member cannot change, let alone poison, the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.errors import ConfigError
from benchmark.heads.registry import HParams, as_int, get_head
from benchmark.heads.robust import StackedRowLoss
from benchmark.probe.data import PreparedData
from benchmark.probe.stacked import StackedAdamW, StackedHeads, members_per_batch
from benchmark.probe.train import TrainedHead, batch_plan, diverged, head_loss, init_head, needs_validation


class _Losses:
    """Each member's loss, from its head's declaration (``HeadSpec.loss`` / ``stacked_loss``).

    Cross-entropy is computed for the whole batch in one call; a member whose head declares no
    loss trains with it. The members of a head with a stacked loss get it for all of them at
    once (handed their cross-entropy: NMTune adds its weighted regularisers to it); the members
    of a head with only a per-member loss get it one member at a time.
    """

    def __init__(self, hps: Sequence[HParams], device: torch.device) -> None:
        self.set(hps, device)

    def set(self, hps: Sequence[HParams], device: torch.device) -> None:
        self.hps = list(hps)
        self.rows = StackedRowLoss(hps)  # each member's task loss: cross-entropy unless it chose GCE / SCE
        by_head: dict[str, list[int]] = {}
        for i, hp in enumerate(hps):
            head = get_head(hp.head)
            if head.loss or head.stacked_loss:
                by_head.setdefault(hp.head, []).append(i)
        self.groups: list[tuple[torch.Tensor, Any, list[Any]]] = []
        for method, members in by_head.items():
            head = get_head(method)
            idx = torch.tensor(members, dtype=torch.long, device=device)
            if head.stacked_loss:
                self.groups.append((idx, head.resolve("stacked_loss")([hps[i] for i in members], device), []))
            else:
                self.groups.append((idx, None, [head_loss(hps[i]) for i in members]))

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, z: torch.Tensor, f: torch.Tensor, heads: StackedHeads | None = None
    ) -> torch.Tensor:
        g, b, k = logits.shape
        if self.rows.plain:
            ce = F.cross_entropy(logits.reshape(g * b, k), y.reshape(-1), reduction="none").view(g, b).mean(1)
        else:
            ce = self.rows(logits, y).mean(1)  # the members' task losses (GCE / SCE where chosen)
        total = ce
        for idx, stacked, alone in self.groups:
            if stacked is not None:
                extra = _forward_of(heads, idx) if getattr(stacked, "needs_forward", False) else {}
                own = stacked(logits[idx], y[idx], z[idx], f[idx], ce[idx], **extra)
            else:
                own = torch.stack(
                    [
                        fn(logits[i], y[i], z[i], f[i], **(_one_forward(heads, i) if _needs(fn) else {}))[0]
                        for fn, i in zip(alone, idx.tolist(), strict=True)
                    ]
                )
            total = total.index_copy(0, idx, own)
        return total


def _needs(fn: Any) -> bool:
    return bool(getattr(fn, "needs_forward", False))


def _forward_of(heads: StackedHeads | None, idx: torch.Tensor) -> dict[str, Any]:
    """``forward=``: the members at ``idx`` evaluated in training mode on other inputs (G' x B x D),
    for a loss that declares ``needs_forward`` (LGM's perturbed features)."""
    if heads is None:
        raise ConfigError("this head's loss evaluates the head itself: pass the stacked heads to the loss")
    sub = heads.members(idx)
    return {"forward": lambda x: sub.forward(x, training=True)}


def _one_forward(heads: StackedHeads | None, i: int) -> dict[str, Any]:
    """``forward=`` for one member's own loss: B x D in, its (logits, z) out."""
    if heads is None:
        raise ConfigError("this head's loss evaluates the head itself: pass the stacked heads to the loss")
    sub = heads.members(torch.tensor([i], dtype=torch.long, device=next(iter(heads.params.values())).device))

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, z = sub.forward(x.unsqueeze(0), training=True)
        return logits[0], z[0]

    return {"forward": forward}


def _raised(err: Exception) -> Exception:
    """``err`` with a traceback of where the batch detected it (it is reported, not raised)."""
    try:
        raise err
    except Exception as caught:  # noqa: BLE001
        return caught


def _accuracy(logits: torch.Tensor, y: torch.Tensor, subset: torch.Tensor | None) -> torch.Tensor:
    pred = subset[logits[:, :, subset].argmax(2)] if subset is not None else logits.argmax(2)
    return (pred == y.unsqueeze(0)).double().mean(1)


def fit_gradient_heads(data: PreparedData, requests: Sequence[Any]) -> list[TrainedHead | Exception]:
    """Train every request (same ``HParams.batch_key`` and rows) as one batch; one result per request.

    Results are ``TrainedHead`` or the exception that member's lone fit would raise.
    """
    if not requests:
        return []
    hps = [r.hparams for r in requests]
    if len({hp.batch_key() for hp in hps}) != 1:
        raise ConfigError("fit_gradient_heads needs requests with one HParams.batch_key(); group them first")
    rows = requests[0].rows
    x, y = data.train_x, data.train_y
    if rows is not None:
        r = torch.as_tensor(rows, dtype=torch.long, device=data.device)
        x, y = x[r], y[r]
    n, dim = x.shape
    hp0 = hps[0]
    for hp in hps:
        needs_validation(hp, data)
    seeds = [as_int("seed", r.seed, 0) for r in requests]
    modules = [init_head(hp, dim, data.num_classes, s, data.device) for hp, s in zip(hps, seeds, strict=True)]
    chunk = members_per_batch(modules[0], min(hp0.batch_size, n))
    out: list[TrainedHead | Exception] = []
    for start in range(0, len(requests), chunk):
        sl = slice(start, start + chunk)
        out += _train_batch(data, x, y, hps[sl], seeds[sl], modules[sl])
    return out


def _train_batch(
    data: PreparedData, x: torch.Tensor, y: torch.Tensor, hps: list[HParams], seeds: list[int], modules: list[nn.Module]
) -> list[TrainedHead | Exception]:
    n = x.shape[0]
    hp0 = hps[0]
    bs, steps = batch_plan(hp0.batch_size, n)
    heads = StackedHeads(modules)
    opt = StackedAdamW(heads, [h.lr for h in hps], [h.weight_decay for h in hps], hp0.epochs * steps)
    losses = _Losses(hps, data.device)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    alive = list(range(len(hps)))  # original positions of the members still training
    errors: dict[int, Exception] = {}
    epoch_losses: list[list[float]] = [[] for _ in hps]
    val_curves: list[list[float]] = [[] for _ in hps]
    selection = data.selection_set()
    subset = data.class_subsets.get(cast(str, data.selection)) if selection is not None else None
    best_val = hp0.epoch_selection == "best_val"
    best_state: dict[str, torch.Tensor] | None = None
    best_acc = torch.full((len(hps),), -1.0, dtype=torch.float64)
    best_epoch = [hp0.epochs - 1] * len(hps)

    def drop(dead: list[int], epoch: int, step: int) -> torch.Tensor:
        """Remove members (positions among the alive) and return the positions kept."""
        nonlocal best_state, best_acc
        for pos in dead:
            errors[alive[pos]] = _raised(diverged(hps[alive[pos]], epoch, step, x))
        keep = torch.tensor([i for i in range(len(alive)) if i not in set(dead)], dtype=torch.long)
        for pos in sorted(dead, reverse=True):
            del alive[pos]
            del gens[pos]
        heads.keep(keep)
        opt.keep(keep)
        losses.set([hps[i] for i in alive], data.device)
        if best_state is not None:
            best_state = {k: v[keep] for k, v in best_state.items()}
        best_acc = best_acc[keep]
        return keep

    for epoch in range(hp0.epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(x.device) if alive else None
        total = torch.zeros(len(alive), dtype=torch.float64, device=x.device)
        for step in range(steps):
            if not alive:
                break
            assert perms is not None  # alive now, so alive at the epoch's start, when perms was drawn
            idx = perms[:, step * bs : (step + 1) * bs]
            saved = {k: b.clone() for k, b in heads.buffers.items()}
            while True:  # redo the step without any member whose loss is not finite
                xb, yb = x[idx], y[idx]
                logits, z = heads.forward(xb, training=True)
                bad = ~(torch.isfinite(logits).flatten(1).all(1) & torch.isfinite(z).flatten(1).all(1))
                if not bool(bad.any()):
                    loss = losses(logits, yb, z, xb, heads)
                    bad = ~torch.isfinite(loss)
                if not bool(bad.any()):
                    break
                keep = drop(torch.nonzero(bad).squeeze(1).tolist(), epoch, step)
                idx, perms, total = idx[keep], perms[keep], total[keep]
                saved = {k: v[keep] for k, v in saved.items()}
                heads.restore_buffers(saved)
                if not alive:
                    break
            if not alive:
                break
            loss.sum().backward()
            opt.step()
            total += loss.detach()
        if not alive:
            break
        for pos, member in enumerate(alive):
            epoch_losses[member].append(float(total[pos]) / steps)
        heads.refresh_batchnorm(x)  # as train_head: evaluate with the training rows' statistics
        if selection is not None:
            with torch.no_grad():
                vx, vy = selection
                logits, _ = heads.forward(vx.unsqueeze(0).expand(len(alive), -1, -1), training=False)
                acc = _accuracy(logits, vy, subset).cpu()
            for pos, member in enumerate(alive):
                val_curves[member].append(float(acc[pos]))
            if best_val:
                better = acc >= best_acc
                now = heads.snapshot()
                if best_state is None:
                    best_state = now
                else:
                    for k, v in now.items():
                        mask = better.to(v.device).view(-1, *([1] * (v.ndim - 1)))
                        best_state[k] = torch.where(mask, v, best_state[k])
                best_acc = torch.where(better, acc, best_acc)
                for pos, member in enumerate(alive):
                    if bool(better[pos]):
                        best_epoch[member] = epoch
    final = heads.snapshot()
    results: list[TrainedHead | Exception] = []
    for member, hp in enumerate(hps):
        if member in errors:
            results.append(errors[member])
            continue
        pos = alive.index(member)
        if not all(bool(torch.isfinite(final[n][pos]).all()) for n in heads.params):
            results.append(_raised(diverged(hp, hp.epochs - 1, steps - 1, x)))
            continue
        chosen = best_epoch[member] if best_val and best_state is not None else hp.epochs - 1
        state = best_state if best_val and best_state is not None else final
        module = init_head(hp, x.shape[1], data.num_classes, 0, data.device)
        module.load_state_dict(heads.member_state(state, pos, (chosen + 1) * steps))
        curves = {
            "train_loss": epoch_losses[member],
            **({"val_accuracy": val_curves[member]} if val_curves[member] else {}),
        }
        results.append(
            TrainedHead(
                module.eval(),
                hp,
                epoch_losses[member][chosen],
                hp.epochs,
                int(x.shape[0]),
                curves=curves,
                summary={"best_epoch": float(chosen + 1)},
            )
        )
    return results
