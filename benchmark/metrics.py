"""The metric registry: what a fit is scored by, declared once and read by every stage.

A metric is a function of one evaluation set's labels, predictions and (optionally) features or
logits, registered once with what the rest of the benchmark needs to know about it:

- its ``name`` (the fit record holds ``<set>.<name>`` per evaluation set and ``test_<name>``, the
  mean over a task's test sets), a display ``label``, its ``direction`` (``higher`` or ``lower``
  is better), the ``features`` it reads (``z``: the head's output; ``f``: the frozen input
  features; ``none``: predictions only), whether it needs the ``logits``;
- the leaderboard ``columns`` it gives (one per task kind, ``id`` / ``ood``: the mean of
  ``test_<name>`` over that kind's tasks), whether they carry a 95 % interval, and how they are
  shown (``percent``, ``digits``).

Evaluation (``probe/evaluate.py``), the fit record (``sweep.make_record``), the leaderboard and
its renderings, the MLflow leaderboard view and the HTML report all read this registry, so a new
metric is one ``register_metric`` call. Outside packages register theirs through the entry-point
group ``nmlbench.metrics`` (loaded on first use, like ``nmlbench.backbones``): the entry point
names a module attribute (a ``Metric`` or a function decorated with ``register_metric``);
loading it registers the metric in every process that reads the registry, Ray workers included.

This module imports neither torch nor MLflow at import time: the tracking layer and the CLI read
the columns without paying for the science.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any

from benchmark.errors import ConfigError, UnknownNameError

ENTRY_POINT_GROUP = "nmlbench.metrics"
DIRECTIONS = ("higher", "lower")
FEATURES = ("z", "f", "none")
TASK_KINDS = ("id", "ood")
KIND_TEXT = {"id": "ID", "ood": "OOD"}


@dataclasses.dataclass(eq=False)
class MetricInputs:
    """One evaluation set as a metric sees it (tensors on the evaluation device).

    ``features`` are the ones the metric declared (``z`` or ``f``; None for ``none``); ``logits``
    only for metrics that asked for them. ``spectrum()`` is the features' SVE / LSVR, computed
    once per set and shared by the metrics that read it (one decomposition, not one per metric).
    """

    labels: Any
    predictions: Any
    features: Any = None
    logits: Any = None
    spectrum_cache: dict[str, float] | None = None

    def spectrum(self) -> dict[str, float]:
        if self.spectrum_cache is None:
            self.spectrum_cache = feature_spectrum(self.features)
        return self.spectrum_cache


@dataclasses.dataclass(frozen=True)
class Column:
    """One leaderboard column of a metric: its name, the task kind it averages, its header."""

    name: str
    kind: str
    header: str
    order: float = 100.0
    view: bool = True  # shown in the MLflow leaderboard view


@dataclasses.dataclass(frozen=True)
class Metric:
    """A registered metric (see the module doc); ``compute(MetricInputs) -> float``."""

    name: str
    compute: Callable[[MetricInputs], float]
    label: str
    direction: str = "higher"
    features: str = "none"
    logits: bool = False
    columns: tuple[Column, ...] = ()
    interval: bool = True
    percent: bool = False
    digits: int = 3
    description: str = ""

    @property
    def scale(self) -> float:
        return 100.0 if self.percent else 1.0


@dataclasses.dataclass(frozen=True)
class BoardColumn:
    """A leaderboard column with the metric it comes from (what the leaderboard computes)."""

    name: str
    metric: Metric
    kind: str
    header: str
    view: bool

    @property
    def source(self) -> str:
        """The fit-record metric averaged into this column."""
        return f"test_{self.metric.name}"


#: name -> Metric, in registration order (the order of the fit record's and the results' keys).
METRICS: dict[str, Metric] = {}


def register_metric(
    name: str,
    *,
    label: str | None = None,
    direction: str = "higher",
    features: str = "none",
    logits: bool = False,
    tasks: Sequence[str] = TASK_KINDS,
    columns: Sequence[Column] | None = None,
    interval: bool = True,
    percent: bool = False,
    digits: int = 3,
    description: str = "",
) -> Callable[[Callable[[MetricInputs], float]], Callable]:
    """Decorator: register ``fn(inputs: MetricInputs) -> float`` as metric ``name``.

    ``tasks``: the task kinds that get a leaderboard column (default ``<kind>_<name>``, header
    ``ID <label>``; ``columns`` names them explicitly). A name registered twice is an error.
    """

    def wrap(fn: Callable[[MetricInputs], float]) -> Callable[[MetricInputs], float]:
        cols = (
            tuple(columns)
            if columns is not None
            else tuple(
                Column(
                    f"{kind}_{name}", kind, f"{KIND_TEXT.get(kind, kind)} {label or name}" + (" (%)" if percent else "")
                )
                for kind in tasks
            )
        )
        add_metric(
            Metric(
                name=name,
                compute=fn,
                label=label or name,
                direction=direction,
                features=features,
                logits=logits,
                columns=cols,
                interval=interval,
                percent=percent,
                digits=digits,
                description=description or (fn.__doc__ or "").strip().split("\n")[0],
            )
        )
        return fn

    return wrap


def add_metric(metric: Metric) -> Metric:
    """Register a ``Metric`` object (what ``register_metric`` does); checked here, once."""
    if metric.name in METRICS:
        if METRICS[metric.name] is metric:
            return metric
        raise ConfigError(f"metric {metric.name!r} is registered twice; give the second one another name")
    if metric.direction not in DIRECTIONS:
        raise ConfigError(f"metric {metric.name!r}: direction must be one of {DIRECTIONS}, got {metric.direction!r}")
    if metric.features not in FEATURES:
        raise ConfigError(f"metric {metric.name!r}: features must be one of {FEATURES}, got {metric.features!r}")
    taken = {c.name for m in METRICS.values() for c in m.columns}
    for col in metric.columns:
        if col.kind not in TASK_KINDS:
            raise ConfigError(
                f"metric {metric.name!r}: column {col.name!r} has task kind {col.kind!r}; "
                f"allowed: {', '.join(TASK_KINDS)}"
            )
        if col.name in taken:
            raise ConfigError(f"metric {metric.name!r}: leaderboard column {col.name!r} is taken by another metric")
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove a metric (tests that register one for their own duration)."""
    METRICS.pop(name, None)


