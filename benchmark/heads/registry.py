"""The head registry: every downstream head is registered once, and every other module asks it.

A head method (``lp``, ``mlp``, ``nmtune``) is one ``HeadMethod`` entry: its name and label, the
hyper-parameters it takes with their defaults (which also says which suite grid axes apply to
it: a grid axis applies to exactly the methods that take that hyper-parameter), and where its
module builder and its loss live. Config validation, planning, the probe, the leaderboard and
the report read this table instead of spelling the names out.

This module imports no torch: the suite schema validates head grids with it, and ``nmlbench
validate`` should not pay for importing PyTorch. Builders and losses are ``"module:function"``
strings resolved on first use, the way backbone families are.

``resolve_hparams`` turns a method's defaults plus a fit's given values into one frozen
``HParams``: done once per fit, when the plan is made, and that object is what the fit key
hashes, what the fit trains with and what MLflow records.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from benchmark.errors import ConfigError, UnknownNameError

#: NMTune's loss is ``CE + lam * (w_mse * mse + w_cov * cov + w_svd * svd)``. ``paper``: lambda
#: 0.01 on equally weighted terms, svd top-1 (the paper's text); ``reference``: lambda 1 with
#: mse 1, cov 0.04, svd 0.001 and svd top-5 (the public reference code).
NMTUNE_PRESETS: dict[str, dict[str, float | int]] = {
    "paper": {"lam": 0.01, "w_mse": 1.0, "w_cov": 1.0, "w_svd": 1.0, "svd_topk": 1},
    "reference": {"lam": 1.0, "w_mse": 1.0, "w_cov": 0.04, "w_svd": 0.001, "svd_topk": 5},
}
NMTUNE_WEIGHTS = ("lam", "w_mse", "w_cov", "w_svd")

#: Grid axes in the order that breaks validation ties: the smaller value is the simpler head.
TIEBREAK_AXES: tuple[str, ...] = ("lam", "depth", "ratio", "epochs", "lr", "weight_decay", "batch_size")


@dataclass(frozen=True)
class HParams:
    """Every hyper-parameter one fit reads, resolved (defaults and presets applied) and validated.

    Fields a method does not take are None. ``as_dict()`` (the non-None fields) is what fit keys
    hash and what MLflow records, so a value shows up under exactly one name everywhere.

    Gradient-trained heads read ``epochs``, ``batch_size``, ``lr``, ``weight_decay`` and
    ``epoch_selection`` (``best_val``: keep the epoch with the best validation accuracy of one
    cosine run; ``last``: the paper's fixed-length training). The converged linear probe reads
    the L2 grid it searches on validation (``l2_min``, ``l2_max``, ``l2_steps`` log-spaced
    values, then ``l2_refine`` values between the best one's neighbours), whether it
    standardises each feature dimension (``standardize``; else one global scale) and its
    solver's ``max_iter`` and ``tol`` (largest gradient entry at convergence).
    """

    method: str
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    epoch_selection: str | None = None
    ratio: float | None = None
    depth: int | None = None
    preset: str | None = None
    lam: float | None = None
    w_mse: float | None = None
    w_cov: float | None = None
    w_svd: float | None = None
    svd_topk: int | None = None
    l2_min: float | None = None
    l2_max: float | None = None
    l2_steps: int | None = None
    l2_refine: int | None = None
    standardize: bool | None = None
    max_iter: int | None = None
    tol: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Non-None hyper-parameters (without ``method``), in field order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "method" and getattr(self, f.name) is not None}

    def arch(self) -> dict[str, Any]:
        """The keywords that shape the module (ratio, depth), for the builder."""
        return {k: getattr(self, k) for k in ("ratio", "depth") if getattr(self, k) is not None}

    def batch_key(self) -> tuple[Any, ...]:
        """What fits must share to be trained as one batched computation on the same rows.

        Everything but the per-member values (:data:`PER_MEMBER`: learning rate, weight decay
        and the loss weights) and the seed: the same fitter and module (so MLP and NMTune,
        one residual MLP with or without regularisers, share a batch), the same architecture,
        epochs, batch size and epoch selection. Torch-free, so the plan can group trials by it.
        """
        head = get_head(self.method)
        shared = tuple((k, v) for k, v in self.as_dict().items() if k not in PER_MEMBER)
        return (head.fitter or "", head.builder, shared)


#: Hyper-parameters that may differ between the members of one batched fit.
PER_MEMBER: frozenset[str] = frozenset({"lr", "weight_decay", "preset", "lam", "w_mse", "w_cov", "w_svd", "svd_topk"})
#: Values of ``epoch_selection``.
EPOCH_SELECTIONS: tuple[str, ...] = ("best_val", "last")


HPARAM_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HParams) if f.name != "method")


@dataclass(frozen=True)
class HeadMethod:
    """One registered head: see the module docstring."""

    name: str
    label: str
    order: int
    description: str
    defaults: Mapping[str, Any]
    builder: str                 # "module:function"(dim, num_classes, **arch) -> nn.Module
    loss: str | None = None      # "module:function"(HParams) -> loss object; None: cross-entropy
    fitter: str | None = None    # "module:function"(data, requests) -> results; None: gradient training
    default: bool = True         # run by a suite that lists no methods
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def takes(self, hparam: str) -> bool:
        return hparam in self.defaults

    def resolve(self, attr: str) -> Any:
        """The builder or loss factory, imported on first use."""
        if attr not in self._cache:
            target = getattr(self, attr)
            module, _, path = target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in path.split("."):
                obj = getattr(obj, part)
            self._cache[attr] = obj
        return self._cache[attr]


HEADS: dict[str, HeadMethod] = {}


def register_head(method: HeadMethod) -> HeadMethod:
    """Add a head to the registry (names are unique; hyper-parameter names must be known)."""
    if method.name in HEADS:
        raise ConfigError(f"head method {method.name!r} is registered twice")
    unknown = sorted(set(method.defaults) - set(HPARAM_NAMES))
    if unknown:
        raise ConfigError(f"head method {method.name!r} declares unknown hyper-parameter(s) "
                          f"{', '.join(unknown)}; known: {', '.join(HPARAM_NAMES)}")
    HEADS[method.name] = dataclasses.replace(method, defaults=MappingProxyType(dict(method.defaults)))
    return HEADS[method.name]


def get_head(name: str) -> HeadMethod:
    """The registered head ``name``; unknown names raise ``UnknownNameError`` listing them all."""
    if name not in HEADS:
        raise UnknownNameError("head method", str(name), HEADS)
    return HEADS[name]


def head_names() -> tuple[str, ...]:
    """Registered head names in display order (LP, MLP, NMTune)."""
    return tuple(sorted(HEADS, key=lambda n: (HEADS[n].order, n)))


def default_methods() -> tuple[str, ...]:
    """The heads a suite runs when it lists none (display order): all but reproduction variants."""
    return tuple(n for n in head_names() if HEADS[n].default)


def methods_taking(hparam: str) -> list[str]:
    return [n for n in head_names() if HEADS[n].takes(hparam)]


# -- validation of values ------------------------------------------------------------------------

def as_int(name: str, val: Any, minimum: int) -> int:
    """An integer hyper-parameter (a whole float such as 2.0 is accepted), checked >= minimum."""
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not float(val).is_integer():
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {val!r}")
    if int(val) < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {val!r}")
    return int(val)


def as_float(name: str, val: Any, *, positive: bool) -> float:
    """A finite number, > 0 (``positive``) or >= 0."""
    try:
        ok = not isinstance(val, bool) and math.isfinite(float(val))
    except (TypeError, ValueError):
        ok = False
    if not ok or float(val) < 0 or (positive and float(val) == 0):
        raise ConfigError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {val!r}")
    return float(val)


def nmtune_weights(preset: str, **overrides: Any) -> dict[str, Any]:
    """NMTune's loss weights: the preset's values with every non-None override applied."""
    if preset not in NMTUNE_PRESETS:
        raise UnknownNameError("NMTune preset", str(preset), NMTUNE_PRESETS)
    values: dict[str, Any] = dict(NMTUNE_PRESETS[preset])
    for key in NMTUNE_WEIGHTS:
        if overrides.get(key) is not None:
            v = float(overrides[key])
            if not v >= 0.0 or v == math.inf:
                raise ConfigError(f"{key}={v} must be a finite number >= 0")
            values[key] = v
    if overrides.get("svd_topk") is not None:
        values["svd_topk"] = as_int("svd_topk", overrides["svd_topk"], 1)
    return values


def resolve_hparams(method: str, **given: Any) -> HParams:
    """``method``'s defaults merged with ``given`` (None means "not given"), validated.

    Names outside :data:`HPARAM_NAMES` raise ``ConfigError`` listing the allowed ones; a known
    name that ``method`` does not take must be None or absent (the message says which methods
    take it). NMTune's ``preset`` fills ``lam`` and the ``w_*`` weights that were not given.
    """
    head = get_head(method)
    unknown = sorted(set(given) - set(HPARAM_NAMES))
    if unknown:
        raise ConfigError(f"unknown hyper-parameter(s) {', '.join(unknown)} for method {method!r}; "
                          f"allowed: {', '.join(head.defaults)}")
    wrong = sorted(k for k, v in given.items() if not head.takes(k) and v is not None)
    if wrong:
        detail = "; ".join(f"{k} applies to {', '.join(methods_taking(k)) or 'no method'}" for k in wrong)
        raise ConfigError(f"hyper-parameter(s) {', '.join(wrong)} do not apply to method {method!r} "
                          f"({detail}); allowed for {method!r}: {', '.join(head.defaults)}")
    hp = dict(head.defaults)
    hp.update({k: v for k, v in given.items() if v is not None})
    for name, minimum in (("epochs", 1), ("batch_size", 2), ("depth", 1), ("l2_steps", 1), ("l2_refine", 0),
                          ("max_iter", 1)):
        if name in hp:
            hp[name] = as_int(name, hp[name], minimum)
    for name, positive in (("lr", True), ("weight_decay", False), ("ratio", True), ("l2_min", True),
                           ("l2_max", True), ("tol", True)):
        if name in hp:
            hp[name] = as_float(name, hp[name], positive=positive)
    if "epoch_selection" in hp and hp["epoch_selection"] not in EPOCH_SELECTIONS:
        raise ConfigError(f"epoch_selection must be one of {', '.join(EPOCH_SELECTIONS)}, got "
                          f"{hp['epoch_selection']!r}")
    if "standardize" in hp and not isinstance(hp["standardize"], bool):
        raise ConfigError(f"standardize must be true or false, got {hp['standardize']!r}")
    if "l2_min" in hp and hp["l2_min"] > hp["l2_max"]:
        raise ConfigError(f"l2_min={hp['l2_min']:g} is above l2_max={hp['l2_max']:g}; swap them")
    if "preset" in hp:
        hp.update(nmtune_weights(hp["preset"], **{k: hp.get(k) for k in (*NMTUNE_WEIGHTS, "svd_topk")}))
    return HParams(method=method, **hp)


# -- the built-in heads --------------------------------------------------------------------------
#: Gradient training shared by the residual-MLP heads: the reference code's AdamW settings, and
#: the epoch chosen on validation within one cosine run (``epoch_selection: last`` is the paper's).
_GRADIENT = {"epochs": 30, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4, "epoch_selection": "best_val"}
_MLP = {"ratio": 4, "depth": 1}

register_head(HeadMethod(
    name="lp", label="LP", order=0,
    description="linear probe solved to convergence: multinomial logistic regression (L-BFGS, float64) on "
                "centred, scaled features, its L2 strength chosen on the validation split from a log-spaced grid",
    defaults={"l2_min": 1e-6, "l2_max": 10.0, "l2_steps": 15, "l2_refine": 4, "standardize": False,
              "max_iter": 1000, "tol": 1e-6},
    builder="benchmark.heads.modules:LinearHead",
    fitter="benchmark.probe.linear:fit_linear_probes"))
register_head(HeadMethod(
    name="lp_adamw", label="LP (AdamW)", order=1,
    description="the paper's linear probe: AdamW, lr 0.1, no weight decay, 30 epochs, cosine schedule, last epoch",
    defaults={"epochs": 30, "batch_size": 64, "lr": 0.1, "weight_decay": 0.0, "epoch_selection": "last"},
    builder="benchmark.heads.modules:LinearHead", default=False))
register_head(HeadMethod(
    name="mlp", label="MLP", order=2,
    description="NMTune's residual MLP trained with cross-entropy only (the MLP baseline)",
    defaults={**_GRADIENT, **_MLP},
    builder="benchmark.heads.modules:ResidualMLPHead"))
register_head(HeadMethod(
    name="nmtune", label="NMTune", order=3,
    description="residual MLP with NMTune's consistency, covariance and dominant-SVD regularisers",
    defaults={**_GRADIENT, **_MLP, "preset": "reference",
              "lam": None, "w_mse": None, "w_cov": None, "w_svd": None, "svd_topk": None},
    builder="benchmark.heads.modules:ResidualMLPHead",
    loss="benchmark.heads.nmtune:NMTuneLoss.from_hparams"))
