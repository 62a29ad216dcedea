"""How a study is laid out in MLflow: run names, the run tree, the experiment's tags and views.

The tree, chosen to read like the study rather than like the order jobs happened to run in:

```
<suite>                                  kind=suite   (one per suite: figures, claims, table)
 └─ test_resnet-sup @ 10%                kind=group   (one per backbone x noise ratio)
     ├─ pretrain p0 · fashion-mnist      kind=pretrain
     ├─ spectrum p0 · mnist-5k           kind=spectrum
     └─ nmtune λ0.01 d1 · mnist-5k · p0 s1   kind=fit
NMTune · test_resnet-sup @ 10%           kind=leaderboard (top level: sorting the table by a
                                                       metric is the leaderboard)
```

Why not one parent per suite *invocation*: a resumed run would open a second parent holding
only the fits that were missing, so one study would read as several partial ones. The suite and
group runs are keyed like every other record, so re-runs add to the same tree.

Everything here is pure (no MLflow calls): names and keys are derived from record params.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from benchmark.hashing import config_hash
from benchmark.heads import head_label
from benchmark.metrics import board_columns
from benchmark.names import as_number as _num
from benchmark.names import fit_name, seeds_label
from benchmark.tracking.store import EXPERIMENT_KIND_TAG, KIND_TAG, TRAINING_KIND

LEADERBOARD_VIEW = "leaderboard"  # share keys of the experiment's saved runs views
STUDY_VIEW = "study"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow 3.x: experiment tag holding a shared view
NOTE_TAG = "mlflow.note.content"  # the experiment's description in the UI

__all__ = [
    "fit_name",
    "group_label",
    "group_spec",
    "leaderboard_key",
    "leaderboard_name",
    "leaderboard_path",
    "leaderboard_url",
    "leaderboard_view",
    "pretrain_name",
    "runs_url",
    "spectrum_name",
    "study_view",
    "suite_spec",
    "experiment_tags",
]


def _pct(v: Any) -> str:
    f = _num(v)
    return "?" if f is None else f"{f * 100:g}%"


def group_label(backbone: Any, noise_ratio: Any) -> str:
    """``test_resnet-sup @ 10%``; a frozen third-party backbone (no noise ratio): ``name (frozen)``."""
    return f"{backbone} (frozen)" if _num(noise_ratio) is None else f"{backbone} @ {_pct(noise_ratio)}"


def suite_spec(suite: str) -> dict[str, Any]:
    """The parent of a suite's group runs; it carries the suite's table, figures and claims."""
    return {
        "kind": "suite",
        "key": config_hash({"kind": "suite", "suite": suite}),
        "name": suite,
        "params": {"suite": suite},
        "tags": {"suite": suite},
        "parent": None,
    }


def group_spec(suite: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The backbone x noise ratio run a record nests under (None without a backbone)."""
    backbone = params.get("backbone")
    if backbone is None:
        return None
    ratio = _num(params.get("noise_ratio"))
    ident = {"kind": "group", "suite": suite, "backbone": str(backbone), "noise_ratio": ratio}
    p = {"backbone": str(backbone), "noise_ratio": ratio if ratio is not None else "unknown"}
    for k in ("objective", "noise_kind"):
        if params.get(k) is not None:
            p[k] = params[k]
    return {
        "kind": "group",
        "key": config_hash(ident),
        "name": group_label(backbone, ratio),
        "params": p,
        "tags": {"suite": suite},
        "parent": suite_spec(suite),
    }


def pretrain_name(p: Mapping[str, Any]) -> str:
    """``pretrain p0 · fashion-mnist`` (the group names the backbone and the noise ratio)."""
    return f"pretrain p{p.get('seed', 0)} · {p.get('corpus', '?')}"


def spectrum_name(p: Mapping[str, Any]) -> str:
    """``spectrum p0 · mnist-5k``."""
    seeds = seeds_label(p, head=False)
    return f"spectrum{' ' + seeds if seeds else ''} · {p.get('task', '?')}"


