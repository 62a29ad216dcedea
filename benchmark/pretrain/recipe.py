"""The training recipe a worker applies to one batch: preprocessing, model, schedule, losses and
the per-batch sums every epoch metric is made of, memorisation included.

Kept apart from the loop (``worker.py``) so that a plain PyTorch loop (the benchmarks' baseline)
trains with exactly the same arithmetic, and so that each metric is defined once:

- supervised sums: loss, images, agreement with the noisy label (``train_accuracy``), with the
  true label (``clean_accuracy``), and on the flipped samples alone, agreement with the noisy
  label (``noisy_fit``: memorised) and with the true one (``true_fit``: resisted), and the
  accuracy on the samples whose label was not flipped (``unflipped_accuracy``);
- CLIP sums: loss, images, top-1 image-to-text retrieval in the global batch (``train_accuracy``)
  and the normalised rank of each image's paired caption among the global batch's captions (0:
  first, 1: last, 0.5: chance) separately for matched pairs (``matched_rank``) and for the pairs
  whose caption was swapped (``mismatched_rank``: falls as the model memorises the wrong pairs).

Memorisation is measured on the training pass itself (augmented images, the model as it moves
through the epoch): it costs nothing, so it runs on every corpus size; an epoch's value is the
mean over its batches and so lags the end-of-epoch model by half an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from benchmark.backbones.base import SUITE_MEAN, SUITE_STD

# Order of the supervised and CLIP per-epoch sums (one float64 vector, all-reduced once), as
# each objective declares them (``objectives/``).
from benchmark.pretrain.objectives.clip import CLIP_SUMS  # noqa: F401 (re-exported)
from benchmark.pretrain.objectives.supervised import SUPERVISED_SUMS  # noqa: F401 (re-exported)

#: Normalisation of suite-trained models (the backbones' SUITE_MEAN/STD: grey repeated to RGB,
#: [0, 1] -> [-1, 1]); stored in model.pt, so the ``nmlbench`` family extracts features with
#: exactly what training used.
PRETRAIN_MEAN: tuple[float, float, float] = SUITE_MEAN
PRETRAIN_STD: tuple[float, float, float] = SUITE_STD


def preprocess(images: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8 [B, C, H, W]`` -> normalised ``float32 [B, 3, S, S]`` on the images' device.

    Matches ``benchmark.backbones.base.make_transform`` (antialiased bilinear resize of the
    uint8 image, scale to [0, 1], normalise), grey repeated to RGB as ``ImageSplit`` does.
    Images already at ``image_size`` (decoded by the loader) are only scaled and normalised.
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
    """The job's freshly initialised model (seeded) and its tokenizer: the objective's."""
    from benchmark.pretrain.objectives import get_objective

    return get_objective(cfg["objective"]).build_model(cfg)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (per step).

    With ``warmup == 0`` this is ``CosineAnnealingLR(T_max=total)``, the embedded recipe.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def make_optimizer(
    model: torch.nn.Module, cfg: dict[str, Any], steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and the warm-up + cosine schedule over ``epochs * steps_per_epoch`` optimiser steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    total = max(1, int(cfg["epochs"]) * steps_per_epoch)
    warmup = int(round(float(cfg.get("warmup_epochs", 0.0)) * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup))
    return opt, sched


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the recipe asks for it (``auto``: on CUDA only), else None (float32)."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    return None


def supervised_step(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, flipped: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, sums in ``SUPERVISED_SUMS`` order) of one batch; sums carry no gradient."""
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    with torch.no_grad():
        pred = logits.argmax(1)
        fit, true = pred == y, pred == clean
        f = flipped.to(torch.bool)
        sums = _stack(
            [
                loss.detach() * y.numel(),
                _count(y.numel(), y),
                fit.sum(),
                true.sum(),
                f.sum(),
                (fit & f).sum(),
                (true & f).sum(),
                (~f).sum(),
                (fit & ~f).sum(),
            ]
        )
    return loss, sums


def _count(n: int, like: torch.Tensor) -> torch.Tensor:
    # torch.full launches a fill on the device; torch.tensor(n, device=cuda) would copy from the
    # host and wait for the queued kernels every step.
    return torch.full((), float(n), dtype=torch.float64, device=like.device)


def _stack(values: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([v.double() for v in values])


def clip_step(out: Any, mismatched: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over the global batch (features gathered with gradients) and the sums
    in ``CLIP_SUMS`` order (retrieval and paired-caption ranks of this rank's images)."""
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
    b = img.shape[0]
    target = torch.arange(b, device=img.device) + rank * b
    logits_i = scale * img @ all_txt.T
    logits_t = scale * txt @ all_img.T
    loss = 0.5 * (F.cross_entropy(logits_i.float(), target) + F.cross_entropy(logits_t.float(), target))
    with torch.no_grad():
        li = logits_i.float()
        own = li.gather(1, target[:, None])
        # Normalised rank of the paired caption: 0 = ranked first, 1 = last, 0.5 = chance.
        rel = (li > own).sum(1).double() / max(1, li.shape[1] - 1)
        m = mismatched.to(torch.bool)
        # Masks multiply instead of indexing: a boolean index would wait for the device.
        sums = _stack(
            [
                loss.detach() * b,
                _count(b, img),
                (li.argmax(1) == target).sum(),
                (~m).sum(),
                (rel * ~m).sum(),
                m.sum(),
                (rel * m).sum(),
            ]
        )
    return loss, sums


def epoch_metrics(objective: str, sums: Sequence[float]) -> dict[str, float]:
    """The per-epoch scalars from the all-reduced sums (memorisation ones only where defined:
    no flipped or mismatched sample, no ``noisy_fit`` / ``mismatched_rank``): the objective's."""
    from benchmark.pretrain.objectives import get_objective

    return get_objective(objective).epoch_metrics(sums)


def clamp_logit_scale(model: torch.nn.Module) -> None:
    """The usual CLIP clamp: temperature at most 100."""
    with torch.no_grad():
        scale: Any = unwrap(model).logit_scale  # a Parameter (torch types it Tensor | Module)
        scale.clamp_(0, math.log(100.0))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    inner: torch.nn.Module = getattr(model, "module", model)
    return inner
