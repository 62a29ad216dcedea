"""Seeded, exactly-counted noise for pre-training data, as a registry of noise kinds.

Why exact counts: generators that sample each label independently, or that flip
``floor(p * count)`` per cell of a noise matrix, miss the requested rate badly when there are many
classes (cleanlab: 3.88 % obtained for 20 % asked with 120 classes). The built-in kinds change
exactly ``round(ratio * n_c)`` labels of every class ``c`` (round half up), so the realised rate
is within ``K / (2N)`` of the request, and the empirical transition matrix actually applied is
returned with the labels so that a run can save and report it.

- ``registry.py``: ``register_noise_kind`` / ``get_noise_kind`` / ``noise_kinds`` and the
  ``nmlbench.noise`` entry-point group: a new kind is one registered function.
- ``flips.py``: label flips for supervised pre-training (symmetric, pairflip, asymmetric class
  map, instance-dependent) and :func:`flip_labels`, which runs any registered label kind.
- ``swap.py``: :func:`swap_captions` for image-text pre-training (the ``swap`` kind).
- ``core.py``: the results (``NoiseResult``, ``CaptionSwapResult``), ``transition_matrix``.

Every draw uses ``numpy.random.Generator(PCG64(seed))``: the same seed gives identical results.
"""

from __future__ import annotations

from benchmark.noise.core import (
    CIFAR10_ASYMMETRIC_MAP,
    CaptionSwapResult,
    NoiseResult,
    transition_matrix,
)
from benchmark.noise.flips import INSTANCE_RATE_STD, exact_flips, flip_labels
from benchmark.noise.registry import (
    ENTRY_POINT_GROUP,
    NoiseKind,
    get_noise_kind,
    noise_kinds,
    option_problem,
    refresh_plugins,
    register_noise_kind,
    unregister_noise_kind,
)
from benchmark.noise.swap import swap_captions

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "CaptionSwapResult",
    "ENTRY_POINT_GROUP",
    "INSTANCE_RATE_STD",
    "NoiseKind",
    "NoiseResult",
    "exact_flips",
    "flip_labels",
    "get_noise_kind",
    "noise_kinds",
    "option_problem",
    "refresh_plugins",
    "register_noise_kind",
    "swap_captions",
    "transition_matrix",
    "unregister_noise_kind",
]
