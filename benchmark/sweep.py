"""The heads stage: many head fits on cached features, run as Ray Tune trials.

Why the shape below:
- The backbone is frozen, so each (backbone, task) pair's features are computed once and put in
  Ray's object store once (``FeaturePayload``); every trial on that pair reads the same object.
- One head fit lasts well under a second on small features, while a Tune trial costs about a
  second of scheduling. So a trial is a *batch* of planned fits on one pair
  (``benchmark.plan.TrialPlan``): Tune's overhead is paid per batch, and the pair's features are
  validated and moved to the device once per trial (``prepare_payload``) for the probe.
- Inside a trial the fits that can share a computation (``HParams.batch_key`` and training rows:
  the seeds, learning rates and NMTune weights of one architecture) train as one batch
  (``probe.iter_fit_many``), and each batch group's records go to the driver in one Tune report:
  Tune's cost per report is paid per group, not per fit. ``plan_trials`` keeps groups whole.
- Each fit carries its full config and key from the plan. The driver's callback hands every
  finished fit to the recording sink as it arrives (one writer, nothing lost on interrupt).
- A fit that raises is recorded as a failure with its error; the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.extraction import FeaturePayload
from benchmark.metrics import metric_names
from benchmark.names import fit_name
from benchmark.noise.downstream import LabelNoiseSetting, label_noise_groups, noisy_payload, with_label_noise
from benchmark.plan import FitSpec, PairPlan, TrialPlan

log = logging.getLogger(__name__)
#: The evaluation set inside a payload that is not a test set.
VAL_SET = "val"
RecordSink = Callable[[dict[str, Any]], None]


def prepare_payload(payload: FeaturePayload) -> Any:
    """The payload as the probe's ``PreparedData``: validation set ``val`` (selection), then the tests."""
    import torch

    from benchmark.probe import prepare_data

    sets = {VAL_SET: payload.val, **payload.tests}
    return prepare_data(
        torch.from_numpy(np.array(payload.train[0], dtype=np.float32)),
        torch.from_numpy(np.array(payload.train[1], dtype=np.int64)),
        {k: torch.from_numpy(np.array(v[0], dtype=np.float32)) for k, v in sets.items()},
        {k: torch.from_numpy(np.array(v[1], dtype=np.int64)) for k, v in sets.items()},
        class_subsets=payload.class_subsets or None,
        num_classes=payload.num_classes,
        selection_set=VAL_SET,
    )


def iter_fit_batches(payload: FeaturePayload, specs: Sequence[FitSpec]) -> Iterator[list[dict[str, Any]]]:
    """Fit planned heads on one pair's payload; yield the records of each batch group as it ends.

    The payload is validated and moved once for all specs; the fits that can share a computation
    are trained as one batch (``probe.iter_fit_many``), each with its own record; a fit that fails
    (diverges) gets an error record and the others go on. A payload the probe rejects fails every
    spec alike. Never raises.

    Fits with downstream label noise (``FitSpec.label_noise``) see the payload's train (and,
    when noisy, validation) labels corrupted first, one setting at a time; the test sets are
    passed on as they are (``benchmark.noise.downstream``).
    """
    for noise, group in label_noise_groups(specs):
        yield from _fit_batches(payload, group, noise)


def _fit_batches(
    payload: FeaturePayload, specs: Sequence[FitSpec], noise: LabelNoiseSetting | None
) -> Iterator[list[dict[str, Any]]]:
    """:func:`iter_fit_batches` for specs that share one label-noise setting."""
    from benchmark.probe import FitRequest, iter_fit_many

    started = time.perf_counter()
    try:
        payload, noisy = noisy_payload(payload, noise)
        data = prepare_payload(payload)
    except Exception as exc:  # noqa: BLE001 - recorded for every fit of the pair
        yield [error_record(spec, f"{type(exc).__name__}: {exc}", traceback.format_exc()) for spec in specs]
        return
    requests = [FitRequest(spec.hparams, spec.head_seed, spec.train_rows) for spec in specs]
    batch: list[dict[str, Any]] = []
    pending = None
    for pos, result in iter_fit_many(data, requests):
        group = result.get("batch_members", 1)
        spec = specs[pos]
        if "error" in result:
            batch.append(error_record(spec, result["error"], result["traceback"]))
        else:
            batch.append(with_label_noise(make_record(spec, result, list(payload.tests), result["seconds"]), noisy))
        pending = group if pending is None else pending
        if len(batch) >= pending:
            yield batch
            batch, pending = [], None
    if batch:
        yield batch
    log.debug("%d fits in %.2f s", len(specs), time.perf_counter() - started)


