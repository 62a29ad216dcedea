"""Run a whole suite: pre-training -> features -> head sweep -> MLflow -> leaderboard.

The driver process owns the plan and the MLflow writer; Ray does the work:
- pre-training jobs run as Ray Train fits (``pretrain.run_pretrain_jobs``), reused when done;
- features of each (backbone, task) pair are extracted by one Ray task, through the on-disk
  feature cache, and stay in the object store for every trial on that pair;
- head fits run as batched Ray Tune trials (``sweep``), logged by the driver as they finish.
Every stage is keyed by config hashes, so an interrupted run loses only the work in flight and
a re-run does only what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.hashing import config_hash
from benchmark.sweep import FeaturePayload, FitSpec, HeadConfig, fit_key, plan_trials

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Plan objects (plain data, cheap to pickle to Ray workers)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneEntry:
    """A frozen backbone the downstream sweep evaluates."""

    spec: dict[str, Any]         # passed to backbones.create_backbone
    key: str                     # stable id (pre-training key, or hash of the frozen spec)
    params: dict[str, Any]       # backbone, objective, noise_kind, noise_ratio, pretrain_seed


@dataclass(frozen=True)
class SplitRef:
    """A split named by data set, split and row indices: rebuilt cheaply inside a worker."""

    dataset: str
    split: str
    indices: tuple[int, ...] | None = None

    def fingerprint(self) -> str:
        idx = "all" if self.indices is None else config_hash(list(self.indices))
        return f"{self.dataset}/{self.split}/{idx}"


@dataclass(frozen=True)
class TaskDef:
    """A downstream task: an ID data set, or an OOD group (train domain + test domains)."""

    name: str
    kind: str                    # "id" | "ood"
    train: SplitRef
    val: SplitRef
    tests: tuple[tuple[str, SplitRef], ...]
    num_classes: int

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "train": self.train.fingerprint(),
                "val": self.val.fingerprint(),
                "tests": {k: v.fingerprint() for k, v in self.tests}}


@dataclass
class SuiteRun:
    """What ``run_suite`` did: counts and wall time per phase (for the perf report)."""

    suite: str
    tracking_uri: str
    experiment: str
    work_dir: str
    pretrain_total: int = 0
    pretrain_reused: int = 0
    pretrain_failed: list[str] = field(default_factory=list)
    fits_total: int = 0
    fits_skipped: int = 0
    fits_run: int = 0
    fits_failed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------
def init_ray(address: str | None = None) -> None:
    """Local Ray by default; a cluster when ``address`` (or RAY_ADDRESS, set in Ray jobs) is given."""
    import ray

    if ray.is_initialized():
        return
    # Worker logs (Ray Train's checkpoint chatter) stay in Ray's log files unless asked for;
    # the driver prints its own progress.
    kw: dict[str, Any] = {"logging_level": logging.WARNING,
                          "log_to_driver": os.environ.get("NMLBENCH_RAY_LOGS", "0") == "1"}
    if address:
        ray.init(address=address, **kw)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**kw)
    else:
        # "local" always starts a private instance: a bare ray.init() would attach to whatever
        # head `ray start` left registered in /tmp/ray (possibly dead). Use --address auto for that.
        ray.init(address="local", include_dashboard=False, **kw)


# --------------------------------------------------------------------------------------------
# Building the plan
# --------------------------------------------------------------------------------------------
def _cap_indices(labels: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """A seeded, stratified subset of at most ``cap`` rows (all rows when cap is None)."""
    n = len(labels)
    if cap is None or cap >= n:
        return np.arange(n)
    from benchmark.sweep import stratified_fraction

    return stratified_fraction(labels, cap / n, seed)[:cap]


def _train_val(labels: np.ndarray, idx: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of ``idx`` (rows of a train split) into train and validation rows."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    sub = labels[idx]
    for c in np.unique(sub):
        rows = idx[sub == c]
        rows = rows[rng.permutation(len(rows))]
        k = int(round(val_fraction * len(rows)))
        k = min(max(k, 1), len(rows) - 1) if len(rows) > 1 else 0
        va.append(rows[:k])
        tr.append(rows[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def build_tasks(suite: Any, data_root: str | None) -> list[TaskDef]:
    """Turn the suite's ID data sets and OOD groups into tasks with fixed row indices."""
    from benchmark.data import get_dataset, get_ood_group

    ds = suite.downstream
    val_fraction = suite.selection.val_fraction
    cap = getattr(ds, "max_train", None)
    tasks: list[TaskDef] = []

    def train_refs(name: str) -> tuple[SplitRef, SplitRef, int]:
        src = get_dataset(name, data_root)
        labels = src.split("train").labels
        idx = _cap_indices(labels, cap, seed=0)
        tr, va = _train_val(labels, idx, val_fraction, seed=0)
        return (SplitRef(name, "train", tuple(int(i) for i in tr)),
                SplitRef(name, "train", tuple(int(i) for i in va)), src.info.num_classes)

    for name in ds.id:
        tr, va, k = train_refs(name)
        tasks.append(TaskDef(name, "id", tr, va, (("test", SplitRef(name, "test")),), k))
    for gname in ds.ood:
        group = get_ood_group(gname)
        tr, va, k = train_refs(group.train)
        tests = tuple((d, SplitRef(d, "test")) for d in group.tests)
        tasks.append(TaskDef(gname, "ood", tr, va, tests, k))
    return tasks


