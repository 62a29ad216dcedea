"""A metric is one registration: evaluation, the fit record and the leaderboard all pick it up.

Balanced accuracy (the mean recall over the classes present) is registered through the public
API (``benchmark.metrics.register_metric``) and checked against
``sklearn.metrics.balanced_accuracy_score`` on the very predictions the evaluation scored; then
it is followed through a real fit (``probe.fit_and_evaluate``), the sweep's fit records
(``sweep.run_fits``), the leaderboard and its renderings, and the published row. A second test
loads a metric from an outside distribution through the entry-point group ``nmlbench.metrics``.
"""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score

from benchmark import metrics as registry
from benchmark.extraction import FeaturePayload
from benchmark.heads import resolve_hparams
from benchmark.leaderboard import columns, leaderboard, leaderboard_rows
from benchmark.leaderboard_text import render
from benchmark.metrics import get_metric, register_metric, unregister_metric
from benchmark.plan import FitSpec, fit_key
from benchmark.sweep import run_fits

#: The leaderboard's columns before any plugin: what the built-in metrics must still give.
BUILTIN_COLUMNS = (
    "id_acc",
    "id_acc_ci",
    "id_f1",
    "id_f1_ci",
    "ood_acc",
    "ood_acc_ci",
    "sve",
    "sve_ci",
    "lsvr",
    "lsvr_ci",
    "sve_raw",
    "lsvr_raw",
    "n",
    "n_pretrain",
    "n_head",
    "flagged",
    "id_rank",
    "id_rank_low",
    "id_rank_high",
    "ood_rank",
    "ood_rank_low",
    "ood_rank_high",
    "rank_cells",
)


