"""What a real run produces: a tiny suite through plan -> extraction -> sweep -> MLflow, then the CLI.

All tests read the one session run of ``pipeline_run`` (tests/conftest.py): ImageNet (ID) and the
``imagenet-variants`` OOD group on a miniature data root, a frozen random-init backbone, LP / MLP /
NMTune with two head seeds, fractions 0.25 and 1.0 and a ``max_train`` cap. Expected numbers are
worked out here by hand from the data the fixture wrote (``support.PIPELINE_*``), never read back
from the code under test:

- an OOD group's accuracy is the unweighted mean over its test domains, whose sizes differ;
- ImageNet-A/-R score only their class subset: their images are decoys that look like class 0
  (outside the subset) in identical pairs labelled 1 and 2, so a subset-scored head gets exactly
  1/2 and a head scoring every logit gets 0;
- validation rows never meet training rows, and every fit trains on the documented number of
  rows per class;
- ``nmlbench leaderboard`` and ``nmlbench report`` print and write what the store holds.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from support import (
    PIPELINE_COUNTS,
    PIPELINE_FEW_SHOT,
    PIPELINE_MAX_TRAIN,
    PIPELINE_SUBSET,
    PIPELINE_VAL_FRACTION,
    check_figure,
)
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.provenance import code_tag

pytestmark = pytest.mark.slow
OOD, ID = "imagenet-variants", "imagenet"
DOMAINS = ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")
DECOYS = ("imagenet-a", "imagenet-r")
SIZES = {d: sum(PIPELINE_COUNTS[d]) for d in DOMAINS}  # 3, 5, 4, 8 images
METRICS = ("accuracy", "macro_f1", "sve_raw", "lsvr_raw")


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def documented_rows() -> tuple[list[int], list[int], list[int]]:
    """Per class: training rows, validation rows and the few-shot share, by the documented rules
    (round half up, at least one; validation keeps one row per class in training)."""
    n_c = PIPELINE_COUNTS["imagenet/train"]
    kept = [max(1, _half_up(PIPELINE_MAX_TRAIN / sum(n_c) * n)) for n in n_c]
    val = [min(_half_up(PIPELINE_VAL_FRACTION * k), k - 1) for k in kept]
    train = [k - v for k, v in zip(kept, val)]
    few = [max(1, _half_up(PIPELINE_FEW_SHOT * t)) for t in train]
    return train, val, few


@pytest.fixture(scope="module")
def fits(pipeline_run) -> pd.DataFrame:
    assert pipeline_run.summary.fits_failed == 0
    return pipeline_run.frame("fit")


def test_the_run_recorded_every_planned_fit_once(pipeline_run, fits) -> None:
    planned = {f.key for f in pipeline_run.plan.fits}
    # 2 tasks x 2 head seeds x 2 fractions x (lp + mlp + nmtune at two lam values)
    assert len(planned) == 2 * 2 * 2 * 4 == pipeline_run.summary.fits_run
    assert sorted(fits["key"]) == sorted(planned)


# -- OOD groups with several test domains --------------------------------------------------------


def test_ood_accuracy_is_the_unweighted_mean_over_domains(fits) -> None:
    ood = fits[fits["task"] == OOD]
    assert len(ood) == 16 and set(ood["task_kind"]) == {"ood"}
    for _, row in ood.iterrows():
        for m in METRICS:
            # The same float64 mean of the same domain values, taken again: ulps apart.
            assert row[f"test_{m}"] == pytest.approx(np.mean([row[f"{d}.{m}"] for d in DOMAINS]), abs=1e-12), m
        # Decoy pairs scored on the subset: exactly one of each identical pair is right, whatever the head.
        assert [row[f"{d}.accuracy"] for d in DECOYS] == [0.5, 0.5], row["head"]
    # The linear probe gets V2 and Sketch (ordinary images of their class) all right, so by hand:
    # unweighted (1 + 1 + 0.5 + 0.5) / 4 = 0.75; weighted by size (3 + 5 + 2 + 4) / 20 = 0.70.
    lp = ood[ood["head"] == "lp"]
    assert len(lp) == 4
    assert (lp[["imagenet-v2.accuracy", "imagenet-sketch.accuracy"]] == 1.0).all().all()
    assert list(lp["test_accuracy"]) == [0.75] * 4
    weighted = sum(SIZES[d] * lp[f"{d}.accuracy"].iloc[0] for d in DOMAINS) / sum(SIZES.values())
    assert weighted == pytest.approx(0.70)  # 14 / 20 in float64
    # An ID task's test accuracy is its one test set's.
    id_rows = fits[fits["task"] == ID]
    assert (id_rows["test_accuracy"] == id_rows["test.accuracy"]).all() and len(id_rows) == 16


def test_class_subset_reaches_the_scorer_and_changes_predictions(pipeline_run, fits, monkeypatch) -> None:
    from benchmark import metrics as scorer
    from benchmark.sweep import run_fits

    payload = pipeline_run.payload(OOD)
    assert {k: v.tolist() for k, v in payload.class_subsets.items()} == {d: list(PIPELINE_SUBSET) for d in DECOYS}
    assert pipeline_run.payload(ID).class_subsets == {}
    assert {k: len(y) for k, (_, y) in payload.tests.items()} == SIZES
    name_of = {len(payload.val[1]): "val", **{n: d for d, n in SIZES.items()}}
    assert len(name_of) == 5  # every evaluation set has its own size: the size names a scorer call

    predictions: dict[str, np.ndarray] = {}
    real = scorer.macro_f1

    def spy(y_true, y_pred):  # the scorer's final predictions of one set
        predictions[name_of[len(y_true)]] = y_pred.cpu().numpy().copy()
        return real(y_true, y_pred)

    monkeypatch.setattr(scorer, "macro_f1", spy)
    spec = next(f for f in pipeline_run.pair(OOD).fits if f.head == "lp" and f.fraction == 1.0 and f.head_seed == 0)
    [masked] = run_fits(payload, [spec])
    subset_preds = dict(predictions)
    predictions.clear()
    [unmasked] = run_fits(dataclasses.replace(payload, class_subsets={}), [spec])  # the same head, every logit
    for d in DECOYS:
        assert set(subset_preds[d].tolist()) <= set(PIPELINE_SUBSET), d
        assert set(predictions[d].tolist()) == {0}, d  # the decoys look like class 0
        assert (masked["metrics"][f"{d}.accuracy"], unmasked["metrics"][f"{d}.accuracy"]) == (0.5, 0.0)
    for name in ("val", "imagenet-v2", "imagenet-sketch"):  # no subset there: same head, same predictions
        np.testing.assert_array_equal(subset_preds[name], predictions[name])
    assert unmasked["metrics"]["test_accuracy"] == 0.5 != masked["metrics"]["test_accuracy"]
    # The run scored this very head with the subsets: its record holds the masked numbers.
    row = fits.set_index("key").loc[spec.key]
    for d in DOMAINS:
        assert row[f"{d}.accuracy"] == masked["metrics"][f"{d}.accuracy"], d
    assert row["test_accuracy"] == masked["metrics"]["test_accuracy"] == 0.75


# -- the pipeline's own splitters and fractions --------------------------------------------------


def test_documented_row_counts_by_hand() -> None:
    # cap 36 of 48: 16, 14, 18 -> 12, 10.5 -> 11, 13.5 -> 14; validation 20 %: 2.4 -> 2, 2.2 -> 2,
    # 2.8 -> 3; few-shot 25 % of 10, 9, 11: 2.5 -> 3, 2.25 -> 2, 2.75 -> 3.
    assert documented_rows() == ([10, 9, 11], [2, 2, 3], [3, 2, 3])


def _min_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance between a row of ``a`` and a row of ``b`` (a row and itself excluded)."""
    d = np.linalg.norm(a[:, None, :].astype(np.float64) - b[None, :, :], axis=2)
    if a is b:
        np.fill_diagonal(d, np.inf)
    return float(d.min())


