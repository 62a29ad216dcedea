"""Measurement 3: 52 head fits through Ray Tune (batched trials) vs the same fits in a loop.

Grid, planned by ``benchmark.plan`` from a suite: LP (converged), MLP x 2 depths, NMTune x 5
lambdas x 2 depths, 2 head seeds, 2 data sets (MLP and NMTune fits of a depth train as one batch). Features
as in the quick suite: timm ``test_resnet`` (random
init, 96-d) on MNIST-5k and Animal-MNIST, 2,000 training images split 1,600 / 400 (train / val)
plus the test split, L2-normalised, extracted once through the features stage's own
``extraction.extract_payload``; heads train 15 epochs at batch 128.

Ray (2 CPUs) starts before any timing. Both sides hand records to the same in-memory sink, so
MLflow is out of this comparison (its cost is in the quick-suite breakdown). Rounds interleave
loop and Tune at the suite's settings (16 fits per trial, 2 concurrent trials). Then "null"
sweeps (the same machinery with trials that hold no fits: 1 and 4 trials) price Tune's own cost
without any fit work, a run with one trial at a time gives the ratio free of core contention,
and a probe measures how much two concurrent single-threaded workers gain on this machine at
all. ``NMLBENCH_BENCH_FPT=4,30`` adds runs at other ``fits_per_trial``.
"""

from __future__ import annotations

import os
import tempfile

import benchutil
import pytest
import torch

from benchmark.config import validate_suite
from benchmark.extraction import extract_payload
from benchmark.plan import TrialPlan, make_plan
from benchmark.sweep import run_trials_locally, run_trials_on_ray
from benchmark.trials import plan_trials

SUITE = {
    "name": "bench-sweep",
    "backbones": [{"family": "timm", "arch": "test_resnet", "seed": 0, "image_size": 32}],
    "downstream": {
        "id": ["mnist-5k", "animal-mnist"],
        "methods": ["lp", "mlp", "nmtune"],
        "seeds": [0, 1],
        "max_train": 2000,
        "grid": {"lam": [0.001, 0.01, 0.1, 0.3, 1.0], "depth": [1, 2]},
        "hparams": {"batch_size": 128, "epochs": 15, "preset": "paper"},
    },
}
FITS_PER_TRIAL = 16  # the quick suite's setting
CONCURRENCY = 2  # = CPUs, the runner's default
TARGET = 1.5  # Tune time / loop time, at most
#: Extra single Tune runs at other batch sizes, e.g. NMLBENCH_BENCH_FPT=4,30 (off by default:
#: each costs a sweep's time and the target is met at the suite's setting).
EXTRA_FITS_PER_TRIAL = tuple(int(v) for v in os.environ.get("NMLBENCH_BENCH_FPT", "").split(",") if v.strip())


@pytest.fixture(scope="module")
def sweep_inputs():
    payloads = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-feat-") as root:
        plan = make_plan(validate_suite({**SUITE, "work_dir": root}))
        for pair in plan.pairs:
            payloads[pair.key] = extract_payload(pair, root, None, normalize=True)
    assert len(plan.fits) == 52
    return payloads, plan.fits


