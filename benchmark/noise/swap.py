"""Caption-swap noise (image-text pre-training): a fraction of pairs get another pair's text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmark.errors import ConfigError
from benchmark.noise.core import CaptionSwapResult, _check_ratio, _round_half_up
from benchmark.noise.registry import register_noise_kind


@register_noise_kind(
    "swap",
    data="captions",
    objectives=("clip",),
    description="a fraction of image-text pairs get another pair's caption",
)
def swap(captions: Sequence[str], ratio: float, seed: int) -> CaptionSwapResult:
    """The registered ``swap`` kind: :func:`swap_captions`."""
    return swap_captions(captions, ratio, seed)


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