@functools.lru_cache(maxsize=1)
def _load_plugins() -> tuple[str, ...]:
    """Import the ``nmlbench.metrics`` entry points once per process; their names."""
    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
        try:
            obj = ep.load()  # importing the module runs its register_metric decorators
        except Exception as exc:  # a broken plugin must not break the others
            warnings.warn(
                f"metric plugin {ep.name!r} from {dist} failed to load ({type(exc).__name__}: {exc}); "
                f"skipped. Reinstall or fix {dist}.",
                stacklevel=2,
            )
            continue
        if isinstance(obj, Metric):
            add_metric(obj)
        loaded.append(ep.name)
    return tuple(loaded)


def refresh_plugins() -> None:
    """Load the entry points again (e.g. after installing a plugin in a running process)."""
    _load_plugins.cache_clear()


def metrics() -> list[Metric]:
    """Every registered metric (built-ins first, then plugins), in registration order."""
    _load_plugins()
    return list(METRICS.values())


def metric_names() -> list[str]:
    return [m.name for m in metrics()]


def get_metric(name: str) -> Metric:
    """The metric of ``name``; unknown -> ``UnknownNameError`` listing the registered ones."""
    _load_plugins()
    if name not in METRICS:
        raise UnknownNameError(
            "metric",
            name,
            METRICS,
            hint=f"outside packages register metrics under the entry-point group {ENTRY_POINT_GROUP!r}",
        )
    return METRICS[name]


def board_columns() -> list[BoardColumn]:
    """The leaderboard's metric columns in display order (``Column.order``, then registration)."""
    cols = [
        (c.order, i, BoardColumn(c.name, m, c.kind, c.header, c.view))
        for i, (m, c) in enumerate((m, c) for m in metrics() for c in m.columns)
    ]
    return [c for _, _, c in sorted(cols, key=lambda t: (t[0], t[1]))]


