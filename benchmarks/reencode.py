"""The baseline of measurement 1: a head trained the way the paper's reference code does it.

The reference code keeps the backbone in the training loop, so every epoch runs the frozen
backbone over every training image again (transform + encode, no grad) before the head's
optimisation steps. Everything else is ``benchmark.probe.train_head``'s recipe step for step:
the same seeded head initialisation, AdamW, per-step cosine schedule, mini-batch order from the
same seeded generator, the same loss (NMTune regularisers included) and the same evaluation,
so the two sides differ only in where the features come from.

The images are encoded here directly (``backbone.transform`` per image, ``backbone.encode`` per
batch), not through ``benchmark.features``: the benchmark compares the cache's features with
this independent encoding, so a cache that stored the wrong features would be caught.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmark.probe import PreparedData, TrainedHead, evaluate_head, resolve_hparams, training_setup
from benchmark.probe.train import train_epoch


def encode_split(backbone: Any, split: Any, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the backbone over a split, in order: transform each image, encode each batch."""
    xs = []
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            images = [backbone.transform(split[i][0]) for i in range(start, min(start + batch_size, len(split)))]
            xs.append(backbone.encode(torch.stack(images)).float())
    return torch.cat(xs), torch.as_tensor(split.labels, dtype=torch.int64)


def fit_reencoding(
    backbone: Any,
    train_split: Any,
    test_split: Any,
    method: str,
    *,
    num_classes: int,
    seed: int = 0,
    encode_batch: int = 256,
    **hparams: Any,
) -> dict[str, Any]:
    """Train ``method`` re-encoding the training images every epoch; score the test split.

    Returns ``{"train_loss", "eval": {"test": {...}}, "train_x"}`` (``train_x``: the features of
    the last epoch, to check they equal the cached ones).
    """
    hp = resolve_hparams(method, **hparams)
    if hp.epoch_selection == "best_val":
        raise ValueError("the re-encoding baseline trains with epoch_selection 'last' (it holds no validation set)")
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
