"""What every noise kind shares: its results, the exact-count rule, the input checks.

Why exact counts: generators that sample each label independently, or that flip
``floor(p * count)`` per cell of a noise matrix, miss the requested rate badly when there are many
classes (cleanlab: 3.88 % obtained for 20 % asked with 120 classes). Here exactly
``round(ratio * n_c)`` labels of every class ``c`` change (round half up), so the realised rate
is within ``K / (2N)`` of the request, and the empirical transition matrix actually applied is
returned with the labels so that a run can save and report it.

The kinds themselves are registered functions (``registry.py``): label flips in ``flips.py``
(:func:`exact_flips` draws the exact per-class counts every built-in flip kind uses) and caption
swaps in ``swap.py``.

Every draw uses ``numpy.random.Generator(PCG64(seed))``: the same seed gives identical results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import ConfigError

#: CIFAR-10 class-conditional map: truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_ASYMMETRIC_MAP: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


@dataclass
class NoiseResult:
    """Noisy labels and the record of how they were made.

    ``transition[i, j]`` is the empirical ``P(noisy = j | true = i)`` actually applied (counts
    divided by the class count); a class with no samples gets the identity row so that the matrix
    stays row-stochastic. ``realised_ratio`` is the fraction of changed labels among the samples
    eligible for noise: all samples, except for ``asymmetric`` where only the classes named in
    the class map are eligible (``flipped.mean()`` gives the fraction over all samples).
    """

    noisy_labels: np.ndarray
    flipped: np.ndarray
    realised_ratio: float
    transition: np.ndarray
    kind: str
    ratio: float
    seed: int
    class_map: dict[int, int] | None = field(default=None)

    @property
    def num_classes(self) -> int:
        return int(self.transition.shape[0])

    def to_npz(self, path: str | Path) -> None:
        """Save everything needed to reproduce and audit the noise (``np.savez_compressed``)."""
        cmap = np.array(sorted((self.class_map or {}).items()), dtype=np.int64).reshape(-1, 2)
        np.savez_compressed(
            path,
            noisy_labels=self.noisy_labels,
            flipped=self.flipped,
            realised_ratio=np.float64(self.realised_ratio),
            transition=self.transition,
            kind=np.str_(self.kind),
            ratio=np.float64(self.ratio),
            seed=np.int64(self.seed),
            class_map=cmap,
            has_class_map=np.bool_(self.class_map is not None),
        )

    @classmethod
    def from_npz(cls, path: str | Path) -> NoiseResult:
        """Load a result written by :meth:`to_npz`."""
        with np.load(path, allow_pickle=False) as z:
            cmap = {int(a): int(b) for a, b in z["class_map"]} if bool(z["has_class_map"]) else None
            return cls(
                noisy_labels=z["noisy_labels"].astype(np.int64),
                flipped=z["flipped"].astype(bool),
                realised_ratio=float(z["realised_ratio"]),
                transition=z["transition"].astype(np.float64),
                kind=str(z["kind"]),
                ratio=float(z["ratio"]),
                seed=int(z["seed"]),
                class_map=cmap,
            )


@dataclass
class CaptionSwapResult:
    """Captions after swapping; ``mismatched[i]`` is True where pair ``i`` got another text."""

    captions: list[str]
    mismatched: np.ndarray
    realised_ratio: float


def transition_matrix(true_labels: Any, noisy_labels: Any, num_classes: int) -> np.ndarray:
    """Empirical noise matrix ``T[i, j] = P(noisy = j | true = i)`` (float64 ``[K, K]``).

    Row ``i`` is the share of samples of true class ``i`` that carry label ``j`` after the
    noise: what was actually applied, not what was asked for, so reports show the real noise.
    A class with no samples gets the identity row, which keeps ``T`` row-stochastic. Used for
    label flips and for caption swaps (true = the image's class, noisy = the class named by the
    caption it ended up with).
    """
    k = int(num_classes)
    counts = np.zeros((k, k), dtype=np.float64)
    np.add.at(counts, (np.asarray(true_labels, dtype=np.int64), np.asarray(noisy_labels, dtype=np.int64)), 1.0)
    rows = counts.sum(axis=1, keepdims=True)
    return np.where(rows > 0, counts / np.maximum(rows, 1.0), np.eye(k))


def _check_ratio(ratio: float) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ConfigError(f"noise ratio {ratio!r} is not a number; use a float in [0, 1)") from None
    if not (0.0 <= r < 1.0):
        raise ConfigError(f"noise ratio {ratio!r} is outside [0, 1); use e.g. 0.1 for 10 % noise")
    return r


def _round_half_up(x: np.ndarray | float) -> np.ndarray:
    # Python's round() is round-half-even; half-up is the conventional reading of "round(r*n)".
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def _check_labels(labels: Any, num_classes: int) -> np.ndarray:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 for label noise, got {num_classes}")
    if hasattr(labels, "detach"):  # torch tensor
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ConfigError(f"labels must be a 1-D array of class indices, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"labels must be integers, got dtype {y.dtype}; cast them with .astype(int)")
    y = y.astype(np.int64)
    if y.size:
        bad = y[(y < 0) | (y >= num_classes)]
        if bad.size:
            raise ConfigError(
                f"label {int(bad[0])} is out of range for num_classes={num_classes}; "
                f"labels must lie in [0, {num_classes - 1}]"
            )
    return y


def _check_class_map(class_map: Mapping[int, int] | None, num_classes: int) -> dict[int, int]:
    if not class_map:
        raise ConfigError(
            "asymmetric noise needs class_map={source_class: target_class, ...}, "
            "e.g. benchmark.noise.CIFAR10_ASYMMETRIC_MAP"
        )
    out: dict[int, int] = {}
    for src, dst in class_map.items():
        for name, c in (("source", src), ("target", dst)):
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < num_classes:
                raise ConfigError(
                    f"class_map {name} class {c!r} (in {src!r}: {dst!r}) is not a class index; "
                    f"allowed are ints in [0, {num_classes - 1}]"
                )
        if src == dst:
            raise ConfigError(f"class_map maps class {src} to itself; a flipped label must change")
        out[int(src)] = int(dst)
    return out
