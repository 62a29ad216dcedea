"""Downstream sweeps: many head fits on cached features, run as Ray Tune trials.

Why the shape below:
- The backbone is frozen, so each (backbone, task) pair's features are computed once and put in
  Ray's object store once (``FeaturePayload``); every trial on that pair reads the same object.
- One head fit lasts well under a second on small features, while a Tune trial costs about a
  second of scheduling. So a trial is a *batch* of fits on one pair (``TrialPlan``), and Tune's
  overhead is paid per batch, not per fit.
- Each fit carries its full config and is keyed by a hash of it. The driver's callback logs every
  finished fit to MLflow as it arrives (one writer, nothing lost on interrupt), and a re-run
  skips keys MLflow already holds.
- A fit that raises is recorded as a failure with its error; the sweep goes on.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.hashing import config_hash

#: Evaluation sets inside a payload that are not test sets.
VAL_SET = "val"


@dataclass(frozen=True)
class HeadConfig:
    """One point of the downstream grid for one (backbone, task) pair."""

    method: str
    lam: float | None = None
    depth: int | None = None
    head_seed: int = 0
    fraction: float = 1.0
    hparams: tuple[tuple[str, Any], ...] = ()  # extra fit hyper-parameters (epochs, lr, ...)

    def fit_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(self.hparams)
        if self.method in ("mlp", "nmtune") and self.depth is not None:
            kw["depth"] = self.depth
        if self.method == "nmtune" and self.lam is not None:
            kw["lam"] = self.lam
        return kw


@dataclass(frozen=True)
class FitSpec:
    """A head fit with everything needed to run, key and record it."""

    key: str
    pair: str                    # id of the (backbone, task) payload it reads
    head: HeadConfig
    params: dict[str, Any]       # MLflow params (backbone, noise ratio, task, method, ...)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class FeaturePayload:
    """Features of one (backbone, task) pair: train, val and one or more test sets.

    Arrays are float32 numpy (zero-copy out of Ray's object store) and already L2-normalised
    when the suite asks for it. ``class_subsets`` restricts the competing logits of a test set
    (ImageNet-A/-R style label spaces).
    """

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    tests: dict[str, tuple[np.ndarray, np.ndarray]]
    num_classes: int
    class_subsets: dict[str, np.ndarray] = field(default_factory=dict)


def fit_key(pair_identity: dict[str, Any], head: HeadConfig) -> str:
    """Key of one fit: what the features are (backbone identity, splits) and how the head is fit."""
    return config_hash({"kind": "fit", "pair": pair_identity, "head": asdict(head)})


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded, stratified ``fraction`` of ``labels`` (at least one per class).

    Nested by construction: for the same seed, a smaller fraction keeps a prefix of each
    class's permutation, so the 2 % subset lies inside the 5 % subset.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        keep.append(idx[: max(1, int(round(fraction * len(idx))))])
    return np.sort(np.concatenate(keep))


def run_fit(payload: FeaturePayload, spec: FitSpec) -> dict[str, Any]:
    """Fit one head on a payload and turn the result into an MLflow record (never raises)."""
    import torch

    from benchmark.probe import fit_and_evaluate

    started = time.perf_counter()
    head = spec.head
    try:
        x, y = payload.train
        if head.fraction < 1.0:
            idx = stratified_fraction(y, head.fraction, seed=1000 + head.head_seed)
            x, y = x[idx], y[idx]
        sets = {VAL_SET: payload.val, **payload.tests}
        test_x = {k: torch.from_numpy(np.array(v[0], dtype=np.float32)) for k, v in sets.items()}
        test_y = {k: torch.from_numpy(np.array(v[1], dtype=np.int64)) for k, v in sets.items()}
        result = fit_and_evaluate(
            head.method,
            torch.from_numpy(np.array(x, dtype=np.float32)),
            torch.from_numpy(np.array(y, dtype=np.int64)),
            test_x,
            test_y,
            seed=head.head_seed,
            class_subsets=payload.class_subsets or None,
            num_classes=payload.num_classes,
            **head.fit_kwargs(),
        )
    except Exception as exc:  # recorded, not raised: one bad fit must not stop the sweep
        return {
            "key": spec.key,
            "params": spec.params,
            "tags": spec.tags,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    return make_record(spec, result, list(payload.tests), time.perf_counter() - started)


def make_record(spec: FitSpec, result: dict[str, Any], test_sets: Sequence[str],
                seconds: float) -> dict[str, Any]:
    """Flatten a ``fit_and_evaluate`` result into the fit record of docs/architecture.md."""
    ev = result["eval"]
    metrics: dict[str, float] = {"val_accuracy": ev[VAL_SET]["accuracy"], "fit_seconds": seconds}
    for name, m in ev.items():
        for k in ("accuracy", "macro_f1", "sve", "lsvr", "sve_raw", "lsvr_raw"):
            if k in m and m[k] is not None:
                metrics[f"{name}.{k}"] = float(m[k])
    for k, out in (("accuracy", "test_accuracy"), ("macro_f1", "test_macro_f1"), ("sve", "test_sve"),
                   ("lsvr", "test_lsvr"), ("sve_raw", "test_sve_raw"), ("lsvr_raw", "test_lsvr_raw")):
        vals = [ev[s][k] for s in test_sets if ev[s].get(k) is not None]
        if vals:
            metrics[out] = float(np.mean(vals))
    if result.get("train_loss") is not None and math.isfinite(result["train_loss"]):
        metrics["train_loss"] = float(result["train_loss"])
    params = dict(spec.params)
    params.update({f"hp.{k}": v for k, v in result.get("hparams", {}).items()})
    return {"key": spec.key, "params": params, "metrics": metrics, "tags": spec.tags}


# --------------------------------------------------------------------------------------------
# Planning: group missing fits into trials
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialPlan:
    """A batch of fits on one payload: the unit Ray Tune schedules."""

    trial_id: str
    pair: str
    fits: tuple[FitSpec, ...]


def plan_trials(fits: Iterable[FitSpec], fits_per_trial: int = 16) -> list[TrialPlan]:
    """Batch fits by payload, ``fits_per_trial`` at most per trial, in a stable order."""
    by_pair: dict[str, list[FitSpec]] = {}
    for f in fits:
        by_pair.setdefault(f.pair, []).append(f)
    plans = []
    for pair in sorted(by_pair):
        group = sorted(by_pair[pair], key=lambda f: f.key)
        for i in range(0, len(group), max(1, fits_per_trial)):
            chunk = tuple(group[i : i + fits_per_trial])
            plans.append(TrialPlan(config_hash([f.key for f in chunk]), pair, chunk))
    return plans


# --------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------
RecordSink = Callable[[dict[str, Any]], None]


def run_trials_locally(plans: Sequence[TrialPlan], payloads: dict[str, FeaturePayload],
                       sink: RecordSink) -> None:
    """The same fits in a plain Python loop (reference for the Tune overhead benchmark)."""
    for plan in plans:
        for spec in plan.fits:
            sink(run_fit(payloads[plan.pair], spec))


def _tune_trial(config: dict[str, Any], plans: dict[str, TrialPlan], payload_refs: dict[str, Any]) -> None:
    """Body of one Tune trial: fetch the pair's features once, run its batch, report each fit."""
    import ray
    import torch
    from ray import tune

    torch.set_num_threads(1)
    plan = plans[config["trial"]]
    payload = ray.get(payload_refs[plan.pair])
    for spec in plan.fits:
        record = run_fit(payload, spec)
        tune.report({"record": json.dumps(record, default=_json_default)})


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def run_trials_on_ray(plans: Sequence[TrialPlan], payload_refs: dict[str, Any], sink: RecordSink,
                      *, storage_path: str | Path, name: str, max_concurrent: int | None = None,
                      gpus_per_trial: float = 0.0) -> None:
    """Run trial plans as Ray Tune trials; ``sink`` receives each fit record in the driver.

    ``payload_refs`` maps pair id -> ObjectRef of a ``FeaturePayload`` already in the object
    store; ``tune.with_parameters`` ships the (small) ref dict once, not per trial.
    """
    if not plans:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no per-trial tables
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")  # MLflow writes in the callback take ~10-100 ms
    from ray import tune

    plan_map = {p.trial_id: p for p in plans}
    expected = {p.trial_id: {f.key for f in p.fits} for p in plans}

    callback = _DriverSink(sink, plan_map, expected)

    trainable = tune.with_parameters(_tune_trial, plans=plan_map, payload_refs=payload_refs)
    trainable = tune.with_resources(trainable, {"cpu": 1, "gpu": gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(sorted(plan_map))},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()),
            callbacks=[callback],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
    tuner.fit()


def _make_driver_sink_class():
    from ray import tune

    class DriverSink(tune.Callback):
        """Runs in the driver: the only place that writes to MLflow.

        Tune pickles its callbacks with the experiment state; the sink (an MLflow client, a
        progress bar) is process-local, so it is dropped from the pickled state.
        """

        def __init__(self, sink: RecordSink, plans: dict[str, TrialPlan], expected: dict[str, set[str]]) -> None:
            self.sink, self.plans, self.expected = sink, plans, expected
            self.seen: dict[str, set[str]] = {}

        def __getstate__(self) -> dict[str, Any]:
            return {"seen": self.seen, "sink": None, "plans": {}, "expected": {}}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            record = json.loads(result["record"])
            self.seen.setdefault(trial.config["trial"], set()).add(record["key"])
            self.sink(record)

        def on_trial_error(self, iteration, trials, trial, **info):
            # The whole trial died (worker crash, OOM): every fit it had not reported fails.
            tid = trial.config["trial"]
            missing = self.expected[tid] - self.seen.get(tid, set())
            err = str(getattr(trial, "error_file", "") or "trial process failed")
            for spec in self.plans[tid].fits:
                if spec.key in missing:
                    self.sink({"key": spec.key, "params": spec.params, "tags": spec.tags,
                               "error": f"trial {tid} failed before this fit finished: {err}"})

    return DriverSink


def _DriverSink(sink: RecordSink, plans: dict[str, TrialPlan], expected: dict[str, set[str]]):
    return _make_driver_sink_class()(sink, plans, expected)
