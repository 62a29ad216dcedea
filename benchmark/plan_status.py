"""What a plan will do, what is already done, and how much work is left: ``nmlbench plan``.

Reads only what earlier runs left behind, never starting Ray or writing anything:
- pre-training: ``work_dir/pretrain/<key>/done.json`` (what the pre-training stage writes last);
- features: the pair markers ``work_dir/features/pairs/<pair>.json`` of the features stage;
- head fits: finished fit keys in the MLflow store, read without creating a store or experiment.
The work left is counted in the stage's own units (images x epochs to train, images to encode,
head fits and their sample-epochs, fine-tuning fits and their image-epochs); with an earlier run of the suite on record
(``work_dir/runs/*.json``) it is also priced at that run's measured seconds per unit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.extraction import pair_marker
from benchmark.finetune_run import image_fit_cost, needs_images
from benchmark.noise.downstream import setting_label
from benchmark.plan import Plan
from benchmark.pretrain.job import job_dir

#: What ``nmlbench plan`` says of fits that train the backbone (their cost is in image-epochs).
FINETUNE_NOTE = (
    "fine-tuning fits cannot use the feature cache: each encodes its training images every epoch "
    "(forward and backward through the backbone), once more for its BatchNorm statistics, plus a validation "
    "pass, counted in image-epochs"
)


@dataclass
class StageStatus:
    """One stage of a plan: how many jobs, how many done, and the work left in its own unit."""

    stage: str
    unit: str  # what a job is: "job", "pair", "fit"
    total: int
    done: int
    work_left: int  # in ``work_unit``
    work_unit: str
    seconds_per_job: float | None = None  # from the newest earlier run that did such jobs

    @property
    def todo(self) -> int:
        return self.total - self.done

    @property
    def seconds_left(self) -> float | None:
        return None if self.seconds_per_job is None else self.todo * self.seconds_per_job


def finished_fit_keys(uri: str, experiment: str) -> set[str]:
    """Keys of finished fit runs, read-only: a store or experiment that does not exist is empty."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        return set()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return set()
    keys: set[str] = set()
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            "attributes.status = 'FINISHED' and tags.`nmlbench.kind` = 'fit'",
            max_results=5000,
            page_token=token,
        )
        keys |= {r.data.tags["nmlbench.key"] for r in page if "nmlbench.key" in r.data.tags}
        token = page.token
        if not token:
            return keys


def _split_len(dataset: str, split: str, data_root: str | None) -> int:
    from benchmark.data import get_dataset

    return len(get_dataset(dataset, data_root).split(split))


def _last_run_rates(work_dir: Path, suite: str) -> dict[str, float]:
    """Seconds per pre-training job, per extracted pair and per fit, from the newest run that did some."""
    rates: dict[str, float] = {}
    for path in sorted((work_dir / "runs").glob(f"{suite}-*.json"), reverse=True):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        secs = r.get("seconds", {})
        trained = r.get("pretrain_total", 0) - r.get("pretrain_reused", 0) - len(r.get("pretrain_failed", []))
        for name, count, phase in (
            ("pretrain", trained, "pretrain"),
            ("features", r.get("pairs_extracted", 0), "features"),
            ("heads", r.get("fits_run", 0) + r.get("fits_failed", 0), "heads"),
        ):
            if name not in rates and count > 0 and secs.get(phase):
                rates[name] = float(secs[phase]) / count
    return rates


def plan_status(plan: Plan, tracking_uri: str, experiment: str) -> list[StageStatus]:
    """The three stages of ``plan`` with what is done and what is left (see the module docstring)."""
    rates = _last_run_rates(plan.work_dir, plan.suite)
    done_jobs = [j for j in plan.pretrain if (job_dir(j, plan.work_dir) / "done.json").is_file()]
    image_epochs = sum(
        (j.train_subset or _split_len(j.corpus, "train", plan.data_root)) * j.epochs
        for j in plan.pretrain
        if j not in done_jobs
    )
    cache = plan.work_dir / "features"
    encoded = [p for p in plan.pairs if any(not needs_images(f) for f in p.fits)]  # a pair only fine-tuned: no features
    cached = [p for p in encoded if pair_marker(cache, p.key).is_file()]
    images = sum(
        len(p.task.train)
        + len(p.task.val)
        + sum(
            _split_len(ref.dataset, ref.split, plan.data_root) if ref.indices is None else len(ref)
            for _, ref in p.task.tests
        )
        for p in encoded
        if p not in cached
    )
    finished = finished_fit_keys(tracking_uri, experiment)
    on_images = [f for f in plan.fits if needs_images(f)]  # fine-tuning: their own row, no feature cache
    fits = [f for f in plan.fits if not needs_images(f)]
    todo = [f for f in fits if f.key not in finished]
    tasks = {p.key: p.task for p in plan.pairs}
    sample_epochs = sum(
        (len(f.train_rows) if f.train_rows is not None else len(tasks[f.pair].train)) * (f.hparams.epochs or 1)
        for f in todo
    )  # the converged LP: one pass-equivalent
    stages = [
        StageStatus(
            "pre-training",
            "job",
            len(plan.pretrain),
            len(done_jobs),
            image_epochs,
            "image-epochs",
            rates.get("pretrain"),
        ),
        StageStatus("features", "pair", len(encoded), len(cached), images, "images to encode", rates.get("features")),
        StageStatus(
            "head fits",
            "fit",
            len(fits),
            len(fits) - len(todo),
            sample_epochs,
            "sample-epochs",
            rates.get("heads"),
        ),
    ]
    if on_images:
        tuning = [f for f in on_images if f.key not in finished]
        stages.append(
            StageStatus(
                "fine-tuning",
                "fit",
                len(on_images),
                len(on_images) - len(tuning),
                image_fit_cost(tuning, plan.pairs),
                "image-epochs",
            )
        )
    return stages


