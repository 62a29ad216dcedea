"""Full fine-tuning of a torch backbone with a linear head: the ``finetune`` head's science.

The frozen-feature heads (``benchmark.probe``) never change the backbone; this trains a copy of
the backbone's network and a linear head end to end on the task's images, for a small fixed
budget (``heads/finetune.py``), so a leaderboard can show what having the weights buys. The
loss is cross-entropy, plus NMTune's three regularisers (``heads.nmtune.nmtune_regularisers``)
on the backbone's features when ``lam`` > 0: ``z`` is the fine-tuned feature of an image and ``f``
the frozen pre-trained feature of the same image (computed once, before training), so the
consistency term keeps the tuned features near the pre-trained ones.

The epoch kept is chosen on the selection set (validation accuracy; ``epoch_selection: last``
keeps the last): the test sets are only scored, after training. The result has the shape of a
probe fit (``benchmark.probe``): ``head``, ``hparams``, ``train_loss``, ``epochs_run``,
``train_rows``, ``curves`` (per epoch ``train_loss`` and ``val_accuracy``), ``summary``
(``best_epoch``, ``train_accuracy``, ``chance``, ``near_chance``) and ``eval`` (every registered
metric per set: ``z`` is the fine-tuned feature, ``f`` the frozen one), so records, MLflow and the
leaderboard treat it as any head. Same seed, same device and thread count: the same bits.

Imports neither Ray nor MLflow.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.errors import ConfigError, TrainingDiverged
from benchmark.heads.finetune import weightless_message
from benchmark.heads.hparams import HParams
from benchmark.heads.nmtune import nmtune_regularisers, nmtune_weights
from benchmark.metrics import feature_spectrum, metrics, score_set
from benchmark.probe.health import chance_level, is_near_chance

#: Images per forward pass when the network only scores (no gradients).
EVAL_CHUNK = 256
Split = tuple[torch.Tensor, torch.Tensor]  # (transformed images N x C x H x W, labels N)


def refuse_without_weights(backbone: Any, head: str = "finetune") -> None:
    """Raise ``ConfigError`` unless ``backbone`` has a torch network to train (``features_of``)."""
    if not (isinstance(getattr(backbone, "module", None), nn.Module) and hasattr(backbone, "features_of")):
        raise ConfigError(weightless_message(head, str(getattr(backbone, "name", backbone))))


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch in mini-batches; a last batch of one row joins the one before it (the
    regularisers and BatchNorm need two rows)."""
    perm = torch.randperm(n, generator=gen)
    out = list(perm.split(batch_size))
    if len(out) > 1 and len(out[-1]) < 2:
        out[-2] = torch.cat([out[-2], out.pop()])
    return out


@torch.no_grad()
def _encode(fn: Any, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.cat([fn(x[i : i + EVAL_CHUNK].to(device)) for i in range(0, x.shape[0], EVAL_CHUNK)])


def _predict(logits: torch.Tensor, subset: torch.Tensor | None) -> torch.Tensor:
    return subset[logits[:, subset].argmax(dim=1)] if subset is not None else logits.argmax(dim=1)


def finetune_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    f: torch.Tensor | None,
    *,
    lam: float,
    weights: Mapping[str, Any],
) -> torch.Tensor:
    """Cross-entropy, plus ``lam`` x NMTune's weighted regularisers of the tuned features ``z``
    against the pre-trained ``f`` of the same images when ``lam`` > 0 (``weights``: a preset's)."""
    loss = F.cross_entropy(logits, y)
    if lam <= 0:
        return loss
    if f is None:
        raise ConfigError("lam > 0 needs the pre-trained features f of the batch")
    reg = nmtune_regularisers(z, f, svd_topk=int(weights["svd_topk"]))
    return loss + lam * (weights["w_mse"] * reg["mse"] + weights["w_cov"] * reg["cov"] + weights["w_svd"] * reg["svd"])


