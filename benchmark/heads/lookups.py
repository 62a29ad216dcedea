"""What reporting and the paper's claims read from the head registry, instead of head names.

Labels and display order (``head_label``, ``head_order``), how a fit's chosen values are named
(``hparam_label``: the leaderboard's ``selected`` column and the MLflow fit names), a figure
style per head (``plot_style``), and the roles the claims give heads (``probe_head``: the probe
of claims 1-3; ``contenders``: claim 4's comparisons). Each answer comes from the heads'
declarations, so a plugin head shows up with no edit here. No torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmark.errors import ConfigError
from benchmark.heads.registry import HEADS, head_names
from benchmark.heads.robust import LOSS_LABELS, split_head

#: Plot style of a head that declares none (the style every head outside the paper's three had).
DEFAULT_STYLE: tuple[str, str] = ("tab:gray", "x")


def head_label(method: Any) -> str:
    """The head's display label (``NMTune``; ``NMTune+GCE`` for a leaderboard row of NMTune trained
    with a robust loss, ``heads/robust.py``); an unregistered name shows as itself."""
    base, loss = split_head(method)
    if not (isinstance(base, str) and base in HEADS):
        return str(method)
    return HEADS[base].label + (f"+{LOSS_LABELS[loss]}" if loss else "")


def head_order(method: Any) -> int:
    """The head's display order (a robust-loss row sorts with its head); unregistered names last (99)."""
    base, _ = split_head(method)
    return HEADS[base].order if isinstance(base, str) and base in HEADS else 99


def hparam_label(method: Any, params: Mapping[str, Any], empty: str = "") -> str:
    """The chosen values of a fit as the leaderboard's ``selected`` column and fit names show them:
    ``λ0.01 d1`` for NMTune, ``d1`` for the MLP, ``empty`` where the head labels nothing (or the
    values are missing / NaN). ``params``: a fit's params or a fits-frame row (numbers or text)."""
    method, _ = split_head(method)
    if not isinstance(method, str) or method not in HEADS:
        return empty
    head = HEADS[method]
    spec = head.hparam_specs
    parts = [spec[n].format(params.get(n)) for n in head.labelled]
    return " ".join(p for p in parts if p) or empty


def plot_style(method: Any) -> tuple[str, str]:
    """``(colour, marker)`` for figures; ``DEFAULT_STYLE`` for a head that declares none."""
    method, _ = split_head(method)
    head = HEADS.get(method) if isinstance(method, str) else None
    return head.style if head is not None and head.style else DEFAULT_STYLE


def heads_with_role(role: str) -> tuple[str, ...]:
    """The heads declaring ``role`` (display order)."""
    return tuple(n for n in head_names() if HEADS[n].role == role)


def probe_head() -> str:
    """The head the paper's claims 1-3 read (the one with ``role="probe"``: the linear probe)."""
    found = heads_with_role("probe")
    if len(found) != 1:
        raise ConfigError(f"exactly one head must declare role 'probe', found {', '.join(found) or 'none'}")
    return found[0]


def contenders() -> tuple[tuple[str, str], ...]:
    """``(head, baseline)`` pairs the claims compare, in the order each head lists its baselines
    (NMTune against the MLP, then against the LP)."""
    return tuple((n, other) for n in head_names() for other in HEADS[n].contends_with if other in HEADS)
