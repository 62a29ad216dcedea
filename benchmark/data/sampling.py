"""Stratified, seeded subsets of a split: validation carving and few-shot subsampling.

Both work on ``split.labels`` only, so no image is decoded. Model selection must never look at
the test set, so ``train_val_split`` carves the validation data out of the training split; the
few-shot curves of the paper (2 %, 5 %, 10 % ... of the training data) need subsets that are
nested (the 2 % subset lies inside the 5 % one for the same seed), so that a curve's points differ
only by the added data and not by a fresh draw.
"""

from __future__ import annotations

import math

import numpy as np

from benchmark.data.base import ImageSplit
from benchmark.errors import ConfigError


def _round_half_up(x: float) -> int:
    # Python's round() rounds half to even, which makes per-class counts depend on parity.
    return int(math.floor(x + 0.5))


def class_orders(labels: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    """For every class, its item indices in a seeded random order.

    The order of a class depends only on ``seed`` and the label vector, never on how many items
    are then taken: taking a prefix of each order is what makes subsets nested.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    orders: dict[int, np.ndarray] = {}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        orders[int(c)] = idx[rng.permutation(len(idx))]
    return orders


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split item indices into (keep, holdout), holding out ``fraction`` of every class.

    Per class the holdout count is round-half-up(fraction * n_c), capped at n_c - 1 so every class
    keeps at least one item. Both index arrays are sorted, disjoint and cover all items.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"holdout fraction must lie in (0, 1), got {fraction!r}")
    keep, hold = [], []
    for _, order in sorted(class_orders(labels, seed).items()):
        n_hold = min(_round_half_up(fraction * len(order)), len(order) - 1)
        hold.append(order[:n_hold])
        keep.append(order[n_hold:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(hold))


def train_val_split(split: ImageSplit, val_fraction: float, seed: int = 0) -> tuple[ImageSplit, ImageSplit]:
    """(train, val) views of ``split``, stratified by class, disjoint and deterministic.

    Every class keeps at least one item in train (a class with a single item contributes none to
    val). The val view is named split "val"; both fingerprints hash their indices, so features
    cached for one never serve the other.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(
            f"val_fraction must lie in (0, 1), got {val_fraction!r}: it is the share of the "
            f"training split of {split.dataset!r} held out for model selection (e.g. 0.1)"
        )
    keep, hold = stratified_holdout(split.labels, val_fraction, seed)
    return split.subset(keep), split.subset(hold, split="val")


def few_shot_indices(
    labels: np.ndarray, fraction: float | None = None, per_class: int | None = None, seed: int = 0
) -> np.ndarray:
    """Sorted positions of a stratified subset: ``fraction`` of each class or ``per_class`` items.

    Per class, round-half-up(fraction * n_c) items but at least one, or min(per_class, n_c).
    Nested for a given seed: a smaller fraction (or per_class) yields a subset of a larger one.
    """
    if (fraction is None) == (per_class is None):
        raise ConfigError("few_shot needs exactly one of fraction= (in (0, 1]) or per_class= (>= 1)")
    orders = class_orders(labels, seed)
    if fraction is not None:
        if isinstance(fraction, bool) or not (isinstance(fraction, (int, float)) and 0.0 < float(fraction) <= 1.0):
            raise ConfigError(f"few_shot fraction must lie in (0, 1], got {fraction!r} (e.g. 0.02 for 2 %)")
        counts = {c: max(1, _round_half_up(float(fraction) * len(o))) for c, o in orders.items()}
    else:
        if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
            raise ConfigError(f"few_shot per_class must be an integer >= 1, got {per_class!r}")
        counts = {c: min(int(per_class), len(o)) for c, o in orders.items()}
    if not orders:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate([o[: counts[c]] for c, o in sorted(orders.items())])).astype(np.int64)


def few_shot(
    split: ImageSplit, fraction: float | None = None, per_class: int | None = None, seed: int = 0
) -> ImageSplit:
    """A stratified view of ``split`` chosen by :func:`few_shot_indices` (items keep their order).

    When nothing is dropped the split itself is returned, so its cached features are reused.
    """
    chosen = few_shot_indices(split.labels, fraction=fraction, per_class=per_class, seed=seed)
    if len(chosen) == len(split):
        return split
    return split.subset(chosen)