@torch.no_grad()
def precise_batchnorm(model: _Tuned, x: torch.Tensor, dev: torch.device) -> None:
    """Set the running statistics of every BatchNorm of the tuned network to those of ``x``.

    Why: after a short budget the running averages (momentum 0.1 a step, over weights that kept
    changing) are not the statistics of the network that is evaluated; evaluation mode then
    normalises by stale values and the tuned model scores far below what it learnt. Measured on
    MobileNetV2 at 64 px, sklearn-digits (399 training rows), the default 2 epochs: training
    accuracy 0.51 and test accuracy 0.47 with the running averages, 0.94 and 0.85 with this pass.
    One forward pass over the training images with a cumulative average (``momentum=None``) gives
    the statistics of the evaluated weights, as ``probe.bnstats`` does for the heads' BatchNorm.
    Dropout stays off during the pass.
    """
    layers = [m for m in model.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    was = model.training
    model.eval()
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i in range(0, x.shape[0], EVAL_CHUNK):
        model(x[i : i + EVAL_CHUNK].to(dev))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.train(was)


class _Tuned(nn.Module):
    """The trainable copy of the backbone's network and the linear head on its features."""

    def __init__(self, backbone: Any, num_classes: int) -> None:
        super().__init__()
        self.net = copy.deepcopy(backbone.module)
        self.head = nn.Linear(int(backbone.feature_dim), num_classes)
        self._features_of = backbone.features_of

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._features_of(self.net, x)
        return self.head(z), z


def finetune(
    backbone: Any,
    train: Split,
    sets: Mapping[str, Split],
    hparams: HParams,
    *,
    seed: int = 0,
    num_classes: int | None = None,
    selection: str | None = "val",
    class_subsets: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Fine-tune ``backbone`` (a ``TorchBackbone``; left unchanged) with a linear head; score ``sets``.

    ``train``/``sets``: transformed images (``backbone.transform``) and labels; ``selection`` names
    the set in ``sets`` whose accuracy picks the epoch (None: the last epoch). See the module doc.
    """
    refuse_without_weights(backbone, hparams.head)
    if selection is not None and selection not in sets:
        raise ConfigError(f"selection set {selection!r} is not among the evaluation sets {sorted(sets)}")
    x, y = train
    if x.shape[0] < 2:
        raise ConfigError(f"fine-tuning needs at least 2 training images, got {x.shape[0]}")
    dev = torch.device(device) if device is not None else backbone.device
    k = int(num_classes if num_classes is not None else int(y.max()) + 1)
    subsets = {
        n: torch.as_tensor(np.asarray(v), dtype=torch.long, device=dev) for n, v in (class_subsets or {}).items()
    }
    epochs, bs, lam = int(hparams.epochs), int(hparams.batch_size), float(hparams.lam)
    weights = nmtune_weights(str(hparams.preset)) if lam > 0 else {}
    frozen = backbone.to(dev)
    f0 = _encode(frozen.encode, x, dev).clone() if lam > 0 else None  # clone: out of inference mode
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(seed))
        model = _Tuned(frozen, k).to(dev)
        gen = torch.Generator().manual_seed(int(seed))
        tune_net = float(hparams.backbone_lr) > 0
        model.net.requires_grad_(tune_net)
        groups = [{"params": list(model.head.parameters()), "lr": float(hparams.lr)}]
        if tune_net:
            groups.append(
                {"params": list(model.net.parameters()), "lr": float(hparams.lr) * float(hparams.backbone_lr)}
            )
        opt = torch.optim.AdamW(groups, weight_decay=float(hparams.weight_decay))
        steps = epochs * len(_batches(x.shape[0], bs, torch.Generator().manual_seed(0)))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
        curves: dict[str, list[float]] = {"train_loss": [], "val_accuracy": []}
        best: tuple[float, int, dict[str, torch.Tensor], float] | None = None
        for epoch in range(epochs):
            model.train()
            model.net.train(tune_net)
            total, seen = 0.0, 0
            for idx in _batches(x.shape[0], bs, gen):
                logits, z = model(x[idx].to(dev))
                yb = y[idx].to(dev)
                f = f0[idx.to(dev)] if f0 is not None else None
                loss = finetune_loss(logits, yb, z, f, lam=lam, weights=weights)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"fine-tuning loss became {float(loss)} in epoch {epoch + 1} with {dict(hparams)}; "
                        "lower lr or backbone_lr"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
            curves["train_loss"].append(total / seen)
            if tune_net:
                precise_batchnorm(model, x, dev)
            val = _accuracy(model, sets[selection], subsets.get(selection), dev) if selection is not None else math.nan
            curves["val_accuracy"].append(val)
            last = epoch == epochs - 1
            better = best is None or (hparams.epoch_selection == "best_val" and selection is not None and val > best[0])
            if better or (last and (hparams.epoch_selection == "last" or selection is None)):
                state = {n: t.detach().clone() for n, t in model.state_dict().items()}
                best = (val, epoch, state, total / seen)
    assert best is not None  # epochs >= 1
    model.load_state_dict(best[2])
    model.eval()
    train_acc = _accuracy(model, train, None, dev)
    val_acc = curves["val_accuracy"][best[1]] if selection is not None else None
    chance = chance_level(sets[selection][1] if selection is not None else y, k)
    return {
        "head": hparams.head,
        "hparams": hparams.as_dict(),
        "train_loss": best[3],
        "epochs_run": epochs,
        "train_rows": int(x.shape[0]),
        "curves": curves,
        "summary": {
            "best_epoch": best[1] + 1,
            "train_accuracy": train_acc,
            "chance": chance,
            "near_chance": float(is_near_chance(val_acc, train_acc, chance)),
        },
        "eval": {name: _score(model, frozen, split, subsets.get(name), dev) for name, split in sets.items()},
    }


@torch.no_grad()
def _accuracy(model: _Tuned, split: Split, subset: torch.Tensor | None, dev: torch.device) -> float:
    was = model.training
    model.eval()
    x, y = split
    logits = _encode(lambda b: model(b)[0], x, dev)
    model.train(was)
    return float((_predict(logits, subset) == y.to(dev)).float().mean()) if len(y) else math.nan


@torch.no_grad()
def _score(
    model: _Tuned, frozen: Any, split: Split, subset: torch.Tensor | None, dev: torch.device
) -> dict[str, float]:
    """Every registered metric on one set: ``z`` the fine-tuned features, ``f`` the frozen ones."""
    x, y = split
    y = y.to(dev)
    pairs = [model(x[i : i + EVAL_CHUNK].to(dev)) for i in range(0, x.shape[0], EVAL_CHUNK)]
    logits, z = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    pred = _predict(logits, subset)
    registered = metrics()
    f = _encode(frozen.encode, x, dev) if any(m.features == "f" for m in registered) else None
    f_spectrum = feature_spectrum(f) if f is not None else None
    return score_set(registered, y, pred, f=f, z=z, logits=logits, f_spectrum=f_spectrum)
