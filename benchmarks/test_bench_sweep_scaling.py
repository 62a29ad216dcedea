"""Measurement 7: does a sweep scale? Wall time per fit at about 60, 600 and 3,000 fits on the same features.

Every sweep runs through the real heads stage: ``plan_trials`` (batch groups kept whole, at most
``ray.fits_per_trial`` fits per trial) and ``run_trials_on_ray`` on a private 2-CPU Ray instance
started before any timing, records handed to an in-memory sink. The fits: MLP and NMTune
(depth 1, 5 epochs, batch 128, best epoch on validation) over lam x lr x head seeds on one pair
(timm ``test_resnet``, random init, 96-d features of 1,600 / 400 MNIST-5k rows); the seeds grow
with the sweep, so each smaller sweep's fits are part of the larger ones. Per-fit cost = sweep
wall time / fits. It should stay flat or fall as the sweep grows: Tune's fixed cost is spread
over more fits, and a trial's batch is as large at 3,000 fits as at 600.
``NMLBENCH_BENCH_SCALING_FPT=16,64`` also times the 3,000-fit sweep at other ``fits_per_trial``.
"""

from __future__ import annotations

import os
import tempfile

import benchutil
import pytest

from benchmark.config import validate_suite
from benchmark.extraction import extract_payload
from benchmark.heads import resolve_hparams
from benchmark.plan import FitSpec, fit_key, make_plan
from benchmark.sweep import run_trials_on_ray
from benchmark.trials import plan_trials

BACKBONE = {"family": "timm", "arch": "test_resnet", "seed": 0, "image_size": 32}
LAMS = (0.003, 0.01, 0.03, 0.1, 0.3)
LRS = (1e-3, 3e-3, 1e-2)
PER_SEED = len(LRS) * (1 + len(LAMS))  # MLP x lr + NMTune x lam x lr = 18
SIZES = {"60": 4, "600": 34, "3000": 167}  # head seeds -> 72, 612, 3,006 fits
FITS_PER_TRIAL = 16  # the suites' setting
CONCURRENCY = 2
TARGET = 1.0  # per-fit cost at 3,000 fits / per-fit cost at 60 fits, at most
EXTRA_FPT = tuple(int(v) for v in os.environ.get("NMLBENCH_BENCH_SCALING_FPT", "").split(",") if v.strip())


def _fits(pair: str, seeds: int) -> list[FitSpec]:
    out = []
    for seed in range(seeds):
        for lr in LRS:
            hps = [resolve_hparams("mlp", lr=lr, epochs=5, batch_size=128)]
            hps += [resolve_hparams("nmtune", lr=lr, lam=lam, preset="paper", epochs=5, batch_size=128) for lam in LAMS]
            for hp in hps:
                out.append(
                    FitSpec(
                        fit_key(pair, hp, seed, 1.0),
                        pair,
                        hp,
                        seed,
                        1.0,
                        None,
                        {"method": hp.head, **hp.as_dict(), "head_seed": seed},
                        {"nmlbench.kind": "fit"},
                    )
                )
    return out


@pytest.fixture(scope="module")
def pair_payload():
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as root:
        suite = validate_suite(
            {
                "name": "bench-scaling",
                "work_dir": root,
                "backbones": [BACKBONE],
                "downstream": {"id": ["mnist-5k"], "methods": ["mlp"], "max_train": 2000},
            }
        )
        [pair] = make_plan(suite).pairs
        return pair.key, extract_payload(pair, root, None, normalize=True)


def test_sweep_cost_per_fit_as_the_sweep_grows(benchmark, pair_payload, local_ray):
    import ray

    pair, payload = pair_payload
    refs = {pair: ray.put(payload)}
    sw = benchutil.Stopwatch()
    records: dict[str, dict[str, dict]] = {}
    runs = [0]

    def sweep(size: str, fits_per_trial: int = FITS_PER_TRIAL) -> None:
        fits = _fits(pair, SIZES[size])
        trials = plan_trials(fits, fits_per_trial)
        got: list[dict] = []
        runs[0] += 1
        side = f"{size}_fits" if fits_per_trial == FITS_PER_TRIAL else f"{size}_fits_fpt{fits_per_trial}"
        with tempfile.TemporaryDirectory(prefix="bench-scaling-tune-") as store:
            with sw(side):
                run_trials_on_ray(
                    trials, refs, got.append, storage_path=store, name=f"scaling-{runs[0]}", max_concurrent=CONCURRENCY
                )
        assert len(got) == len(fits) and {r["key"] for r in got} == {f.key for f in fits}
        records[side] = {r["key"]: r for r in got}

    sweep("60")  # warm: Ray workers and imports, so the small sweep is not charged for start-up
    benchmark.pedantic(lambda: sweep("3000"), setup=lambda: sweep("600"), rounds=1, iterations=1)
    sweep("60")
    for fpt in EXTRA_FPT:
        sweep("3000", fpt)

    # Correctness: no fit failed, and a fit gives the same result in every sweep it is part of.
    for side, recs in records.items():
        assert not any("error" in r for r in recs.values()), side
    small = records["60_fits"]
    for side, recs in records.items():
        for key, r in small.items():
            assert abs(recs[key]["metrics"]["test_accuracy"] - r["metrics"]["test_accuracy"]) <= 0.001, side

    n = {size: len(_fits(pair, s)) for size, s in SIZES.items()}
    per_fit = {size: min(sw.times[f"{size}_fits"]) / n[size] for size in SIZES}
    benchutil.record(
        benchmark,
        "sweep_cost_per_fit_scaling",
        ratio=per_fit["3000"] / per_fit["60"],
        target=TARGET,
        higher_is_better=False,
        times_s=sw.times,
        what=f"Ray Tune sweep on one pair: seconds per fit at {n['3000']} fits / at {n['60']} fits",
        seconds_per_fit={n[s]: per_fit[s] for s in SIZES},
        ratio_600_vs_60=per_fit["600"] / per_fit["60"],
        trials={n[s]: len(plan_trials(_fits(pair, SIZES[s]), FITS_PER_TRIAL)) for s in SIZES},
        seconds_per_fit_by_fits_per_trial={fpt: min(sw.times[f"3000_fits_fpt{fpt}"]) / n["3000"] for fpt in EXTRA_FPT},
        fit_seconds_inside_trials={
            n[s]: sum(r["metrics"]["fit_seconds"] for r in records[f"{s}_fits"].values()) for s in SIZES
        },
        params={
            "fits": n,
            "fits_per_trial": FITS_PER_TRIAL,
            "max_concurrent_trials": CONCURRENCY,
            "ray_cpus": 2,
            "lams": LAMS,
            "lrs": LRS,
            "epochs": 5,
            "batch_size": 128,
            "backbone": BACKBONE,
            "n_train_val": [len(payload.train[1]), len(payload.val[1])],
        },
    )