def _blobs(n: int, d: int, k: int, seed: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced, overlapping classes (class c has about (c + 1) shares of the rows): balanced
    accuracy and accuracy differ, and neither is 1."""
    centres = np.random.default_rng(7).normal(size=(k, d)) * spread
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), [n * (c + 1) // (k * (k + 1) // 2) for c in range(k)])
    x = centres[y] + rng.normal(size=(len(y), d))
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture
def balanced():
    """Balanced accuracy registered for one test; the (labels, predictions) it scored are kept."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    @register_metric("balanced_accuracy", label="bal acc", percent=True, digits=2)
    def balanced_accuracy(inp: registry.MetricInputs) -> float:
        """Mean recall over the classes present in the labels."""
        y, p = inp.labels, inp.predictions
        seen.append((y.cpu().numpy().copy(), p.cpu().numpy().copy()))
        recalls = [(p[y == c] == c).double().mean() for c in torch.unique(y)]
        return float(torch.stack(recalls).mean())

    try:
        yield seen
    finally:
        unregister_metric("balanced_accuracy")
    assert "balanced_accuracy" not in registry.METRICS


def test_the_builtin_metrics_keep_the_leaderboard_columns():
    assert columns() == BUILTIN_COLUMNS
    assert [m.name for m in registry.metrics()][:6] == ["accuracy", "macro_f1", "sve", "lsvr", "sve_raw", "lsvr_raw"]
    acc = get_metric("accuracy")
    assert (acc.direction, acc.features, acc.percent, acc.digits) == ("higher", "none", True, 2)
    assert (get_metric("sve").features, get_metric("sve_raw").features, get_metric("sve_raw").interval) == (
        "z",
        "f",
        False,
    )
    with pytest.raises(KeyError, match="known metrics: accuracy, lsvr, lsvr_raw, macro_f1, sve, sve_raw"):
        get_metric("balanced_accuracy")


def test_evaluation_scores_a_registered_metric_as_sklearn_does(balanced):
    x, y = _blobs(400, 8, 4, 0, spread=0.8)
    tx, ty = _blobs(300, 8, 4, 1, spread=0.8)
    out = __import__("benchmark.probe", fromlist=["fit_and_evaluate"]).fit_and_evaluate(
        "lp", torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(tx), torch.from_numpy(ty), l2_steps=4
    )
    res = out["eval"]["test"]
    assert list(res) == ["accuracy", "macro_f1", "sve", "lsvr", "sve_raw", "lsvr_raw", "balanced_accuracy", "n"]
    [(labels, preds)] = balanced
    assert res["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds), abs=1e-12)
    # the built-ins on the same predictions, to the bit
    assert res["accuracy"] == float((torch.from_numpy(preds) == torch.from_numpy(labels)).double().mean())
    assert res["macro_f1"] == float(f1_score(labels, preds, average="macro", zero_division=0.0))
    assert 0.3 < res["balanced_accuracy"] < 0.99 and res["balanced_accuracy"] != pytest.approx(
        res["accuracy"], abs=1e-3
    )


def _spec(method: str, pair: str, task: str, kind: str, seed: int, **hp) -> FitSpec:
    h = resolve_hparams(method, **hp)
    params = {
        "head": method,
        "task": task,
        "task_kind": kind,
        "backbone": "synthetic",
        "noise_ratio": 0.0,
        "pretrain_seed": seed,
        "head_seed": 0,
        "fraction": 1.0,
    }
    return FitSpec(fit_key(pair, h, seed, 1.0), pair, h, 0, 1.0, None, params, {"nmlbench.kind": "fit"})


def test_a_registered_metric_reaches_the_fit_record_and_the_leaderboard(balanced):
    records = []
    for seed in (0, 1):  # two pre-training seeds (features drawn anew): two units, so the column has an interval
        id_payload = FeaturePayload(
            train=_blobs(400, 8, 4, 10 * seed, 0.8),
            val=_blobs(120, 8, 4, 10 * seed + 1, 0.8),
            tests={"id-test": _blobs(300, 8, 4, 10 * seed + 2, 0.8)},
            num_classes=4,
        )
        ood_payload = FeaturePayload(
            train=_blobs(400, 8, 4, 10 * seed + 3, 0.8),
            val=_blobs(120, 8, 4, 10 * seed + 4, 0.8),
            tests={"d1": _blobs(200, 8, 4, 10 * seed + 5, 0.6), "d2": _blobs(240, 8, 4, 10 * seed + 6, 0.5)},
            num_classes=4,
        )
        records += run_fits(
            id_payload,
            [_spec("lp", "id", "blobs", "id", seed, l2_steps=4), _spec("mlp", "id", "blobs", "id", seed, epochs=3)],
        )
        records += run_fits(
            ood_payload,
            [_spec("lp", "ood", "shift", "ood", seed, l2_steps=4), _spec("mlp", "ood", "shift", "ood", seed, epochs=3)],
        )
    # every evaluation set of every fit was scored: (val + 1 test + val + 2 domains) x 2 heads x 2 seeds
    assert len(balanced) == 2 * 2 * (2 + 3)
    recorded = []
    for rec in records:
        m = rec["metrics"]
        sets = ["val", *(["id-test"] if rec["params"]["task_kind"] == "id" else ["d1", "d2"])]
        recorded += [m[f"{s}.balanced_accuracy"] for s in sets]
        assert m["test_balanced_accuracy"] == float(np.mean([m[f"{s}.balanced_accuracy"] for s in sets[1:]]))
    want = [balanced_accuracy_score(labels, preds) for labels, preds in balanced]
    assert sorted(recorded) == pytest.approx(sorted(want), abs=1e-12)

    fits = pd.DataFrame([{**r["params"], **r["metrics"]} for r in records])
    board = leaderboard(fits)
    assert tuple(board.columns[3:]) == columns()
    assert {
        "id_balanced_accuracy",
        "id_balanced_accuracy_ci",
        "ood_balanced_accuracy",
        "ood_balanced_accuracy_ci",
    } <= set(board.columns)
    assert set(BUILTIN_COLUMNS) <= set(board.columns)
    for method in ("lp", "mlp"):
        row = board[board["head"] == method].iloc[0]
        for kind in ("id", "ood"):
            # one task per kind, no grid: the mean over the two pre-training seeds' records
            want = fits[(fits["head"] == method) & (fits.task_kind == kind)]["test_balanced_accuracy"].mean()
            assert row[f"{kind}_balanced_accuracy"] == pytest.approx(want, abs=1e-15)
            assert row[f"{kind}_balanced_accuracy_ci"] > 0
    text = render(board, "table")
    assert "ID bal acc (%)" in text and "OOD bal acc (%)" in text
    lp = board[board["head"] == "lp"].iloc[0]
    assert f"{lp['id_balanced_accuracy'] * 100:.2f} ± {lp['id_balanced_accuracy_ci'] * 100:.2f}" in text

    # the published row, the MLflow leaderboard view and the HTML table read the same registry
    from benchmark.report_html import leaderboard_table
    from benchmark.reporting.publish import _row_entry
    from benchmark.tracking.layout import leaderboard_view

    rows = leaderboard_rows(fits, board=board)
    entry = _row_entry("s", 0, rows.to_dict("records")[0], False)
    assert entry["metrics"]["id_balanced_accuracy"] == round(float(rows["id_balanced_accuracy"][0]), 6)
    assert "metrics.`ood_balanced_accuracy`" in leaderboard_view()["selectedColumns"]
    assert "OOD bal acc (%)" in leaderboard_table(rows)


PLUGIN = textwrap.dedent('''
    """An outside package's metric: the share of rows predicted as class 0 (lower is better)."""
    from benchmark.metrics import register_metric


    @register_metric("zero_share", label="zero share", direction="lower", tasks=("id",), digits=4)
    def zero_share(inp):
        """Share of rows predicted as class 0."""
        return float((inp.predictions == 0).double().mean())
''')


def test_an_outside_package_registers_through_the_entry_point_group(tmp_path, monkeypatch):
    (tmp_path / "zero_metric.py").write_text(PLUGIN)
    dist = tmp_path / "zero_metric-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: zero-metric\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nmlbench.metrics]\nzero_share = zero_metric:zero_share\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh_plugins()
    try:
        metric = get_metric("zero_share")
        assert (metric.direction, metric.label, [c.name for c in metric.columns]) == (
            "lower",
            "zero share",
            ["id_zero_share"],
        )
        assert "id_zero_share" in columns()
        inp = registry.MetricInputs(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 2, 1]))
        assert metric.compute(inp) == 0.5
    finally:
        unregister_metric("zero_share")
        sys.modules.pop("zero_metric", None)
        monkeypatch.undo()
        registry.refresh_plugins()
    assert columns() == BUILTIN_COLUMNS