def head_grid(suite: Any) -> list[HeadConfig]:
    """The suite's downstream grid: methods x lambdas (NMTune) x depths (MLP, NMTune) x seeds x fractions."""
    ds = suite.downstream
    extra: dict[str, Any] = {}
    for k in ("epochs", "batch_size"):
        v = getattr(ds, k, None)
        if v is not None:
            extra[k] = v
    out: list[HeadConfig] = []
    for seed in ds.seeds:
        for frac in ds.fractions:
            for method in ds.methods:
                hp = dict(extra)
                lr = (getattr(ds, "lr", None) or {}).get(method) if isinstance(getattr(ds, "lr", None), dict) else None
                if lr is not None:
                    hp["lr"] = lr
                if method == "nmtune":
                    hp["preset"] = ds.preset
                hpt = tuple(sorted(hp.items()))
                if method == "lp":
                    out.append(HeadConfig("lp", None, None, seed, frac, hpt))
                elif method == "mlp":
                    out += [HeadConfig("mlp", None, d, seed, frac, hpt) for d in ds.depths]
                else:
                    out += [HeadConfig("nmtune", lam, d, seed, frac, hpt) for lam in ds.lambdas for d in ds.depths]
    return out


def pretrained_entry(result: Any) -> BackboneEntry:
    job = result.job
    return BackboneEntry(
        spec={"family": "nmlbench", "checkpoint": str(result.checkpoint_path)},
        key=job.key,
        params={"backbone": job.display or f"{job.arch} ({job.objective})", "objective": job.objective,
                "noise_kind": job.noise_kind, "noise_ratio": float(job.noise_ratio),
                "pretrain_seed": int(job.seed), "pretrain_key": job.key},
    )


def frozen_entry(spec: dict[str, Any]) -> BackboneEntry:
    spec = dict(spec)
    display = spec.pop("name", None) or spec.pop("display", None) or f"{spec.get('family')}:{spec.get('arch', spec.get('target'))}"
    spec.pop("display", None)
    return BackboneEntry(
        spec=spec, key=config_hash({"frozen": spec}),
        params={"backbone": display, "objective": "frozen", "noise_kind": "unknown",
                "noise_ratio": float("nan"), "pretrain_seed": 0, "pretrain_key": ""},
    )


def plan_fits(suite: Any, backbones: list[BackboneEntry], tasks: list[TaskDef]) -> list[FitSpec]:
    normalize = getattr(suite.downstream, "normalize_features", True)
    grid = head_grid(suite)
    fits = []
    for b in backbones:
        for t in tasks:
            pair = config_hash({"backbone": b.key, "task": t.identity(), "normalize": normalize})
            for h in grid:
                params = {**b.params, "backbone_id": b.key, "task": t.name, "task_kind": t.kind,
                          "method": h.method, "lambda": float(h.lam or 0.0), "depth": int(h.depth or 0),
                          "preset": suite.downstream.preset if h.method == "nmtune" else "",
                          "head_seed": h.head_seed, "fraction": float(h.fraction)}
                tags = {"nmlbench.kind": "fit", "suite": suite.name}
                fits.append(FitSpec(fit_key({"pair": pair}, h), pair, h, params, tags))
    return fits


# --------------------------------------------------------------------------------------------
# Features as Ray tasks
# --------------------------------------------------------------------------------------------
def _resolve(ref: SplitRef, data_root: str | None):
    from benchmark.data import get_dataset

    split = get_dataset(ref.dataset, data_root).split(ref.split)
    return split if ref.indices is None else split.subset(np.asarray(ref.indices, dtype=np.int64))


