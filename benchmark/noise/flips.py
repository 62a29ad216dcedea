"""Label-flip noise kinds (supervised pre-training) and :func:`flip_labels`, which runs any of them.

Each built-in kind is one registered function ``(labels, num_classes, ratio, seed, **options)
-> NoiseResult`` built on :func:`exact_flips`: exactly ``round(ratio * n_c)`` labels of every
eligible class ``c`` change, and the kind only says which samples and which new class. A plugin
kind may use :func:`exact_flips` the same way or draw its labels however it likes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from benchmark.errors import ConfigError
from benchmark.noise.core import (
    NoiseResult,
    _check_class_map,
    _check_labels,
    _check_ratio,
    _round_half_up,
    transition_matrix,
)
from benchmark.noise.registry import get_noise_kind, noise_kinds, register_noise_kind

#: Standard deviation of the truncated normal that draws per-sample flip rates (Xia et al. 2020).
INSTANCE_RATE_STD = 0.1

Choose = Callable[[np.random.Generator, np.ndarray, int], np.ndarray]
Target = Callable[[np.random.Generator, int, np.ndarray], np.ndarray | int]


def _uniform_choice(rng: np.random.Generator, idx: np.ndarray, m: int) -> np.ndarray:
    return np.sort(rng.choice(idx, size=m, replace=False))


def exact_flips(
    y: np.ndarray,
    k: int,
    r: float,
    rng: np.random.Generator,
    *,
    kind: str,
    seed: int,
    target: Target,
    eligible: list[int] | None = None,
    choose: Choose = _uniform_choice,
    class_map: dict[int, int] | None = None,
) -> NoiseResult:
    """Flip exactly ``round(r * n_c)`` labels of each class ``c`` in ``eligible`` (all classes
    by default), class by class in order: ``choose(rng, idx, m)`` picks the samples (sorted
    positions; default a uniform draw without replacement) and ``target(rng, c, chosen)`` their
    new labels. ``realised_ratio`` is over the eligible samples."""
    noisy = y.copy()
    flipped = np.zeros(y.shape[0], dtype=bool)
    n_eligible = 0
    for c in range(k) if eligible is None else eligible:
        idx = np.flatnonzero(y == c)
        n_eligible += idx.size
        m = int(_round_half_up(r * idx.size))
        if m == 0:
            continue
        chosen = choose(rng, idx, m)
        noisy[chosen] = target(rng, c, chosen)
        flipped[chosen] = True
    realised = float(flipped.sum() / n_eligible) if n_eligible else 0.0
    return NoiseResult(
        noisy_labels=noisy,
        flipped=flipped,
        realised_ratio=realised,
        transition=transition_matrix(y, noisy, k),
        kind=kind,
        ratio=r,
        seed=int(seed),
        class_map=class_map,
    )


@register_noise_kind(
    "symmetric",
    data="labels",
    objectives=("supervised",),
    description="each chosen label moves to a uniformly drawn other class",
)
def symmetric(y: np.ndarray, k: int, r: float, seed: int) -> NoiseResult:
    """Each chosen label moves to a uniformly drawn *other* class."""
    rng = np.random.default_rng(seed)
    return exact_flips(
        y,
        k,
        r,
        rng,
        kind="symmetric",
        seed=seed,
        target=lambda g, c, chosen: (c + g.integers(1, k, size=chosen.size)) % k,
    )


@register_noise_kind(
    "pairflip", data="labels", objectives=("supervised",), description="class i moves to (i + 1) mod K"
)
def pairflip(y: np.ndarray, k: int, r: float, seed: int) -> NoiseResult:
    """Class ``i`` moves to ``(i + 1) mod K``."""
    rng = np.random.default_rng(seed)
    return exact_flips(y, k, r, rng, kind="pairflip", seed=seed, target=lambda g, c, chosen: (c + 1) % k)


@register_noise_kind(
    "asymmetric",
    data="labels",
    objectives=("supervised",),
    options={"class_map": "{source class: target class}"},
    required=("class_map",),
    description="class_map {src: dst}; ratio applies within each mapped class",
)
def asymmetric(y: np.ndarray, k: int, r: float, seed: int, class_map: Mapping[int, int] | None = None) -> NoiseResult:
    """``class_map = {src: dst}``: only the mapped classes are eligible, ``ratio`` applies within
    each of them; other classes keep their labels."""
    rng = np.random.default_rng(seed)
    cmap = _check_class_map(class_map, k)
    return exact_flips(
        y,
        k,
        r,
        rng,
        kind="asymmetric",
        seed=seed,
        eligible=sorted(cmap),
        target=lambda g, c, chosen: cmap[c],
        class_map=cmap,
    )


@register_noise_kind(
    "instance",
    data="labels",
    objectives=("supervised",),
    inputs=("features",),
    description="instance-dependent (Xia et al. 2020), from per-sample features",
)
def instance(y: np.ndarray, k: int, r: float, seed: int, features: Any = None) -> NoiseResult:
    """After Xia et al. 2020: each sample draws a flip rate from a normal around ``ratio`` (sd
    0.1) truncated to [0, 1]; the samples that flip are a seeded weighted draw without
    replacement (Efraimidis-Spirakis), weighted by that rate, of exactly ``round(ratio * n_c)``
    per class; the new class is drawn from a softmax, over the other classes, of a seeded
    Gaussian random projection of the sample's ``features`` rescaled to norm sqrt(D); as in Xia
    et al. each true class has its own projection (drawn one class at a time, so memory stays
    at D x K)."""
    rng = np.random.default_rng(seed)
    n = y.shape[0]
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
    rates = np.zeros(0)
    if n:
        from scipy.stats import truncnorm

        lo, hi = (0.0 - r) / INSTANCE_RATE_STD, (1.0 - r) / INSTANCE_RATE_STD
        rates = truncnorm.rvs(lo, hi, loc=r, scale=INSTANCE_RATE_STD, size=n, random_state=rng)
    return exact_flips(
        y,
        k,
        r,
        rng,
        kind="instance",
        seed=seed,
        choose=lambda g, idx, m: idx[np.sort(_weighted_sample_without_replacement(g, rates[idx], m))],
        target=lambda g, c, chosen: _instance_targets(g, feats[chosen], y[chosen], k),
    )


def flip_labels(
    labels: Any,
    num_classes: int,
    ratio: float,
    kind: str = "symmetric",
    seed: int = 0,
    class_map: Mapping[int, int] | None = None,
    features: Any = None,
    **options: Any,
) -> NoiseResult:
    """Flip labels with the registered label kind ``kind`` (built-ins: ``symmetric``,
    ``pairflip``, ``asymmetric`` with ``class_map``, ``instance`` with ``features``; see each
    kind's function). Built-in kinds change exactly ``round(ratio * n_c)`` labels of every
    eligible class, rounded half up; a flipped label never equals the true one. ``options``:
    a plugin kind's own options."""
    label_kinds = [n for n, nk in noise_kinds().items() if nk.data == "labels"]
    if kind not in label_kinds:
        raise ConfigError(f"unknown noise kind {kind!r}; allowed kinds: {', '.join(label_kinds)}")
    nk = get_noise_kind(kind)
    y = _check_labels(labels, num_classes)
    r = _check_ratio(ratio)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    given = {**options, "class_map": class_map, "features": features}
    kw: dict[str, Any] = {}
    for name, value in given.items():
        if name in nk.options or name in nk.inputs:
            kw[name] = value
        elif value is not None:
            owners = [n for n, o in noise_kinds().items() if name in o.options or name in o.inputs]
            by = " | ".join(f"kind={o!r}" for o in owners) or "no registered kind"
            raise ConfigError(f"{name} only applies to {by}, not {kind!r}")
    return nk.fn(y, int(num_classes), r, int(seed), **kw)


def _weighted_sample_without_replacement(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """Efraimidis-Spirakis: keep the ``k`` largest ``log(u) / w``; exact and O(n log n)."""
    u = rng.random(weights.shape[0])
    keys = np.log(np.maximum(u, np.finfo(np.float64).tiny)) / np.maximum(weights, 1e-12)
    return np.argsort(-keys, kind="stable")[:k]


def _instance_targets(rng: np.random.Generator, feats: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
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
