"""The heads stage: planned fits on a payload, and Ray Tune trials that record failures without stopping."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.extraction import FeaturePayload
from benchmark.heads import resolve_hparams
from benchmark.plan import FitSpec, fit_key
from benchmark.spectrum import spectrum_summary
from benchmark.sweep import iter_fit_batches, make_record, run_fits, run_trials_locally, run_trials_on_ray
from benchmark.trials import plan_trials


def _blobs(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.random.default_rng(123).normal(size=(k, d)) * 3  # one label space for every split
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = centres[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def payload() -> FeaturePayload:
    return FeaturePayload(
        train=_blobs(300, 16, 4, 0), val=_blobs(80, 16, 4, 1), tests={"test": _blobs(120, 16, 4, 2)}, num_classes=4
    )


def _spec(method: str, seed: int = 0, pair: str = "p0", rows=None, **hp) -> FitSpec:
    h = resolve_hparams(method, **hp)
    return FitSpec(
        fit_key(pair, h, seed, 1.0 if rows is None else 0.5),
        pair,
        h,
        seed,
        1.0,
        rows,
        {"head": method, "task": "blobs", "backbone": "synthetic"},
        {"nmlbench.kind": "fit"},
    )


def test_run_fit_makes_a_full_record(payload: FeaturePayload) -> None:
    lp, mlp = run_fits(payload, [_spec("lp"), _spec("mlp", epochs=4)])
    m = lp["metrics"]
    # Blobs 3 std apart in 16-d: 1.0 and 1.0 measured; 0.9 allows 12 test / 8 validation misses, far
    # more than round-off or a near-tie in the L2 choice can flip.
    assert m["test_accuracy"] > 0.9 and m["val_accuracy"] > 0.9, (m["test_accuracy"], m["val_accuracy"])
    assert m["test.accuracy"] == m["test_accuracy"] and m["train_rows"] == 300
    # LP passes the features through as z: its spectra are the frozen test features' own.
    raw = spectrum_summary(payload.tests["test"][0])
    for k in ("sve", "lsvr"):
        # The same float64 spectrum of the same features, recomputed: ulps apart at most.
        assert m[f"test_{k}"] == m[f"test_{k}_raw"] == m[f"test.{k}"] == pytest.approx(raw[k], rel=1e-9)

    # the converged probe says which L2 validation chose, and keeps the whole curve
    c = lp["curves"]
    assert m["chosen_l2"] in c["l2"] and m["converged"] == 1.0 and len(c["val_accuracy_by_l2"]) == len(c["l2"]) >= 15
    assert max(c["val_accuracy_by_l2"]) == m["val_accuracy"]
    # gradient heads: train loss and validation accuracy per epoch, and the epoch kept
    assert len(mlp["curves"]["train_loss"]) == len(mlp["curves"]["val_accuracy"]) == 4
    assert mlp["metrics"]["val_accuracy"] == mlp["curves"]["val_accuracy"][int(mlp["metrics"]["best_epoch"]) - 1]
    assert mlp["metrics"]["batch_members"] == 1.0 and lp["metrics"]["fit_seconds"] > 0


def _domain(acc: float, f1: float, sve: float, lsvr: float, n: int) -> dict:
    return {"accuracy": acc, "macro_f1": f1, "sve": sve, "lsvr": lsvr, "sve_raw": sve + 1, "lsvr_raw": lsvr / 2, "n": n}


def test_ood_record_is_the_unweighted_mean_of_its_domains_by_hand() -> None:
    """Two test domains of 2 and 6 items: each counts once, whatever its size."""
    result = {
        "train_loss": 0.3,
        "train_rows": 40,
        "eval": {
            "val": _domain(0.9, 0.8, 2.0, 0.4, 10),
            "small": _domain(1.0, 1.0, 3.0, 0.2, 2),
            "large": _domain(0.5, 0.25, 1.0, 0.6, 6),
        },
    }
    m = make_record(_spec("lp"), result, ["small", "large"], 1.5)["metrics"]
    # Weighted by size the accuracy would be (2 x 1.0 + 6 x 0.5) / 8 = 0.625.
    assert m["test_accuracy"] == 0.75 and m["test_macro_f1"] == 0.625
    assert (m["test_sve"], m["test_sve_raw"]) == (2.0, 3.0)
    assert (m["test_lsvr"], m["test_lsvr_raw"]) == pytest.approx((0.4, 0.2), abs=1e-15)  # (0.2 + 0.6) / 2: 1 ulp
    assert (m["small.accuracy"], m["large.accuracy"], m["val_accuracy"]) == (1.0, 0.5, 0.9)
    assert "val.accuracy" in m and "test.accuracy" not in m  # validation never enters the test means
    assert (m["train_rows"], m["train_loss"], m["fit_seconds"]) == (40, 0.3, 1.5)


def test_ood_fit_through_iter_fits_counts_each_domain_once() -> None:
    """Domain "clean" (2 rows) is one clear row per class: a trained head gets both. Domain
    "ambiguous" (4 rows) holds each class centre twice, labelled 0 once and 1 once: exactly half
    right, whatever the head. Mean 0.75; weighted by size it would be (2 + 2) / 6."""
    centre = np.zeros((2, 4), np.float32)
    centre[0, 0], centre[1, 0] = 3.0, -3.0
    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    x = (centre[y] + 0.3 * rng.standard_normal((60, 4))).astype(np.float32)
    payload = FeaturePayload(
        train=(x[:40], y[:40]),
        val=(x[40:], y[40:]),
        tests={"clean": (centre, np.array([0, 1])), "ambiguous": (centre[[0, 0, 1, 1]], np.array([0, 1, 0, 1]))},
        num_classes=2,
    )
    [rec] = run_fits(payload, [_spec("lp")])
    m = rec["metrics"]
    assert (m["clean.accuracy"], m["ambiguous.accuracy"]) == (1.0, 0.5)
    assert m["test_accuracy"] == 0.75 and m["train_rows"] == 40


def test_bad_fit_is_recorded_not_raised(payload: FeaturePayload) -> None:
    bad, good = _spec("nmtune", lam=0.01, depth=1, lr=1e30, epochs=3), _spec("lp", l2_steps=3)
    recs = run_fits(payload, [bad, good])
    assert recs[0]["error"].startswith("TrainingDiverged") and recs[0]["key"] == bad.key
    assert "error" not in recs[1] and recs[1]["key"] == good.key  # the batch went on
    broken = FeaturePayload(
        train=(payload.train[0][:, :3], payload.train[1]), val=payload.val, tests=payload.tests, num_classes=4
    )
    recs = run_fits(broken, [good, bad])  # a payload the probe rejects fails every fit alike
    assert [r["key"] for r in recs] == [good.key, bad.key]
    assert all("has 16 feature dims but train_x has 3" in r["error"] for r in recs)


def test_few_shot_rows_train_on_those_rows_only(payload: FeaturePayload) -> None:
    rows = tuple(range(0, 300, 3))  # 100 of the 300 training rows
    small, full = run_fits(payload, [_spec("lp", rows=rows, l2_steps=4), _spec("lp", l2_steps=4)])
    sub = FeaturePayload(
        train=(payload.train[0][list(rows)], payload.train[1][list(rows)]),
        val=payload.val,
        tests=payload.tests,
        num_classes=4,
    )
    [same] = run_fits(sub, [_spec("lp", l2_steps=4)])
    assert small["metrics"] == {**same["metrics"], "fit_seconds": small["metrics"]["fit_seconds"]}
    assert small["curves"] == same["curves"]
    assert small["metrics"]["train_loss"] != full["metrics"]["train_loss"]


def test_plan_trials_keep_batch_groups_whole() -> None:
    grad = [_spec("nmtune", s, lam=lam, epochs=2) for s in range(3) for lam in (0.01, 0.1)]  # one group of 6
    deep = [_spec("mlp", s, depth=2, epochs=2) for s in range(3)]  # another group of 3
    lps = [_spec("lp", s) for s in range(2)]  # a third, of 2
    trials = plan_trials(grad + deep + lps, fits_per_trial=8)
    assert sorted(len(t.fits) for t in trials) == [5, 6]  # 6 | 3 + 2: no group split across trials
    for t in trials:
        assert len({(f.hparams.batch_key(), f.train_rows) for f in t.fits}) <= 2
    assert {f.key for t in trials for f in t.fits} == {f.key for f in grad + deep + lps}
    big = plan_trials(grad, fits_per_trial=4)  # a group larger than a trial is split, not merged
    assert [len(t.fits) for t in big] == [4, 2]


def test_records_arrive_one_batch_group_at_a_time(payload: FeaturePayload) -> None:
    specs = [
        _spec("mlp", 0, epochs=2),
        _spec("lp", 0, l2_steps=2),
        _spec("nmtune", 1, epochs=2, lam=0.1),
        _spec("mlp", 2, epochs=2, lr=3e-3),
        _spec("lp", 3, l2_steps=2),
    ]
    batches = list(iter_fit_batches(payload, specs))
    # MLP and NMTune members train together; the two LP fits are one convex problem
    assert [[r["key"] for r in b] for b in batches] == [
        [specs[0].key, specs[2].key, specs[3].key],
        [specs[1].key, specs[4].key],
    ]
    assert [b[0]["metrics"]["batch_members"] for b in batches] == [3.0, 2.0]
    assert batches[1][0]["metrics"]["test_accuracy"] == batches[1][1]["metrics"]["test_accuracy"]


@pytest.mark.slow
def test_tune_trials_record_failures_and_go_on(payload: FeaturePayload, tmp_path, capfd) -> None:
    import ray

    from benchmark.ray_session import init_ray

    init_ray(num_cpus=2)
    try:
        extra = {"lp": {"l2_steps": 5}, "mlp": {"epochs": 5}, "nmtune": {"epochs": 5, "lam": 0.01}}
        good = [_spec(m, s, **extra[m]) for m in ("lp", "mlp", "nmtune") for s in (0, 1)]
        bad = _spec("nmtune", 7, lam=0.01, depth=1, lr=1e30, epochs=3)
        plans = plan_trials(good + [bad], fits_per_trial=3)
        records: list[dict] = []
        run_trials_on_ray(
            plans, {"p0": ray.put(payload)}, records.append, storage_path=tmp_path / "tune", name="t", max_concurrent=2
        )
        by_key = {r["key"]: r for r in records}
        assert len(records) == 7 and set(by_key) == {f.key for f in good + [bad]}
        assert "error" in by_key[bad.key]
        assert all("error" not in by_key[f.key] for f in good)
        # the sink is the records' one writer: Tune keeps no second copy of the reports
        written = {p.name for p in (tmp_path / "tune").rglob("*")}
        assert not written & {"result.json", "progress.csv"}
        assert not any(name.startswith("events.out.tfevents") for name in written)
        # ... and does not complain, once per trial, that those files are missing
        assert "Failed to fetch metrics" not in "".join(capfd.readouterr())
        # curves travel through Tune with the records
        assert all(len(by_key[f.key]["curves"]["val_accuracy"]) == 5 for f in good if f.head != "lp")
        # The same fits in a plain loop, on one thread as in a trial, give the same numbers bit for
        # bit: Tune changes where a fit runs, not what the fit of a key computes. Timings aside.
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            local: list[dict] = []
            run_trials_locally(plans, {"p0": payload}, local.append)
        finally:
            torch.set_num_threads(threads)

        def numbers(r: dict) -> dict:
            return {k: v for k, v in r["metrics"].items() if "seconds" not in k}

        assert len(local) == len(records)
        for r in local:
            if "error" not in r:
                assert numbers(r) == numbers(by_key[r["key"]]), r["key"]
                assert r["curves"] == by_key[r["key"]]["curves"]
    finally:
        ray.shutdown()