def iter_fits(payload: FeaturePayload, specs: Sequence[FitSpec]) -> Iterator[dict[str, Any]]:
    """:func:`iter_fit_batches`, one record at a time."""
    for batch in iter_fit_batches(payload, specs):
        yield from batch


def run_fits(payload: FeaturePayload, specs: Sequence[FitSpec]) -> list[dict[str, Any]]:
    """:func:`iter_fits` as a list."""
    return list(iter_fits(payload, specs))


def error_record(spec: FitSpec, error: str, tb: str = "") -> dict[str, Any]:
    return {"key": spec.key, "params": spec.params, "tags": spec.tags, "error": error, "traceback": tb}


def make_record(spec: FitSpec, result: dict[str, Any], test_sets: Sequence[str], seconds: float) -> dict[str, Any]:
    """Flatten a fit result into the fit record of docs/architecture.md.

    Every registered metric (``benchmark.metrics``) is recorded per evaluation set
    (``<set>.<metric>``) and as the mean over the task's test sets (``test_<metric>``).

    Besides params, metrics and tags the record carries ``curves`` (lists per epoch, or per L2
    value for ``lp``; see ``benchmark.probe``) for the tracker to log as step metrics; the fit's
    ``summary`` scalars (``best_epoch``; ``chosen_l2``, ``converged`` ...) become metrics.
    """
    ev = result["eval"]
    names = metric_names()  # the metric registry: every registered metric, per set and over the tests
    metrics: dict[str, float] = {"val_accuracy": ev[VAL_SET]["accuracy"], "fit_seconds": seconds}
    for name, m in ev.items():
        for k in names:
            if m.get(k) is not None:
                metrics[f"{name}.{k}"] = float(m[k])
    for k in names:
        vals = [ev[s][k] for s in test_sets if ev[s].get(k) is not None]
        if vals:
            metrics[f"test_{k}"] = float(np.mean(vals))
    if result.get("train_loss") is not None and math.isfinite(result["train_loss"]):
        metrics["train_loss"] = float(result["train_loss"])
    if result.get("train_rows") is not None:  # what the head saw: the few-shot share, after max_train and validation
        metrics["train_rows"] = float(result["train_rows"])
    for k, v in (result.get("summary") or {}).items():
        metrics[k] = float(v)
    if result.get("batch_members") is not None:
        metrics["batch_members"] = float(result["batch_members"])
    return {
        "key": spec.key,
        "params": dict(spec.params),
        "metrics": metrics,
        "tags": spec.tags,
        "curves": {k: [float(v) for v in vals] for k, vals in (result.get("curves") or {}).items()},
    }


def flag_warning(record: dict[str, Any]) -> str | None:
    """The warning for a fit whose record says ``near_chance`` (``probe.health``), else None."""
    m = record.get("metrics") or {}
    if not m.get("near_chance"):
        return None
    return (
        f"fit '{fit_name(record.get('params') or {})}' (key {record.get('key')}) stayed near chance on "
        f"validation: accuracy {m.get('val_accuracy', float('nan')):.3f} against chance "
        f"{m.get('chance', float('nan')):.3f}, while it fits its training rows at "
        f"{m.get('train_accuracy', float('nan')):.3f}. Likely cause: the head is evaluated differently "
        "from how it trained (BatchNorm statistics), its budget is too short for the features' scale "
        "(raise epochs or lr), or it memorises its training rows; its leaderboard row is marked."
    )


def _deliver(sink: RecordSink, record: dict[str, Any]) -> None:
    """Hand a record to the sink, warning first (in the driver) if the fit is flagged."""
    warning = flag_warning(record)
    if warning:
        log.warning(warning)
    sink(record)


# -- execution ---------------------------------------------------------------------------------
def run_trials_locally(plans: Sequence[TrialPlan], payloads: dict[str, FeaturePayload], sink: RecordSink) -> None:
    """The same fits in a plain Python loop (reference for the Tune overhead benchmark)."""
    for plan in plans:
        for record in iter_fits(payloads[plan.pair], plan.fits):
            _deliver(sink, record)