def extract_payload(spec: dict[str, Any], task: TaskDef, cache_root: str, data_root: str | None,
                    normalize: bool) -> FeaturePayload:
    """Features of one (backbone, task) pair through the on-disk cache (GPU when present)."""
    import torch

    from benchmark.backbones import create_backbone
    from benchmark.features import FeatureCache

    torch.set_num_threads(max(1, int(os.environ.get("NMLBENCH_THREADS", "1"))))
    backbone = create_backbone(spec)
    cache = FeatureCache(cache_root, progress=False)

    def get(ref: SplitRef) -> tuple[np.ndarray, np.ndarray]:
        f = cache.get(backbone, _resolve(ref, data_root))
        x = f.x.float()
        if normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        return x.numpy().astype(np.float32, copy=False), f.y.numpy().astype(np.int64, copy=False)

    tests: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    subsets: dict[str, np.ndarray] = {}
    for name, ref in task.tests:
        tests[name] = get(ref)
        cs = _resolve(ref, data_root).class_subset
        if cs is not None:
            subsets[name] = cs
    return FeaturePayload(train=get(task.train), val=get(task.val), tests=tests,
                          num_classes=task.num_classes, class_subsets=subsets)


def payload_spectrum(payload: FeaturePayload) -> dict[str, np.ndarray]:
    """Singular values of the raw test features of a pair (for the spectra figure)."""
    from benchmark.spectrum import singular_values

    return {name: singular_values(x) for name, (x, _) in payload.tests.items()}


# --------------------------------------------------------------------------------------------
# The whole suite
# --------------------------------------------------------------------------------------------
def default_tracking_uri(work_dir: Path) -> str:
    return f"sqlite:///{(work_dir / 'mlflow.db').resolve()}"


