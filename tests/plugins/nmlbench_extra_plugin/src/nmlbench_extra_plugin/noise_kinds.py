"""An outside noise kind for nml-bench: ``opposite`` moves a chosen label to the class half-way
round, ``(c + K // 2) mod K`` (tests only; one registered function, no edit to ``benchmark/``).

Found through the entry-point group ``nmlbench.noise``; importing the module registers it.
"""

from __future__ import annotations

import numpy as np

from benchmark.noise import NoiseResult, exact_flips, register_noise_kind


@register_noise_kind(
    "opposite", data="labels", objectives=("supervised",), description="class c moves to (c + K // 2) mod K"
)
def opposite(y: np.ndarray, k: int, r: float, seed: int) -> NoiseResult:
    """Exactly ``round(r * n_c)`` labels of every class move to ``(c + K // 2) mod K``."""
    shift = max(1, k // 2)
    return exact_flips(
        y, k, r, np.random.default_rng(seed), kind="opposite", seed=seed, target=lambda rng, c, chosen: (c + shift) % k
    )