def test_tune_sweep_vs_loop(benchmark, sweep_inputs, local_ray):
    import ray

    payloads, fits = sweep_inputs
    refs = {name: ray.put(p) for name, p in payloads.items()}
    sw = benchutil.Stopwatch()
    results: dict[str, dict[str, dict]] = {}
    runs = [0]

    def loop() -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # what each Tune trial uses
        recs: list[dict] = []
        try:
            with sw("loop"):
                run_trials_locally(plan_trials(fits, FITS_PER_TRIAL), payloads, recs.append)
        finally:
            torch.set_num_threads(before)
        results["loop"] = {r["key"]: r for r in recs}

    def tune(fits_per_trial: int = FITS_PER_TRIAL, concurrency: int = CONCURRENCY, null_trials: int = 0) -> None:
        recs: list[dict] = []
        runs[0] += 1
        if null_trials:  # Tune's own cost: trials that fetch the payload and run no fit
            side = f"tune_null_{null_trials}_trials_c{concurrency}"
            plans = [TrialPlan(f"null{i}", next(iter(payloads)), ()) for i in range(null_trials)]
        else:
            side = f"tune_fpt{fits_per_trial}_c{concurrency}"
            plans = plan_trials(fits, fits_per_trial)
        with tempfile.TemporaryDirectory(prefix="bench-tune-") as store:
            with sw(side):
                run_trials_on_ray(
                    plans, refs, recs.append, storage_path=store, name=f"bench-{runs[0]}", max_concurrent=concurrency
                )
        if not null_trials:
            results[side] = {r["key"]: r for r in recs}

    # Interleaved: loop, Tune (timed by pytest-benchmark), null sweeps, Tune one trial at a
    # time, loop again.
    benchmark.pedantic(tune, setup=loop, rounds=1, iterations=1)
    for n in (1, 4):
        tune(null_trials=n)
    tune(concurrency=1)
    for fpt in EXTRA_FITS_PER_TRIAL:
        tune(fits_per_trial=fpt)
    loop()
    scaling = benchutil.parallel_scaling()

    # Correctness: every fit ran once on each side, with the same outcome.
    loop_recs = results["loop"]
    assert len(loop_recs) == len(fits) == 52 and not any("error" in r for r in loop_recs.values())
    for side, recs in results.items():
        assert set(recs) == set(loop_recs), side
        for key, r in recs.items():
            assert r["metrics"]["test_accuracy"] == pytest.approx(loop_recs[key]["metrics"]["test_accuracy"], abs=1e-9)

    t_loop = sw.median("loop")
    main = f"tune_fpt{FITS_PER_TRIAL}_c{CONCURRENCY}"
    fit_s = float(sum(r["metrics"]["fit_seconds"] for r in loop_recs.values()))
    t_null1 = sw.times[f"tune_null_1_trials_c{CONCURRENCY}"][0]
    t_null4 = sw.times[f"tune_null_4_trials_c{CONCURRENCY}"][0]
    benchutil.record(
        benchmark,
        "tune_sweep_vs_loop",
        ratio=sw.median(main) / t_loop,
        target=TARGET,
        higher_is_better=False,
        times_s=sw.times,
        what=f"{len(fits)} head fits: Ray Tune ({FITS_PER_TRIAL} fits/trial, {CONCURRENCY} concurrent trials) "
        "/ plain loop (1 thread)",
        ratio_by_fits_per_trial={
            str(fpt): sw.times[f"tune_fpt{fpt}_c{CONCURRENCY}"][-1] / t_loop
            for fpt in sorted({FITS_PER_TRIAL, *EXTRA_FITS_PER_TRIAL})
        },
        ratio_one_trial_at_a_time=sw.times[f"tune_fpt{FITS_PER_TRIAL}_c1"][0] / t_loop,
        parallel_scaling=scaling,
        tune_fixed_seconds_per_sweep=t_null1 - (t_null4 - t_null1) / 3,
        tune_seconds_per_extra_trial=(t_null4 - t_null1) / 3,
        trials=len(plan_trials(fits, FITS_PER_TRIAL)),
        sum_fit_seconds_loop=fit_s,
        # Fit seconds as measured inside the trials: above the loop's when the two concurrent
        # trials do not get a core each (a shared machine), which no Tune setting can fix.
        sum_fit_seconds_tune=float(sum(r["metrics"]["fit_seconds"] for r in results[main].values())),
        params={
            "fits": len(fits),
            "suite": SUITE,
            "epochs": 15,
            "batch_size": 128,
            "n_train_val": {k: [len(p.train[1]), len(p.val[1])] for k, p in payloads.items()},
            "feature_dim": int(next(iter(payloads.values())).train[0].shape[1]),
            "fits_per_trial": FITS_PER_TRIAL,
            "max_concurrent_trials": CONCURRENCY,
            "ray_cpus": 2,
        },
    )
