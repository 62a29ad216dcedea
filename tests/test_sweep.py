"""The sweep: keys, batching, and Ray Tune trials that record failures without stopping."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.sweep import (
    FeaturePayload,
    FitSpec,
    HeadConfig,
    fit_key,
    plan_trials,
    run_fit,
    run_trials_locally,
    run_trials_on_ray,
    stratified_fraction,
)


def _blobs(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.random.default_rng(123).normal(size=(k, d)) * 3  # one label space for every split
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = centres[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def payload() -> FeaturePayload:
    return FeaturePayload(train=_blobs(300, 16, 4, 0), val=_blobs(80, 16, 4, 1),
                          tests={"test": _blobs(120, 16, 4, 2)}, num_classes=4)


def _spec(head: HeadConfig, pair: str = "p0") -> FitSpec:
    return FitSpec(fit_key({"pair": pair}, head), pair, head,
                   {"method": head.method, "task": "blobs", "backbone": "synthetic"}, {"nmlbench.kind": "fit"})


def test_stratified_fraction_is_nested_stratified_and_seeded() -> None:
    y = np.repeat(np.arange(5), 40)
    small, big = stratified_fraction(y, 0.05, 3), stratified_fraction(y, 0.25, 3)
    assert set(small) <= set(big)
    assert np.bincount(y[big], minlength=5).tolist() == [10] * 5
    assert np.bincount(y[small], minlength=5).tolist() == [2] * 5
    assert np.array_equal(small, stratified_fraction(y, 0.05, 3))
    assert not np.array_equal(big, stratified_fraction(y, 0.25, 4))
    with pytest.raises(ValueError, match="fraction"):
        stratified_fraction(y, 1.5, 0)


def test_fit_key_depends_on_everything_that_changes_the_result() -> None:
    base = HeadConfig("nmtune", 0.01, 1, 0, 1.0)
    keys = {fit_key({"pair": "a"}, base), fit_key({"pair": "b"}, base),
            fit_key({"pair": "a"}, HeadConfig("nmtune", 0.1, 1, 0, 1.0)),
            fit_key({"pair": "a"}, HeadConfig("nmtune", 0.01, 2, 0, 1.0)),
            fit_key({"pair": "a"}, HeadConfig("nmtune", 0.01, 1, 1, 1.0)),
            fit_key({"pair": "a"}, HeadConfig("nmtune", 0.01, 1, 0, 0.5))}
    assert len(keys) == 6
    assert fit_key({"pair": "a"}, base) == fit_key({"pair": "a"}, HeadConfig("nmtune", 0.01, 1, 0, 1.0))


def test_plan_trials_batches_per_pair() -> None:
    fits = [_spec(HeadConfig("lp", head_seed=s), pair=p) for p in ("a", "b") for s in range(5)]
    plans = plan_trials(fits, fits_per_trial=2)
    assert [len(p.fits) for p in plans] == [2, 2, 1, 2, 2, 1]
    assert all(len({f.pair for f in p.fits}) == 1 for p in plans)
    assert sorted(f.key for p in plans for f in p.fits) == sorted(f.key for f in fits)
    assert [p.trial_id for p in plans] == [p.trial_id for p in plan_trials(list(reversed(fits)), 2)]


def test_run_fit_makes_a_full_record(payload: FeaturePayload) -> None:
    rec = run_fit(payload, _spec(HeadConfig("lp", hparams=(("epochs", 10),))))
    m = rec["metrics"]
    assert m["test_accuracy"] > 0.9 and m["val_accuracy"] > 0.9
    for k in ("test_macro_f1", "test_sve", "test_lsvr", "test_sve_raw", "test_lsvr_raw", "test.accuracy"):
        assert k in m
    assert 0.0 < m["test_lsvr"] < 1.0


def test_bad_fit_is_recorded_not_raised(payload: FeaturePayload) -> None:
    rec = run_fit(payload, _spec(HeadConfig("nmtune", 0.01, 1, hparams=(("lr", 1e30), ("epochs", 3)))))
    assert "error" in rec and rec["key"]
    rec = run_fit(payload, _spec(HeadConfig("lp", hparams=(("no_such_hparam", 1),))))
    assert "no_such_hparam" in rec["error"]


@pytest.mark.slow
def test_tune_trials_record_failures_and_go_on(payload: FeaturePayload, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        good = [_spec(HeadConfig(m, 0.01 if m == "nmtune" else None, 1 if m != "lp" else None, s,
                                 hparams=(("epochs", 5),))) for m in ("lp", "mlp", "nmtune") for s in (0, 1)]
        bad = _spec(HeadConfig("nmtune", 0.01, 1, 7, hparams=(("lr", 1e30), ("epochs", 3))))
        plans = plan_trials(good + [bad], fits_per_trial=3)
        records: list[dict] = []
        run_trials_on_ray(plans, {"p0": ray.put(payload)}, records.append,
                          storage_path=tmp_path / "tune", name="t", max_concurrent=2)
        by_key = {r["key"]: r for r in records}
        assert len(records) == 7 and set(by_key) == {f.key for f in good + [bad]}
        assert "error" in by_key[bad.key]
        assert all("error" not in by_key[f.key] for f in good)
        # the same fits in a plain loop give the same numbers: Tune changes where, not what
        local: list[dict] = []
        run_trials_locally(plans, {"p0": payload}, local.append)
        for r in local:
            if "error" not in r:
                assert r["metrics"]["test_accuracy"] == pytest.approx(by_key[r["key"]]["metrics"]["test_accuracy"])
    finally:
        ray.shutdown()
