"""Seeded, exactly-counted label noise for pre-training data.

Why exact counts: generators that sample each label independently, or that flip
``floor(p * count)`` per cell of a noise matrix, miss the requested rate badly when there are many
classes (cleanlab: 3.88 % obtained for 20 % asked with 120 classes). Here exactly
``round(ratio * n_c)`` labels of every class ``c`` change (round half up), so the realised rate
is within ``K / (2N)`` of the request, and the empirical transition matrix actually applied is
returned with the labels so that a run can save and report it.

Two kinds of noise:

- :func:`flip_labels` for supervised pre-training (symmetric, pair-flip, asymmetric class map,
  instance-dependent);
- :func:`swap_captions` for image-text pre-training (a fraction of pairs get another pair's text).

Every draw uses ``numpy.random.Generator(PCG64(seed))``: the same seed gives identical results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import ConfigError

FLIP_KINDS: tuple[str, ...] = ("symmetric", "pairflip", "asymmetric", "instance")

#: CIFAR-10 class-conditional map: truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_ASYMMETRIC_MAP: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

#: Standard deviation of the truncated normal that draws per-sample flip rates (Xia et al. 2020).
INSTANCE_RATE_STD = 0.1


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
    np.add.at(counts, (np.asarray(true_labels, dtype=np.int64),
                       np.asarray(noisy_labels, dtype=np.int64)), 1.0)
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


def _weighted_sample_without_replacement(
    rng: np.random.Generator, weights: np.ndarray, k: int
) -> np.ndarray:
    """Efraimidis-Spirakis: keep the ``k`` largest ``log(u) / w``; exact and O(n log n)."""
    u = rng.random(weights.shape[0])
    keys = np.log(np.maximum(u, np.finfo(np.float64).tiny)) / np.maximum(weights, 1e-12)
    return np.argsort(-keys, kind="stable")[:k]


def _instance_targets(
    rng: np.random.Generator, feats: np.ndarray, labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """Draw a new (different) class for each row, from a softmax of a random projection."""
    proj = rng.standard_normal((feats.shape[1], num_classes))
    logits = feats @ proj
    logits[np.arange(len(labels)), labels] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    cdf = np.cumsum(p, axis=1)
    u = rng.random((len(labels), 1)) * cdf[:, -1:]
    new = (cdf < u).sum(axis=1)
    new = np.minimum(new, num_classes - 1)
    # Guard against a float-rounding pick of the true class (probability 0 in exact arithmetic).
    same = new == labels
    new[same] = (labels[same] + 1) % num_classes
    return new.astype(np.int64)


def flip_labels(
    labels: Any,
    num_classes: int,
    ratio: float,
    kind: str = "symmetric",
    seed: int = 0,
    class_map: Mapping[int, int] | None = None,
    features: Any = None,
) -> NoiseResult:
    """Flip exactly ``round(ratio * n_c)`` labels of every eligible class ``c``.

    Kinds:

    - ``symmetric``: each chosen label moves to a uniformly drawn *other* class.
    - ``pairflip``: class ``i`` moves to ``(i + 1) mod K``.
    - ``asymmetric``: ``class_map = {src: dst}``; only classes in the map are eligible and
      ``ratio`` applies within each of them; other classes keep their labels.
    - ``instance`` (after Xia et al. 2020, instance-dependent noise): each sample draws a flip
      rate from a normal around ``ratio`` (sd 0.1) truncated to [0, 1]; the samples that flip
      are a seeded weighted draw without replacement (Efraimidis-Spirakis), weighted by that
      rate, of exactly ``round(ratio * n_c)`` per class; the new class is drawn from a softmax,
      over the other classes, of a seeded Gaussian random projection of the sample's
      ``features`` rescaled to norm sqrt(D); as in Xia et al. each true class has its own
      projection (drawn one class at a time, so memory stays at D x K).

    Ratios are of each class's count, rounded half up; a flipped label never equals the true one.
    """
    if kind not in FLIP_KINDS:
        raise ConfigError(f"unknown noise kind {kind!r}; allowed kinds: {', '.join(FLIP_KINDS)}")
    y = _check_labels(labels, num_classes)
    r = _check_ratio(ratio)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    k = int(num_classes)
    n = y.shape[0]

    cmap: dict[int, int] | None = None
    if kind == "asymmetric":
        cmap = _check_class_map(class_map, k)
        eligible = sorted(cmap)
    else:
        if class_map is not None:
            raise ConfigError(f"class_map only applies to kind='asymmetric', not {kind!r}")
        eligible = list(range(k))

    feats: np.ndarray | None = None
    if kind == "instance":
        if features is None:
            raise ConfigError(
                "kind='instance' needs features=array[N, D] (e.g. flattened images or "
                "embeddings) to draw instance-dependent flip directions"
            )
        if hasattr(features, "detach"):
            features = features.detach().cpu().numpy()
        feats = np.asarray(features, dtype=np.float64)
        feats = feats.reshape(feats.shape[0], -1) if feats.ndim > 1 else feats.reshape(-1, 1)
        if feats.shape[0] != n:
            raise ConfigError(f"features have {feats.shape[0]} rows but labels have {n}; pass one row per label")
        if not np.isfinite(feats).all():
            raise ConfigError("features contain NaN or inf; clean them before drawing instance noise")
        # Rows scaled to RMS 1 per dimension (norm sqrt(D)), the regime of standardised pixels in
        # Xia et al.: the projection logits then have sd ~ sqrt(D), so the flip target is close
        # to a deterministic function of the features whatever their original scale.
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        feats = feats * (np.sqrt(feats.shape[1]) / np.where(norms > 0, norms, 1.0))
    elif features is not None:
        raise ConfigError(f"features only apply to kind='instance', not {kind!r}")

    noisy = y.copy()
    flipped = np.zeros(n, dtype=bool)
    rates = None
    if kind == "instance" and n:
        from scipy.stats import truncnorm

        lo, hi = (0.0 - r) / INSTANCE_RATE_STD, (1.0 - r) / INSTANCE_RATE_STD
        rates = truncnorm.rvs(lo, hi, loc=r, scale=INSTANCE_RATE_STD, size=n, random_state=rng)

    n_eligible = 0
    for c in eligible:
        idx = np.flatnonzero(y == c)
        n_eligible += idx.size
        m = int(_round_half_up(r * idx.size))
        if m == 0:
            continue
        if kind == "instance":
            assert rates is not None
            chosen = idx[np.sort(_weighted_sample_without_replacement(rng, rates[idx], m))]
        else:
            chosen = np.sort(rng.choice(idx, size=m, replace=False))
        if kind == "symmetric":
            noisy[chosen] = (c + rng.integers(1, k, size=m)) % k
        elif kind == "pairflip":
            noisy[chosen] = (c + 1) % k
        elif kind == "asymmetric":
            assert cmap is not None
            noisy[chosen] = cmap[c]
        else:
            assert feats is not None
            noisy[chosen] = _instance_targets(rng, feats[chosen], y[chosen], k)
        flipped[chosen] = True

    transition = transition_matrix(y, noisy, k)
    realised = float(flipped.sum() / n_eligible) if n_eligible else 0.0
    return NoiseResult(
        noisy_labels=noisy,
        flipped=flipped,
        realised_ratio=realised,
        transition=transition,
        kind=kind,
        ratio=r,
        seed=int(seed),
        class_map=cmap,
    )


def swap_captions(captions: Sequence[str], ratio: float, seed: int = 0) -> CaptionSwapResult:
    """Give exactly ``round(ratio * N)`` pairs a caption whose *text* differs from their own.

    Captions made from class templates repeat, so swapping two identical texts would not add
    noise. The chosen pairs are drawn in a seeded random order, skipping a pair whose text already
    fills half of the chosen set (only needed when one text dominates); then their captions are
    permuted with no pair keeping its text: group the chosen pairs by text (largest group first,
    shuffled within groups) and hand each the caption ``floor(m / 2)`` places further round the
    cycle, which never lands in the same group because no group exceeds ``m / 2``.

    Raises ``ConfigError`` (a ``ValueError``) when this is impossible: a single pair to swap, or
    too few distinct texts (e.g. all captions equal).
    """
    if isinstance(captions, (str, bytes)):
        raise ConfigError("captions must be a sequence of strings, not a single string")
    caps = list(captions)
    for i, c in enumerate(caps):
        if not isinstance(c, str):
            raise ConfigError(f"caption {i} is {type(c).__name__}, not str; pass a list of strings")
    r = _check_ratio(ratio)
    n = len(caps)
    if n == 0:
        raise ConfigError("captions is empty; pass at least two captions to swap")
    m = int(_round_half_up(r * n))
    mismatched = np.zeros(n, dtype=bool)
    if m == 0:
        return CaptionSwapResult(captions=caps, mismatched=mismatched, realised_ratio=0.0)
    if m == 1:
        raise ConfigError(
            f"ratio {r} of {n} captions asks for exactly 1 swapped pair, but a caption can only "
            "be swapped with another; use a ratio giving 0 or at least 2 pairs"
        )
    _, text_id = np.unique(np.array(caps, dtype=object), return_inverse=True)
    text_id = text_id.astype(np.int64)
    cap = m // 2
    available = np.minimum(np.bincount(text_id), cap).sum()
    if available < m:
        raise ConfigError(
            f"cannot mismatch {m} of {n} pairs: too few distinct caption texts "
            f"({np.unique(text_id).size} distinct); no text may fill more than half of the "
            "swapped pairs. Lower the ratio or use more varied captions"
        )
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(n)
    taken: dict[int, int] = {}
    chosen: list[int] = []
    for i in order:
        t = int(text_id[i])
        if taken.get(t, 0) < cap:
            taken[t] = taken.get(t, 0) + 1
            chosen.append(int(i))
            if len(chosen) == m:
                break
    chosen_arr = np.array(chosen, dtype=np.int64)
    # Group by text: largest group first, ties broken by a random key; order inside a group random.
    t_chosen = text_id[chosen_arr]
    group_size = np.array([taken[int(t)] for t in t_chosen])
    tie = rng.permutation(int(text_id.max()) + 1)[t_chosen]
    within = rng.random(m)
    seq = chosen_arr[np.lexsort((within, tie, -group_size))]
    shift = m // 2
    new_caps = list(caps)
    for pos in range(m):
        new_caps[seq[pos]] = caps[seq[(pos + shift) % m]]
    mismatched[seq] = True
    assert all(new_caps[i] != caps[i] for i in seq)
    return CaptionSwapResult(captions=new_caps, mismatched=mismatched, realised_ratio=m / n)