def test_validation_rows_never_overlap_training_rows(pipeline_run) -> None:
    train_c, val_c, _ = documented_rows()
    cache = pipeline_run.work_dir / "features"
    written = sorted(cache.glob("*/*.npz"))
    for task in (ID, OOD):
        marker = json.loads((cache / "pairs" / f"{pipeline_run.pair(task).key}.json").read_text())
        assert marker["rows"] == {"train": sum(train_c), "val": sum(val_c)}
        payload = pipeline_run.payload(task)
        (tx, ty), (vx, vy) = payload.train, payload.val
        assert np.bincount(ty).tolist() == train_c and np.bincount(vy).tolist() == val_c
        # Every image of the data root is distinct: their features lie at least 1e-2 apart, while one
        # image encoded in two batches differs by float rounding (~1e-7). A row in both sets would
        # show up as a validation row within rounding of a training row.
        assert _min_distance(tx, tx) > 1e-3, task  # distinct images do keep apart
        assert _min_distance(vx, tx) > 1e-3, task
    assert sorted(cache.glob("*/*.npz")) == written  # the payloads were the run's cached features


def test_fits_train_on_the_documented_rows_per_class(pipeline_run, fits) -> None:
    train_c, _, few_c = documented_rows()
    specs = {f.key: f for f in pipeline_run.plan.fits}
    labels = pipeline_run.payload(ID).train[1]
    few_rows = {}
    for _, row in fits.iterrows():
        spec = specs[row["key"]]
        assert (row["fraction"], row["head_seed"]) == (spec.fraction, spec.head_seed)
        if row["fraction"] == 1.0:
            assert spec.train_rows is None and row["train_rows"] == sum(train_c)
        else:
            assert row["fraction"] == PIPELINE_FEW_SHOT and row["train_rows"] == sum(few_c)
            assert np.bincount(labels[list(spec.train_rows)], minlength=3).tolist() == few_c
            few_rows.setdefault(row["head_seed"], set()).add(spec.train_rows)
    # Each head seed draws its own subset, the same for every head and task of that seed.
    assert {s: len(r) for s, r in few_rows.items()} == {0: 1, 1: 1}
    assert few_rows[0] != few_rows[1]