def render_status(plan: Plan, stages: list[StageStatus], tracking_uri: str) -> str:
    """The text ``nmlbench plan`` prints."""
    from tabulate import tabulate

    rows = []
    for s in stages:
        eta = "–" if s.seconds_left is None else f"{s.seconds_left / 60:.1f} min"
        rows.append([s.stage, f"{s.total} {s.unit}s", s.done, s.todo, f"{s.work_left:,} {s.work_unit}", eta])
    lines = [
        f"plan of suite {plan.suite!r}: {len(plan.backbones)} backbones x {len(plan.tasks)} tasks = "
        f"{len(plan.pairs)} pairs, {len(plan.fits)} head fits",
        f"work dir {plan.work_dir}; MLflow {tracking_uri}",
        "",
        tabulate(
            rows,
            headers=["stage", "jobs", "done", "to run", "work left", "at last run's pace"],
            tablefmt="simple",
            disable_numparse=True,
        ),
        "",
    ]
    if all(s.seconds_per_job is None for s in stages):
        lines.append("(no earlier run of this suite in the work dir to time the work by)")
    if any(s.stage == "fine-tuning" for s in stages):
        lines.append(FINETUNE_NOTE)
    lines += [
        f"  task {t.name} ({t.kind}): {len(t.train)} train rows, {len(t.val)} validation rows, "
        f"test: {', '.join(name for name, _ in t.tests)}"
        for t in plan.tasks
    ]
    settings = {f.label_noise.key_dict()["ratio"]: f.label_noise for f in plan.fits if f.label_noise is not None}
    if settings:
        clean = ["clean"] if any(f.label_noise is None for f in plan.fits) else []
        shown = [*clean, *(setting_label(settings[r]) for r in sorted(settings))]
        lines.append(f"  downstream labels, each fit once per setting: {', '.join(shown)}; test labels never touched")
    return "\n".join(lines) + "\n"


def suite_imports(suite: Any) -> list[tuple[str, str]]:
    """The modules outside nml-bench that a suite makes every feature-extracting node import: (module, why).

    Why list them: a suite naming a ``blackbox`` target (``module:function``) or a plugin family
    runs that code wherever its features are computed, so a suite file is code to be trusted
    like a script. Read from the suite and the installed entry points' metadata; nothing is imported.
    """
    from importlib.metadata import entry_points

    from benchmark.backbones.registry import BUILTIN_FAMILIES, ENTRY_POINT_GROUP

    plugins = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    out: list[tuple[str, str]] = []
    for bb in suite.backbones:
        name = bb.name or bb.arch or bb.family
        if bb.family == "blackbox" and bb.target:
            out.append((bb.target.partition(":")[0], f"backbone {name!r}: blackbox target {bb.target}"))
        elif bb.family not in BUILTIN_FAMILIES:
            ep = plugins.get(bb.family)
            dist = ep.dist.name if ep is not None and ep.dist is not None else "not installed here"
            module = ep.value.partition(":")[0] if ep is not None else "?"
            out.append((module, f"backbone {name!r}: plugin family {bb.family!r} ({dist})"))
    return list(dict.fromkeys(out))


def render_imports(imports: list[tuple[str, str]]) -> list[str]:
    """Lines for ``nmlbench validate`` / ``plan``: the code a suite runs besides nml-bench's own."""
    if not imports:
        return ["code it runs: nml-bench's own modules and their dependencies only"]
    return [
        "code it runs besides nml-bench's (imported on every node that computes features; "
        "trust this suite as you would a script):"
    ] + [f"  {module}  ({why})" for module, why in imports]


def status_dict(stages: list[StageStatus]) -> list[dict[str, Any]]:
    """The stages as plain data (``nmlbench plan --json``)."""
    return [{**s.__dict__, "todo": s.todo, "seconds_left": s.seconds_left} for s in stages]