def board_metric_columns() -> list[str]:
    """Column names with their interval half-widths: ``id_acc, id_acc_ci, ...``."""
    out = []
    for c in board_columns():
        out.append(c.name)
        if c.metric.interval:
            out.append(f"{c.name}_ci")
    return out


def iter_needs(features: str) -> Iterator[Metric]:
    """The registered metrics that read ``features`` (``z``, ``f`` or ``none``)."""
    return (m for m in metrics() if m.features == features)


# -- the built-in metrics ------------------------------------------------------------------------
def score_set(
    registered: Iterable[Metric],
    y: Any,
    pred: Any,
    *,
    f: Any,
    z: Any,
    logits: Any = None,
    f_spectrum: dict[str, float] | None = None,
    z_spectrum: dict[str, float] | None = None,
) -> dict[str, float]:
    """One evaluation set scored by every metric in ``registered``, then ``n``: each metric gets
    the labels, the predictions, the features it declared (``f`` frozen, ``z`` the head's output;
    a spectrum already computed for them is passed on) and the logits if it asked. The one place
    a head's scores are assembled (frozen heads: ``probe.evaluate``; fine-tuning: ``finetune``)."""
    inputs = {
        "none": MetricInputs(y, pred),
        "f": MetricInputs(y, pred, f, spectrum_cache=f_spectrum),
        "z": MetricInputs(y, pred, z, spectrum_cache=z_spectrum),
    }
    out: dict[str, float] = {}
    for metric in registered:
        inp = inputs[metric.features]
        if metric.logits:
            inp.logits = logits
        out[metric.name] = metric.compute(inp)
    out["n"] = int(y.shape[0])
    return out


def macro_f1(y_true: Any, y_pred: Any) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true.cpu().numpy(), y_pred.cpu().numpy(), average="macro", zero_division=0.0))


def feature_spectrum(x: Any) -> dict[str, float]:
    """SVE and LSVR of features; a collapsed representation (all rows equal) gives NaN, not an error."""
    from benchmark.spectrum import spectrum_summary

    try:
        return spectrum_summary(x, normalize=True, center="columns")
    except ConfigError:
        return {"sve": float("nan"), "lsvr": float("nan")}


@register_metric(
    "accuracy",
    label="acc",
    percent=True,
    digits=2,
    columns=(Column("id_acc", "id", "ID acc (%)", 1), Column("ood_acc", "ood", "OOD acc (%)", 3)),
)
def _accuracy(inp: MetricInputs) -> float:
    """Top-1 accuracy (a class subset lets only its logits compete)."""
    return float((inp.predictions == inp.labels).double().mean())


@register_metric("macro_f1", label="F1", percent=True, digits=2, columns=(Column("id_f1", "id", "ID F1 (%)", 2),))
def _macro_f1(inp: MetricInputs) -> float:
    """Macro-F1 (sklearn, classes present in labels or predictions)."""
    return macro_f1(inp.labels, inp.predictions)


@register_metric("sve", label="SVE", features="z", digits=3, columns=(Column("sve", "id", "SVE", 4, view=False),))
def _sve(inp: MetricInputs) -> float:
    """Singular value entropy of the head's output z (rows L2-normalised, columns centred)."""
    return inp.spectrum()["sve"]


@register_metric("lsvr", label="LSVR", features="z", digits=4, columns=(Column("lsvr", "ood", "LSVR", 5, view=False),))
def _lsvr(inp: MetricInputs) -> float:
    """Largest singular value ratio of the head's output z."""
    return inp.spectrum()["lsvr"]


@register_metric(
    "sve_raw", label="SVE raw", features="f", digits=3, interval=False, columns=(Column("sve_raw", "id", "SVE raw", 6),)
)
def _sve_raw(inp: MetricInputs) -> float:
    """Singular value entropy of the frozen input features."""
    return inp.spectrum()["sve"]


@register_metric(
    "lsvr_raw",
    label="LSVR raw",
    features="f",
    digits=4,
    interval=False,
    columns=(Column("lsvr_raw", "ood", "LSVR raw", 7),),
)
def _lsvr_raw(inp: MetricInputs) -> float:
    """Largest singular value ratio of the frozen input features."""
    return inp.spectrum()["lsvr"]