def leaderboard_name(row: Mapping[str, Any], with_fraction: bool = False) -> str:
    """``NMTune · test_resnet-sup @ 10%`` (``· 10% data`` when the board holds several fractions)."""
    name = f"{head_label(row.get('head'))} · {group_label(row.get('backbone'), row.get('noise_ratio'))}"
    label_noise = _num(row.get("label_noise_ratio"))
    if label_noise:
        name += f" · labels {label_noise * 100:g}% noisy"
    fraction = _num(row.get("fraction")) if with_fraction else None
    if fraction is not None:
        name += f" · {fraction * 100:g}% data"
    return name


def leaderboard_key(suite: str, row: Mapping[str, Any]) -> str:
    """A leaderboard row's identity: suite, backbone, noise ratio, head (and fraction).

    The head is hashed under ``"method"``, its name when these keys were first published, so a
    published board keeps its run keys; the downstream label-noise ratio enters only when non-zero."""
    ident = {
        "kind": "leaderboard",
        "suite": suite,
        "backbone": str(row.get("backbone")),
        "noise_ratio": _num(row.get("noise_ratio")),
        "method": row.get("head"),
        "fraction": _num(row.get("fraction")),
    }
    if _num(row.get("label_noise_ratio")):
        ident["label_noise_ratio"] = _num(row.get("label_noise_ratio"))
    return config_hash(ident)


def leaderboard_view() -> dict[str, Any]:
    """The runs view that shows the leaderboard: its rows only, best ID accuracy first.

    Columns: the metric registry's leaderboard columns marked ``view`` (with their intervals),
    then ``n``.
    """
    shown = []
    for col in board_columns():
        if col.view:
            shown += [col.name, f"{col.name}_ci"] if col.metric.interval else [col.name]
    metrics = [f"metrics.`{m}`" for m in (*shown, "n")]
    params = [f"params.`{p}`" for p in ("selected", "fits")]
    columns = metrics + params
    return {
        "searchFilter": f"tags.`{KIND_TAG}` = 'leaderboard'",
        "orderByKey": "metrics.`id_acc`",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", *columns],
        "columnWidths": {"attributes.`Run Name`": 330, "params.`selected`": 260},
    }


def study_view() -> dict[str, Any]:
    """The whole tree (suite > backbone x noise ratio > runs) with the columns a fit is judged by."""
    columns = [f"params.`{p}`" for p in ("head", "task")] + [
        f"metrics.`{m}`" for m in ("val_accuracy", "test_accuracy", "test_macro_f1")
    ]
    # No sort key: MLflow 3.17 shows nesting only in its default order (by start time); sorting
    # by run name flattens the tree.
    return {
        "searchFilter": f"tags.`{KIND_TAG}` != 'leaderboard'",
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", *columns],
        "columnWidths": {"attributes.`Run Name`": 360},
    }


def experiment_tags(experiment_id: str) -> dict[str, str]:
    """Tags that make the UI open on training runs and offer the leaderboard and study views."""
    return {
        EXPERIMENT_KIND_TAG: TRAINING_KIND,
        VIEW_TAG_PREFIX + LEADERBOARD_VIEW: json.dumps(leaderboard_view(), sort_keys=True),
        VIEW_TAG_PREFIX + STUDY_VIEW: json.dumps(study_view(), sort_keys=True),
        NOTE_TAG: (
            "nml-bench study. **Leaderboard**: open "
            f"[the leaderboard view]({leaderboard_path(experiment_id)}) "
            "(one run per backbone x noise ratio x head; sort by any metric). "
            f"[The study view]({leaderboard_path(experiment_id, STUDY_VIEW)}): pre-training and "
            "head-fit runs nested under the suite run, one group per backbone x noise ratio."
        ),
    }


def leaderboard_path(experiment_id: str, view: str = LEADERBOARD_VIEW) -> str:
    """The UI route (from ``#``) of a saved view of an experiment (default: the leaderboard)."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={view}&workflowType=machine_learning"


def leaderboard_url(base_url: str, experiment_id: str) -> str:
    """Full URL of the leaderboard view on an MLflow server at ``base_url``."""
    return base_url.rstrip("/") + "/" + leaderboard_path(experiment_id)


def runs_url(base_url: str, experiment_id: str, search: str | None = None, order_by: str | None = None) -> str:
    """The runs view (training workflow), optionally filtered and sorted (descending)."""
    q = "workflowType=machine_learning"
    if search:
        q += "&searchFilter=" + quote(search)
    if order_by:
        q += "&orderByKey=" + quote(order_by) + "&orderByAsc=false"
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{q}"