def _tune_trial(
    config: dict[str, Any],
    plans: dict[str, TrialPlan],
    payload_refs: dict[str, Any],
    image_pairs: dict[str, tuple[PairPlan, str | None]] | None = None,
) -> None:
    """Body of one Tune trial: fetch the pair's features once, run its batch, report each fit.

    A trial of fits that train on images (``image_pairs``: pair key -> (pair, data root)) loads
    the backbone and the images instead (``finetune_run``); the runner plans those apart.
    """
    import ray
    import torch
    from ray import tune

    from benchmark.finetune_run import iter_image_fit_batches, needs_images

    torch.set_num_threads(1)
    plan = plans[config["trial"]]
    if image_pairs and plan.pair in image_pairs and needs_images(plan.fits[0]):
        pair, data_root = image_pairs[plan.pair]
        batches = iter_image_fit_batches(pair, plan.fits, data_root)
    else:
        batches = iter_fit_batches(ray.get(payload_refs[plan.pair]), plan.fits)
    for batch in batches:  # one report per batch group: Tune's cost is per report
        tune.report({"records": json.dumps(batch, default=_json_default)})


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def run_trials_on_ray(
    plans: Sequence[TrialPlan],
    payload_refs: dict[str, Any],
    sink: RecordSink,
    *,
    storage_path: str | Path,
    name: str,
    max_concurrent: int | None = None,
    gpus_per_trial: float = 0.0,
    image_pairs: dict[str, tuple[PairPlan, str | None]] | None = None,
) -> None:
    """Run trial plans as Ray Tune trials; ``sink`` receives each fit record in the driver.

    ``payload_refs`` maps pair id -> ObjectRef of a ``FeaturePayload`` already in the object
    store; ``tune.with_parameters`` ships the (small) ref dict once, not per trial. Trials start
    in the order of ``plans`` (the runner puts the largest first: ``trials.largest_trials_first``).
    ``image_pairs``: the pairs whose trials fine-tune on images (``_tune_trial``).
    """
    if not plans:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no per-trial tables
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")  # MLflow writes in the callback take ~10-100 ms
    # The records' one writer is the driver's sink (journal, then MLflow). Tune's automatic CSV,
    # JSON and TensorBoard loggers wrote a second copy of every report (the fit records with
    # their curves: 2.5 MB and 42 event files for the quick suite), in the driver, never read.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    from ray import tune

    plan_map = {p.trial_id: p for p in plans}
    expected = {p.trial_id: {f.key for f in p.fits} for p in plans}

    callback = _DriverSink(sink, plan_map, expected)

    trainable = tune.with_parameters(_tune_trial, plans=plan_map, payload_refs=payload_refs, image_pairs=image_pairs)
    trainable = tune.with_resources(trainable, {"cpu": 1, "gpu": gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([p.trial_id for p in plans])},  # Tune starts them in this order
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()),
            callbacks=[callback],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
    # The result grid Tuner.fit builds at the end would read those files and warn, trial by
    # trial, that they are missing; nothing reads that grid (the sink has every record).
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis_log.level
    analysis_log.setLevel(logging.ERROR)
    try:
        tuner.fit()
    finally:
        analysis_log.setLevel(level)


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
            for record in json.loads(result["records"]):
                self.seen.setdefault(trial.config["trial"], set()).add(record["key"])
                _deliver(self.sink, record)

        def on_trial_error(self, iteration, trials, trial, **info):
            # The whole trial died (worker crash, OOM): every fit it had not reported fails.
            tid = trial.config["trial"]
            missing = self.expected[tid] - self.seen.get(tid, set())
            err = str(getattr(trial, "error_file", "") or "trial process failed")
            for spec in self.plans[tid].fits:
                if spec.key in missing:
                    self.sink(
                        {
                            "key": spec.key,
                            "params": spec.params,
                            "tags": spec.tags,
                            "error": f"trial {tid} failed before this fit finished: {err}",
                        }
                    )

    return DriverSink


def _DriverSink(sink: RecordSink, plans: dict[str, TrialPlan], expected: dict[str, set[str]]):
    return _make_driver_sink_class()(sink, plans, expected)
