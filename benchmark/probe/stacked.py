"""Heads of one architecture stacked along a leading member axis, and their AdamW.

``StackedHeads`` holds G members' weights as (G, ...) tensors so one ``torch.baddbmm`` steps them
all; ``StackedAdamW`` is ``torch.optim.AdamW``'s single-tensor arithmetic and a cosine schedule
per member. Kept apart from the batched training loop (``batched.py``) because these are the
parts whose arithmetic must equal a lone fit's, and are tested for it on their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.heads.modules import LinearHead, ResidualMLPHead
from benchmark.probe.bnstats import CHUNK, CHUNK_BYTES, moments

BETAS, EPS = (0.9, 0.999), 1e-8
BN_MOMENTUM, BN_EPS = 0.1, 1e-5
#: Upper bound on the bytes of one batched computation (weights, gradients, AdamW state, best
#: weights); larger groups are split into several batches.
MAX_BATCH_BYTES = 1 << 30


def supports(module: nn.Module) -> bool:
    """Architectures this engine can stack (others are fitted one at a time)."""
    if isinstance(module, LinearHead):
        return True
    return isinstance(module, ResidualMLPHead) and all(
        isinstance(m, (nn.Linear, nn.BatchNorm1d, nn.ReLU)) for m in module.mlp
    )


def members_per_batch(template: nn.Module, batch_rows: int) -> int:
    """How many members of this architecture fit in :data:`MAX_BATCH_BYTES`."""
    params = sum(p.numel() for p in template.parameters())
    width = max((m.out_features for m in template.modules() if isinstance(m, nn.Linear)), default=1)
    per_member = 4 * (5 * params + 8 * batch_rows * width)
    return max(1, MAX_BATCH_BYTES // per_member)


class StackedHeads:
    """The weights of G members of one architecture, stacked on a leading axis."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        template = members[0]
        self.template = template
        states = [m.state_dict() for m in members]
        self.params = {
            n: torch.stack([s[n] for s in states]).detach().requires_grad_() for n, _ in template.named_parameters()
        }
        self.buffers = {
            n: torch.stack([s[n] for s in states]).clone()
            for n, _ in template.named_buffers()
            if not n.endswith("num_batches_tracked")
        }
        self.layers = list(template.mlp) if isinstance(template, ResidualMLPHead) else []

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def keep(self, idx: torch.Tensor) -> None:
        """Drop every member not in ``idx`` (positions)."""
        self.params = {n: p.detach()[idx].requires_grad_() for n, p in self.params.items()}
        self.buffers = {n: b[idx] for n, b in self.buffers.items()}

    def members(self, idx: torch.Tensor) -> StackedHeads:
        """The members at ``idx`` as a stacked head of their own, its weights indexed from these (so
        gradients flow back here) and its BatchNorm buffers copies (refreshed each epoch anyway)."""
        out = object.__new__(StackedHeads)
        out.template, out.layers = self.template, self.layers
        out.params = {n: p[idx] for n, p in self.params.items()}
        out.buffers = {n: b[idx].clone() for n, b in self.buffers.items()}
        return out

    def forward(self, x: torch.Tensor, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: (G, B, D) -> logits (G, B, K) and z (G, B, D)."""
        p = self.params
        h = self.hidden(x, len(self.layers), training)
        z = p["scale"].unsqueeze(1) * h + x if self.layers else x
        logits = torch.baddbmm(p["classifier.bias"].unsqueeze(1), z, p["classifier.weight"].transpose(1, 2))
        return logits, z

    @torch.no_grad()
    def refresh_batchnorm(self, x: torch.Tensor, chunk: int = CHUNK) -> None:
        """Every member's BatchNorm statistics set to those of the training rows ``x`` (N, D), layer
        by layer, as ``probe.bnstats.refresh_module`` does for one head."""
        n = x.shape[0]
        width = max((m.num_features for m in self.layers if isinstance(m, nn.BatchNorm1d)), default=1)
        chunk = max(1, min(chunk, CHUNK_BYTES // (4 * self.size * width)))
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, nn.BatchNorm1d):
                continue

            def inputs(i: int = i):
                for start in range(0, n, chunk):
                    part = x[start : start + chunk]
                    yield self.hidden(part.unsqueeze(0).expand(self.size, -1, -1), i, training=False)

            mean, var = moments(inputs, n)
            rm, rv = self.buffers[f"mlp.{i}.running_mean"], self.buffers[f"mlp.{i}.running_var"]
            self.buffers[f"mlp.{i}.running_mean"] = mean.to(rm.dtype)
            self.buffers[f"mlp.{i}.running_var"] = var.to(rv.dtype)

    def hidden(self, x: torch.Tensor, upto: int, training: bool) -> torch.Tensor:
        """The residual branch's first ``upto`` layers applied to ``x`` (G, B, D)."""
        p = self.params
        h = x
        for i, layer in enumerate(self.layers[:upto]):
            if isinstance(layer, nn.Linear):
                h = torch.baddbmm(p[f"mlp.{i}.bias"].unsqueeze(1), h, p[f"mlp.{i}.weight"].transpose(1, 2))
            elif isinstance(layer, nn.BatchNorm1d):
                g, b, c = h.shape
                flat = h.transpose(0, 1).reshape(b, g * c)  # members' channels side by side
                out = F.batch_norm(
                    flat,
                    self.buffers[f"mlp.{i}.running_mean"].view(-1),
                    self.buffers[f"mlp.{i}.running_var"].view(-1),
                    p[f"mlp.{i}.weight"].reshape(-1),
                    p[f"mlp.{i}.bias"].reshape(-1),
                    training,
                    BN_MOMENTUM,
                    BN_EPS,
                )
                h = out.view(b, g, c).transpose(0, 1)
            else:
                h = torch.relu(h)
        return h

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {
            **{n: p.detach().clone() for n, p in self.params.items()},
            **{n: b.clone() for n, b in self.buffers.items()},
        }

    def restore_buffers(self, saved: dict[str, torch.Tensor], idx: torch.Tensor | None = None) -> None:
        for n in self.buffers:
            self.buffers[n] = saved[n].clone() if idx is None else saved[n][idx].clone()

    def member_state(self, state: dict[str, torch.Tensor], g: int, steps_trained: int) -> dict[str, torch.Tensor]:
        out = {n: t[g].detach().clone() for n, t in state.items()}
        for n, _ in self.template.named_buffers():
            if n.endswith("num_batches_tracked"):
                out[n] = torch.tensor(steps_trained, dtype=torch.long)
        return out


class StackedAdamW:
    """``torch.optim.AdamW`` (single-tensor path) and ``CosineAnnealingLR``, one state per member."""

    def __init__(self, heads: StackedHeads, lrs: Sequence[float], wds: Sequence[float], total_steps: int) -> None:
        self.heads = heads
        self.base = [float(v) for v in lrs]
        self.lrs = list(self.base)
        self.wds = [float(v) for v in wds]
        self.total = total_steps
        self.t = 0  # scheduler steps taken
        self.step_count = 0
        self.m = {n: torch.zeros_like(p) for n, p in heads.params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in heads.params.items()}

    def keep(self, idx: torch.Tensor) -> None:
        pos = idx.tolist()
        self.base, self.lrs, self.wds = ([seq[i] for i in pos] for seq in (self.base, self.lrs, self.wds))
        self.m = {n: t[idx] for n, t in self.m.items()}
        self.v = {n: t[idx] for n, t in self.v.items()}

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        bc1 = 1 - BETAS[0] ** float(self.step_count)
        bc2_sqrt = (1 - BETAS[1] ** float(self.step_count)) ** 0.5
        # The scalars AdamW computes in Python per head, cast to float32 as its kernels do.
        first = next(iter(self.heads.params.values()))
        both = torch.tensor(
            [[1 - lr * wd for lr, wd in zip(self.lrs, self.wds, strict=True)], [-(lr / bc1) for lr in self.lrs]],
            dtype=first.dtype,
            device=first.device,
        )
        for n, p in self.heads.params.items():
            shape = (-1, *([1] * (p.ndim - 1)))
            grad = cast(torch.Tensor, p.grad)  # set by the backward pass before every step
            p.mul_(both[0].view(shape))
            self.m[n].lerp_(grad, 1 - BETAS[0])
            self.v[n].mul_(BETAS[1]).addcmul_(grad, grad, value=1 - BETAS[1])
            denom = (self.v[n].sqrt() / bc2_sqrt).add_(EPS)
            p.add_(both[1].view(shape) * self.m[n] / denom)  # addcdiv's (value * m) / denom, per member
            p.grad = None
        self.t += 1
        t, total = self.t, self.total
        if (t - 1 - total) % (2 * total) == 0:
            self.lrs = [
                lr + base * (1 - math.cos(math.pi / total)) / 2 for lr, base in zip(self.lrs, self.base, strict=True)
            ]
        else:
            factor = (1 + math.cos(math.pi * t / total)) / (1 + math.cos(math.pi * (t - 1) / total))
            self.lrs = [factor * (lr - 0.0) + 0.0 for lr in self.lrs]