def run_suite(suite: Any, *, address: str | None = None, tracking_uri: str | None = None,
              data_root: str | None = None, work_dir: str | None = None,
              max_concurrent: int | None = None, echo: Callable[[str], None] = print) -> SuiteRun:
    """Run (or resume) a suite; returns counts and phase times. See module docstring."""
    import ray

    from benchmark.config import check_data_available
    from benchmark.pretrain import run_pretrain_jobs
    from benchmark.sweep import run_trials_on_ray
    from benchmark.tracking import Tracker, journal_path

    t_start = time.perf_counter()
    if work_dir is not None or data_root is not None:
        suite = suite.override(work_dir=work_dir, data_root=data_root)  # re-derives default paths
    work = Path(suite.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data_root = suite.data_root
    check_data_available(suite)
    uri = tracking_uri or suite.tracking.uri or default_tracking_uri(work)
    experiment = suite.tracking.experiment or suite.name
    # Records go to a journal in the work dir first: an MLflow outage never loses or stops them.
    tracker = Tracker(uri, experiment, suite=suite.name, journal=journal_path(work, experiment), echo=echo)
    summary = SuiteRun(suite.name, uri, experiment, str(work))
    echo(f"nmlbench: suite {suite.name!r}; MLflow {uri} (experiment {experiment!r}); work dir {work}")

    init_ray(address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = float(ray.cluster_resources().get("GPU", 0))
    concurrency = max_concurrent or getattr(suite.ray, "max_concurrent_trials", None) or max(1, cpus)

    # 1. pre-training -------------------------------------------------------------------------
    t0 = time.perf_counter()
    jobs = suite.pretrain_jobs()
    summary.pretrain_total = len(jobs)
    backbones: list[BackboneEntry] = []
    if jobs:
        echo(f"[1/4] pre-training: {len(jobs)} jobs (Ray Train)")
        logged = tracker.completed_keys("pretrain")

        def on_result(r: Any) -> None:  # driver thread, as each job finishes
            if getattr(r, "error", None):
                summary.pretrain_failed.append(f"{r.job.name}: {r.error}")
                echo(f"      FAILED {r.job.name}: {r.error}")
                return
            summary.pretrain_reused += int(bool(r.reused))
            if r.key not in logged:
                tracker.log_pretrain(r.job, r)
                logged.add(r.key)
            last = r.metrics[-1] if r.metrics else {}
            detail = "" if r.reused else (f" in {r.seconds:.0f} s, loss {last.get('loss', float('nan')):.3f}"
                                          f", realised noise {r.realised_ratio:.3f}")
            echo(f"      {'reused' if r.reused else 'trained'} {r.job.name}{detail}")

        results = run_pretrain_jobs(jobs, work, max_concurrent=min(concurrency, len(jobs)), on_result=on_result)
        backbones += [pretrained_entry(r) for r in results if not getattr(r, "error", None)]
    backbones += [frozen_entry(s) for s in suite.frozen_backbones()]
    summary.seconds["pretrain"] = time.perf_counter() - t0

    # 2. plan -------------------------------------------------------------------------------
    tasks = build_tasks(suite, data_root)
    fits = plan_fits(suite, backbones, tasks)
    done = tracker.completed_keys("fit")
    missing = [f for f in fits if f.key not in done]
    summary.fits_total, summary.fits_skipped = len(fits), len(fits) - len(missing)
    echo(f"[2/4] plan: {len(backbones)} backbones x {len(tasks)} tasks -> {len(fits)} head fits, "
         f"{summary.fits_skipped} already in MLflow, {len(missing)} to run")

    # 3. features ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    pairs = {f.pair for f in missing}
    pair_src = {}
    for b in backbones:
        for t in tasks:
            pair = next((f.pair for f in fits if f.params["backbone_id"] == b.key and f.params["task"] == t.name), None)
            if pair in pairs:
                pair_src[pair] = (b, t)
    normalize = getattr(suite.downstream, "normalize_features", True)
    remote = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=1)(extract_payload)
    refs = {p: remote.remote(b.spec, t, str(work / "features"), data_root, normalize) for p, (b, t) in pair_src.items()}
    if refs:
        echo(f"[3/4] features: {len(refs)} (backbone, task) pairs, cached under {work / 'features'}")
        _wait_all(refs, echo)
        _log_spectra(tracker, refs, pair_src)
    summary.seconds["features"] = time.perf_counter() - t0

    # 4. head sweep -------------------------------------------------------------------------
    t0 = time.perf_counter()
    fits_per_trial = getattr(suite.ray, "fits_per_trial", None) or 16
    plans = plan_trials(missing, fits_per_trial)
    if plans:
        echo(f"[4/4] heads: {len(missing)} fits in {len(plans)} Ray Tune trials")
        sink = _TrackerSink(tracker, len(missing), echo)
        run_trials_on_ray(plans, refs, sink, storage_path=work / "ray_results",
                          name=f"sweep-{suite.name}-{config_hash([p.trial_id for p in plans], 8)}",
                          max_concurrent=concurrency, gpus_per_trial=(1.0 / concurrency) if gpus else 0.0)
        summary.fits_run, summary.fits_failed, summary.fit_seconds = sink.ok, sink.failed, sink.fit_seconds
    summary.seconds["heads"] = time.perf_counter() - t0
    # Deliver anything queued during an outage, then publish the leaderboard runs and the suite
    # run's table, figures and report (left for `nmlbench sync` if MLflow is still away).
    tracker.finish()
    summary.seconds["total"] = time.perf_counter() - t_start
    summary.seconds["other"] = summary.seconds["total"] - sum(summary.seconds[k] for k in ("pretrain", "features", "heads"))
    (work / "runs").mkdir(exist_ok=True)
    (work / "runs" / f"{suite.name}-{int(time.time())}.json").write_text(json.dumps(summary.__dict__, indent=2))
    return summary


class _TrackerSink:
    """Driver-side receiver of fit records: logs to MLflow and shows progress."""

    def __init__(self, tracker: Any, total: int, echo: Callable[[str], None]) -> None:
        from tqdm.auto import tqdm

        self.tracker, self.ok, self.failed, self.fit_seconds = tracker, 0, 0, 0.0
        self.bar = tqdm(total=total, desc="head fits", unit="fit", mininterval=1.0)
        self.echo = echo

    def __call__(self, record: dict[str, Any]) -> None:
        if "error" in record:
            self.failed += 1
            self.tracker.log_failure(record["key"], record["params"], record["error"])
            self.bar.write(f"      fit failed ({record['params'].get('backbone')} / {record['params'].get('task')} / "
                           f"{record['params'].get('method')}): {record['error']}")
        else:
            self.ok += 1
            self.fit_seconds += float(record["metrics"].get("fit_seconds", 0.0))
            self.tracker.log_fit(record)
        self.bar.update(1)
        if self.bar.n >= self.bar.total:
            self.bar.close()


def _wait_all(refs: dict[str, Any], echo: Callable[[str], None]) -> None:
    import ray
    from tqdm.auto import tqdm

    pending = list(refs.values())
    with tqdm(total=len(pending), desc="features", unit="pair", mininterval=1.0) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)  # surface extraction errors here, naming the task
            bar.update(len(ready))


def _log_spectra(tracker: Any, refs: dict[str, Any], pair_src: dict[str, tuple[BackboneEntry, TaskDef]]) -> None:
    import ray

    spec_task = ray.remote(num_cpus=1)(payload_spectrum)
    out = {p: spec_task.remote(refs[p]) for p, (_, t) in pair_src.items()}
    for p, ref in out.items():
        b, t = pair_src[p]
        for name, values in ray.get(ref).items():
            tracker.log_spectrum(b.params, t.name if name == "test" else f"{t.name}/{name}", values)