# -- the CLI on the run's store ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv"])
def test_leaderboard_command_prints_the_leaderboard_of_the_store(pipeline_run, fits, fmt) -> None:
    from benchmark.leaderboard import leaderboard
    from benchmark.leaderboard_text import render
    from benchmark.tracking.store import METRIC_DECIMALS

    res = CliRunner().invoke(app, ["leaderboard", str(pipeline_run.suite_path), "--format", fmt])
    assert res.exit_code == 0, res.output
    # The command reads the published leaderboard runs, whose metrics are stored rounded.
    exact = leaderboard(fits)
    expected = exact.round(
        {c: METRIC_DECIMALS for c in exact.columns if exact[c].dtype == float and c != "noise_ratio"}
    )
    assert res.stdout.startswith(render(expected, fmt))  # the table first (a pointer to it may follow)
    if fmt == "csv":
        printed = pd.read_csv(io.StringIO(res.stdout))
        # CSV text back to float64: repr round-trips, so only the last ulp of a re-parse can move.
        pd.testing.assert_frame_equal(printed, expected, check_dtype=False, rtol=1e-12)
        # By hand from the records: LP takes no grid, so its rows are plain means over head seeds;
        # on all rows the deterministic LP gives one result for both head seeds: one unit (issue 23).
        lp = printed[(printed["head"] == "lp") & (printed["fraction"] == 1.0)].iloc[0]
        assert (lp["id_acc"], lp["ood_acc"], lp["n"]) == (1.0, 0.75, 1)
        assert sorted(zip(printed["head"], printed["fraction"])) == sorted(
            (m, f) for m in ("lp", "mlp", "nmtune") for f in (PIPELINE_FEW_SHOT, 1.0)
        )


