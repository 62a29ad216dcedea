"""Run a whole suite: execute the stages of its plan and record what they produce.

The plan (``benchmark.plan.make_plan``) decides everything; this module only executes it, in
the driver process that also owns the MLflow writer:
1. pre-training jobs run as Ray Train fits (``benchmark.pretrain``), reused when done;
2. features of each (backbone, task) pair with fits still to run are extracted by one Ray task
   per backbone through the on-disk cache (``benchmark.extraction``) and stay in the object
   store, beside a small summary per pair (test spectra, feature width); a backbone's task
   starts as soon as its pre-training is done and a trainer's slot is free, while other
   backbones may still pre-train;
3. head fits run as batched Ray Tune trials (``benchmark.sweep``); the spectra are logged by the
   same writer thread as the fits, while the first trials start;
4. every finished job is recorded by the driver as it arrives (``benchmark.tracking``).
Every job is keyed by a config hash, so an interrupted run loses only the work in flight and a
re-run does only what is missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config import Suite, check_data_available
from benchmark.finetune_run import needs_images
from benchmark.hashing import config_hash
from benchmark.plan import PairPlan, Plan, TrialPlan, make_plan
from benchmark.reporting import finish_and_publish
from benchmark.sink import TrackerSink
from benchmark.trials import largest_trials_first, plan_trials

Echo = Callable[[str], None]


@dataclass
class SuiteRun:
    """What ``run_suite`` did: counts and wall time per stage (for the performance report)."""

    suite: str
    tracking_uri: str
    experiment: str
    work_dir: str
    pretrain_total: int = 0
    pretrain_reused: int = 0
    pretrain_failed: list[str] = field(default_factory=list)
    pairs_extracted: int = 0
    pairs_extracted_early: int = 0  # of those, started while pre-training still ran (in a trainer's freed slot)
    fits_total: int = 0
    fits_skipped: int = 0
    fits_run: int = 0
    fits_failed: int = 0
    records_pending: int = 0  # records still in the journal (MLflow away): `nmlbench sync` delivers them
    seconds: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0


def run_suite(
    suite: Suite,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    data_root: str | None = None,
    work_dir: str | None = None,
    max_concurrent: int | None = None,
    echo: Echo = print,
) -> SuiteRun:
    """Run (or resume) a suite; returns counts and stage times. See the module docstring.

    ``address`` (else the suite's ``ray.address``) names a Ray cluster; ``tracking_uri``,
    ``data_root`` and ``work_dir`` override the suite's values.
    """
    from benchmark.ray_session import cluster_resources, init_ray
    from benchmark.tracking import Tracker, journal_path

    t_start = time.perf_counter()
    suite = suite.override(work_dir=work_dir, data_root=data_root)
    work = Path(suite.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    check_data_available(suite)
    uri, experiment = tracking_uri or str(suite.tracking.uri), str(suite.tracking.experiment)
    # Records go to a journal in the work dir first: an MLflow outage never loses or stops them.
    # The store is opened (a new one created: ~2-3 s) and the plan made (~1 s) in threads while
    # Ray starts (~3-5 s): Ray's start mostly waits on its processes, and none needs the others.
    with ThreadPoolExecutor(2, thread_name_prefix="nmlbench-start") as pool:
        opening = pool.submit(
            Tracker, uri, experiment, suite=suite.name, journal=journal_path(work, experiment), echo=echo
        )
        planning = pool.submit(make_plan, suite)
        init_ray(address or suite.ray.address)
        plan, tracker = planning.result(), opening.result()
    run = SuiteRun(suite.name, uri, experiment, str(work), pretrain_total=len(plan.pretrain))
    echo(f"nmlbench: suite {suite.name!r}; MLflow {uri} (experiment {experiment!r}); work dir {work}")

    resources = cluster_resources()
    concurrency = max_concurrent or suite.ray.max_concurrent_trials

    done = tracker.completed_keys("fit")
    features = _FeatureTasks(plan, _pairs_with_missing_fits(plan, done), use_gpu=resources["GPU"] > 0)
    t0 = time.perf_counter()
    plan = _pretrain_stage(plan, tracker, run, concurrency, echo, features)
    run.seconds["pretrain"] = time.perf_counter() - t0

    missing = [f for f in plan.fits if f.key not in done]
    run.fits_total, run.fits_skipped = len(plan.fits), len(plan.fits) - len(missing)
    echo(
        f"[2/4] plan: {len(plan.backbones)} backbones x {len(plan.tasks)} tasks -> {len(plan.fits)} head fits, "
        f"{run.fits_skipped} already in MLflow, {len(missing)} to run"
    )

    t0 = time.perf_counter()
    pairs = _pairs_with_missing_fits(plan, done)
    early = len(features.refs)  # the pairs started in a trainer's freed slot, during pre-training
    refs, summaries = _features_stage(features, pairs, early=early, echo=echo)
    run.pairs_extracted, run.pairs_extracted_early = len(refs), early
    run.seconds["features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    widths = {key: s["width"] for key, s in summaries.items()}
    on_images = [f for f in missing if needs_images(f)]  # fine-tuning: one fit a trial, dearest, so first
    trials = plan_trials(on_images, 1) + largest_trials_first(
        plan_trials([f for f in missing if not needs_images(f)], suite.ray.fits_per_trial), pairs, widths
    )
    if on_images:
        echo(f"      fine-tuning: {len(on_images)} fits train their backbone on images (no feature cache)")
    spectra = _SpectraLog(tracker, pairs, summaries)
    image_pairs = {p.key: (p, plan.data_root) for p in plan.pairs if p.key in {f.pair for f in on_images}}
    _heads_stage(
        suite,
        trials,
        len(missing),
        refs,
        tracker,
        run,
        concurrency,
        resources["GPU"] > 0,
        echo,
        first=spectra,
        image_pairs=image_pairs,
    )
    run.seconds["heads"] = time.perf_counter() - t0
    # Deliver anything queued during an outage, then publish the leaderboard runs and the suite
    # run's table, figures and report (left for `nmlbench sync` if MLflow is still away).
    t0 = time.perf_counter()
    run.records_pending = finish_and_publish(tracker).pending
    run.seconds["publish"] = time.perf_counter() - t0
    run.seconds["total"] = time.perf_counter() - t_start
    run.seconds["other"] = run.seconds["total"] - sum(
        run.seconds[k] for k in ("pretrain", "features", "heads", "publish")
    )
    (work / "runs").mkdir(exist_ok=True)
    (work / "runs" / f"{suite.name}-{int(time.time())}.json").write_text(json.dumps(run.__dict__, indent=2))
    return run


def _pairs_with_missing_fits(plan: Plan, done: set[str]) -> list[PairPlan]:
    """The pairs of ``plan`` with a fit on features whose key is not in ``done``: the ones whose
    features are needed (a fit that trains on images reads no features: ``finetune_run``)."""
    return [p for p in plan.pairs if any(f.key not in done and not needs_images(f) for f in p.fits)]


# -- stage 1 -----------------------------------------------------------------------------------
def _pretrain_stage(
    plan: Plan, tracker: Any, run: SuiteRun, concurrency: int, echo: Echo, features: _FeatureTasks
) -> Plan:
    """Run (or reuse) every pre-training job; the plan without the backbones whose job failed.

    A backbone's feature extraction starts here, before the stage ends, once its job is done
    and a trainer's slot is left free (``run_pretrain_jobs(on_slot_free=...)``): trainer lists
    rarely end together (in the quick suite one ends 13 s before the other) and the idle core
    extracts instead of waiting.
    """
    if not plan.pretrain:
        return plan
    from benchmark.pretrain import run_pretrain_jobs

    echo(f"[1/4] pre-training: {len(plan.pretrain)} jobs (Ray Train)")
    logged = tracker.completed_keys("pretrain")
    failed: list[str] = []
    finished: list[str] = []

    def on_result(r: Any) -> None:  # driver thread, as each job finishes
        if r.error:
            failed.append(r.key)
            run.pretrain_failed.append(f"{r.job.name}: {r.error}")
            echo(f"      FAILED {r.job.name}: {r.error}")
            return
        finished.append(r.key)
        run.pretrain_reused += int(bool(r.reused))
        if r.key not in logged:
            tracker.log_pretrain(r.job, r)
            logged.add(r.key)
        last = r.metrics[-1] if r.metrics else {}
        detail = (
            ""
            if r.reused
            else (
                f" in {r.seconds:.0f} s, loss {last.get('loss', float('nan')):.3f}"
                f", realised noise {r.realised_ratio:.3f}"
            )
        )
        echo(f"      {'reused' if r.reused else 'trained'} {r.job.name}{detail}")

    def on_slot_free() -> None:
        started = features.start(finished)
        if started:
            echo(f"      features: extracting {started} pairs of finished backbones while pre-training goes on")

    run_pretrain_jobs(
        list(plan.pretrain),
        plan.work_dir,
        max_concurrent=min(concurrency, len(plan.pretrain)),
        on_result=on_result,
        on_slot_free=on_slot_free,
    )
    return plan.without_backbones(failed)


# -- stage 2 -----------------------------------------------------------------------------------
class _FeatureTasks:
    """Stage 2's Ray tasks: one per backbone extracts (or reads back) the features of its pairs.

    Started per backbone, so that a backbone's extraction can begin while other backbones still
    pre-train (``start``); ``refs`` maps pair key -> ObjectRef of its payload, ``summaries`` pair
    key -> ObjectRef of its summary (``extraction.payload_summary``), made by the same task.
    """

    def __init__(self, plan: Plan, pairs: list[PairPlan], *, use_gpu: bool) -> None:
        self.cache = str(plan.work_dir / "features")
        self.args = (self.cache, plan.data_root, plan.normalize_features)
        self.groups: dict[str, list[PairPlan]] = {}
        for p in pairs:
            self.groups.setdefault(p.backbone.key, []).append(p)
        self.opts = {"num_cpus": 1, "num_gpus": 1 if use_gpu else 0, "max_retries": 1}
        self.task: Any = None  # the remote function, made on first use
        self.refs: dict[str, Any] = {}  # of the pairs started so far
        self.summaries: dict[str, Any] = {}

    def start(self, backbone_keys: Iterable[str]) -> int:
        """Submit the extraction of each backbone not started yet; the number of pairs submitted."""
        if self.task is None:
            import ray

            from benchmark.extraction import extract_with_summaries

            self.task = ray.remote(**self.opts)(extract_with_summaries)  # type: ignore[call-overload]
        n = 0
        for key in backbone_keys:
            group = self.groups.get(key)
            if not group or group[0].key in self.refs:
                continue
            out = self.task.options(num_returns=2 * len(group)).remote(group, *self.args)
            keys = [p.key for p in group]
            self.refs.update(zip(keys, out[: len(group)]))
            self.summaries.update(zip(keys, out[len(group) :]))
            n += len(group)
        return n

    def wait(self, pairs: list[PairPlan]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Start what is not started yet, wait for every pair of ``pairs``; (pair key -> ObjectRef
        of its payload, pair key -> its summary)."""
        import ray

        self.start(dict.fromkeys(p.backbone.key for p in pairs))
        refs = {p.key: self.refs[p.key] for p in pairs}
        _wait_all(refs)
        return refs, dict(zip(refs, ray.get([self.summaries[key] for key in refs])))


def _features_stage(
    features: _FeatureTasks, pairs: list[PairPlan], *, early: int, echo: Echo
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The features of ``pairs`` (``early`` of them started during pre-training); (pair key ->
    ObjectRef of its payload, pair key -> its summary: test spectra and feature width)."""
    if not pairs:
        return {}, {}
    backbones = len({p.backbone.key for p in pairs})
    started = f", {early} started during pre-training" if early else ""
    echo(
        f"[3/4] features: {len(pairs)} (backbone, task) pairs of {backbones} backbones{started}, "
        f"cached under {features.cache}"
    )
    return features.wait(pairs)


def _wait_all(refs: dict[str, Any]) -> None:
    import ray
    from tqdm.auto import tqdm

    pending = list(refs.values())
    with tqdm(total=len(pending), desc="features", unit="pair", mininterval=1.0) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)  # surface extraction errors here, naming the task
            bar.update(len(ready))


@dataclass
class _SpectraLog:
    """Logs each pair's test spectra (from its summary) when called.

    Called by the fit records' writer thread before the first record: the spectra are written
    while the first trials start, not in the driver between stages while a core waits.
    """

    tracker: Any
    pairs: list[PairPlan]
    summaries: dict[str, dict[str, Any]]

    def __call__(self) -> None:
        for pair in self.pairs:
            for name, values in self.summaries[pair.key]["spectra"].items():
                task = pair.task.name if name == "test" else f"{pair.task.name}/{name}"
                self.tracker.log_spectrum(pair.backbone.params, task, values)


# -- stage 3 -----------------------------------------------------------------------------------
def _heads_stage(
    suite: Suite,
    trials: list[TrialPlan],
    n_fits: int,
    refs: dict[str, Any],
    tracker: Any,
    run: SuiteRun,
    concurrency: int,
    use_gpu: bool,
    echo: Echo,
    first: Callable[[], None] | None = None,
    image_pairs: dict[str, tuple[PairPlan, str | None]] | None = None,
) -> None:
    """Run the trials in their order (``largest_trials_first``), recording fits as they arrive;
    ``first`` is run by the records' writer before the first record (or here, with no trials).
    ``image_pairs``: the pairs whose trials fine-tune on images instead of reading features."""
    from benchmark.sweep import run_trials_on_ray

    if not trials:
        if first is not None:
            first()
        return
    echo(f"[4/4] heads: {n_fits} fits in {len(trials)} Ray Tune trials, largest first")
    sink = TrackerSink(tracker, n_fits, first=first)
    try:
        run_trials_on_ray(
            trials,
            refs,
            sink,
            storage_path=Path(suite.work_dir) / "ray_results",
            name=f"sweep-{suite.name}-{config_hash([t.trial_id for t in trials], 8)}",
            max_concurrent=concurrency,
            gpus_per_trial=(1.0 / concurrency) if use_gpu else 0.0,
            image_pairs=image_pairs,
        )
    except BaseException:
        sink.close(raise_error=False)  # keep what finished, then let the sweep's own error through
        raise
    sink.close()
    run.fits_run, run.fits_failed, run.fit_seconds = sink.ok, sink.failed, sink.fit_seconds
