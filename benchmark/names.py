"""Display names of fits, derived from record params (pure; no MLflow, no torch).

A fit's name (``nmtune λ0.01 d1 · mnist-5k · p0 s1``): the head, the values that tell its fits
apart (the head registry's ``hparam_label``), the task, the seeds. The sweep's warnings and the
MLflow run names (``tracking.layout``) both use it, so a fit reads the same everywhere; head
labels and order are the head registry's (``benchmark.heads.head_label`` / ``head_order``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from benchmark.heads import hparam_label


def as_number(v: Any) -> float | None:
    """``v`` as a float, or None when it is missing, NaN or not a number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def seeds_label(p: Mapping[str, Any], head: bool = True) -> str:
    """``p0 s1``: pre-training seed (left out for frozen backbones) and head seed."""
    pre = p.get("pretrain_seed")
    frozen = p.get("objective") == "frozen" or as_number(p.get("noise_ratio")) is None
    out = [] if frozen or pre is None else [f"p{pre}"]
    if head and p.get("head_seed") is not None:
        out.append(f"s{p['head_seed']}")
    return " ".join(out)


def fit_name(p: Mapping[str, Any]) -> str:
    """``nmtune λ0.01 d1 · mnist-5k · p0 s1``: head, task, pre-training seed p, head seed s (then
    the data fraction and the downstream label noise, where set)."""
    name = p.get("head", "fit")
    head = " ".join(x for x in (str(name), hparam_label(name, p)) if x)
    parts = [head, str(p.get("task", "?"))]
    seeds = seeds_label(p)
    if seeds:
        parts.append(seeds)
    frac = as_number(p.get("fraction"))
    if frac is not None and frac < 1:
        parts.append(f"{frac * 100:g}% data")
    label_noise = as_number(p.get("label_noise_ratio"))
    if label_noise:  # noisy downstream labels; clean fits keep the names they always had
        parts.append(f"labels {label_noise * 100:g}% noisy")
    return " · ".join(parts)