def test_report_command_writes_every_file_with_content(pipeline_run, fits, tmp_path) -> None:
    from benchmark.claims import CLAIM_TEXT
    from benchmark.leaderboard import leaderboard
    from benchmark.leaderboard_text import render

    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["report", str(pipeline_run.suite_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    names = [
        "leaderboard.md",
        "leaderboard.csv",
        "claims.md",
        "id_ood_vs_noise.png",
        "sve_vs_id.png",
        "lsvr_vs_ood.png",
        "spectra.png",
    ]
    # provenance.json: where it came from (issue 23); comparisons.md: three heads, so which wins where (issue 25)
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "provenance.json", "comparisons.md"])
    # every fit was stamped, when recorded, with the commit that made it; the report counts them
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["fit_code"] == {code_tag(): len(fits)} and prov["fits"] == len(fits)
    assert all(f"wrote {out / n}" in res.stdout for n in names)
    lb = leaderboard(fits)
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "leaderboard.csv"), lb, check_dtype=False, rtol=1e-12
    )  # CSV round trip
    md = (out / "leaderboard.md").read_text()
    assert md.startswith("# Leaderboard: pipeline") and render(lb, "markdown") in md
    claims = (out / "claims.md").read_text()
    for c, text in CLAIM_TEXT.items():
        assert f"## Claim {c}: {text}" in claims
    # Claim 4 pairs NMTune with each other head within the (frozen) backbone family: 2 head seeds.
    for what in ("ID acc, NMTune - MLP", "ID acc, NMTune - LP", "OOD acc, NMTune - MLP", "OOD acc, NMTune - LP"):
        assert any(f" | {what} |" in line and "(n=2)" in line for line in claims.splitlines()), what
    for name in names[3:]:
        check_figure(out / name)


# -- training curves -------------------------------------------------------------------------


def test_fit_runs_carry_their_training_curves_as_step_metrics(pipeline_run, fits) -> None:
    """A reader sees in MLflow that each head converged: gradient heads log train loss and
    validation accuracy per epoch (the kept epoch's accuracy is the fit's val_accuracy), the
    converged LP its validation accuracy per L2 value (the best is the one it kept)."""
    from mlflow import MlflowClient

    client = MlflowClient(pipeline_run.uri)
    for method in ("mlp", "lp"):
        row = fits[(fits["head"] == method) & (fits["task"] == ID)].iloc[0]
        run_id = row["run_id"]
        if method == "mlp":
            acc = [
                m.value for m in sorted(client.get_metric_history(run_id, "curve.val_accuracy"), key=lambda m: m.step)
            ]
            loss = client.get_metric_history(run_id, "curve.train_loss")
            assert len(acc) == len(loss) == int(row["epochs"]) >= 2
            # One float64 stored twice in MLflow (a metric and a step of its curve): equal; abs 1e-9 is
            # far below the 1/n steps an accuracy moves in.
            assert acc[int(row["best_epoch"]) - 1] == pytest.approx(row["val_accuracy"], abs=1e-9)
            assert max(acc) == pytest.approx(row["val_accuracy"], abs=1e-9)
        else:
            by_l2 = client.get_metric_history(run_id, "curve.val_accuracy_by_l2")
            l2 = sorted(client.get_metric_history(run_id, "curve.l2"), key=lambda m: m.step)
            assert len(by_l2) == len(l2) >= 15
            assert max(m.value for m in by_l2) == pytest.approx(row["val_accuracy"], abs=1e-9)
            assert min(abs(m.value / row["chosen_l2"] - 1) for m in l2) < 1e-9  # the same float64, stored twice


def test_logged_spectra_are_numpys_singular_values_of_the_features_the_fits_read(pipeline_run) -> None:
    """The run logs one spectrum per pair and test set (computed inside the features task): each
    equals numpy's SVD of that test set's features as the fits read them, rows L2-normalised
    and columns centred (paper.md, SVE), and the reading back goes through MLflow's artifacts."""
    from benchmark.tracking import TrackingReader

    reader = TrackingReader(pipeline_run.uri, pipeline_run.experiment)
    checked = 0
    for pair in pipeline_run.plan.pairs:
        payload = pipeline_run.payload(pair.task.name)
        for name, (x, _) in payload.tests.items():
            label = pair.task.name if name == "test" else f"{pair.task.name}/{name}"
            (logged,) = reader.load_spectra(label, backbone=pair.backbone.display).values()
            z = np.asarray(x, dtype=np.float64)
            z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-300)
            want = np.linalg.svd(z - z.mean(axis=0), compute_uv=False)
            assert logged.shape == want.shape
            # float64 both sides on the same float32 features; the Gram route squares the condition, so
            # a value near the floor is off by up to sqrt(M eps64) s1 (< 1e-6 s1 for M <= 4500).
            np.testing.assert_allclose(logged, want, rtol=0, atol=1e-6 * want[0])
            checked += 1
    assert checked == sum(len(p.task.tests) for p in pipeline_run.plan.pairs) >= 5
