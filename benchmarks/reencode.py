"""The baseline of measurement 1: a head trained the way the paper's reference code does it.

The reference code keeps the backbone in the training loop, so every epoch runs the frozen
backbone over every training image again (transform + encode, no grad) before the head's
optimisation steps. Everything else is ``benchmark.probe.train_head``'s recipe step for step:
the same seeded head initialisation, AdamW, per-step cosine schedule, mini-batch order from the
same seeded generator, the same loss (NMTune regularisers included) and the same evaluation,
so the two sides differ only in where the features come from.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmark.features import extract_features
from benchmark.probe import PreparedData, TrainedHead, evaluate_head, resolve_hparams, training_setup
from benchmark.probe.train import train_epoch


def encode_split(backbone: Any, split: Any, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the backbone over a split, in order (what a DataLoader epoch does)."""
    f = extract_features(backbone, split, batch_size=batch_size, device="cpu")
    return f.x, f.y


def fit_reencoding(backbone: Any, train_split: Any, test_split: Any, method: str, *,
                   num_classes: int, seed: int = 0, encode_batch: int = 256,
                   **hparams: Any) -> dict[str, Any]:
    """Train ``method`` re-encoding the training images every epoch; score the test split.

    Returns ``{"train_loss", "eval": {"test": {...}}, "train_x"}`` (``train_x``: the features of
    the last epoch, to check they equal the cached ones).
    """
    hp = resolve_hparams(method, **hparams)
    y = torch.as_tensor(train_split.labels, dtype=torch.int64)
    n = int(y.shape[0])
    head, loss_fn, opt, sched, gen, bs, steps = training_setup(hp, int(backbone.feature_dim), num_classes, n, seed)
    x = torch.empty(0)
    epoch_loss = float("nan")
    for epoch in range(hp.epochs):
        x, _y = encode_split(backbone, train_split, encode_batch)  # the backbone, every epoch
        epoch_loss = train_epoch(head, loss_fn, opt, sched, x, y, gen, bs, steps, hp, epoch)
    head.eval()
    test_x, test_y = encode_split(backbone, test_split, encode_batch)  # once, at evaluation
    data = PreparedData(x, y, {"test": (test_x, test_y)}, num_classes, {}, torch.device("cpu"), {})
    trained = TrainedHead(head, hp, epoch_loss, hp.epochs)
    return {"train_loss": epoch_loss, "eval": evaluate_head(trained, data), "train_x": x}
