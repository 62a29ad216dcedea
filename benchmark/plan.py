"""The plan of a suite: every job of every stage, keyed, computed once and purely from the suite.

``make_plan(suite)`` turns a validated ``Suite`` into plain data: the pre-training jobs, the
backbones they make (and the frozen ones), the downstream tasks with their row indices fixed,
the (backbone, task) pairs, and each pair's head fits with resolved hyper-parameters and keys.
It imports neither Ray nor MLflow and runs nothing: the runner executes the stages from it,
``nmlbench plan`` prints it, and tests check it, so what runs is exactly what was planned.

Rows are chosen in ``task_plan.py`` (the tasks) and here (few-shot ``fractions``:
``few_shot_indices`` of a task's training rows, seeded by the head seed, nested across fractions).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.config.schema import FrozenBackbone, PretrainBlock, Suite
from benchmark.data.sampling import few_shot_indices
from benchmark.hashing import array_digest, config_hash
from benchmark.heads.registry import HParams, resolve_hparams
from benchmark.noise.downstream import RATIO_PARAM, LabelNoiseSetting, setting_for
from benchmark.pretrain.job import BLOCK_FIELDS, PretrainJob, block_value, job_dir, snapshot_file
from benchmark.task_plan import TaskPlan, build_tasks

#: Few-shot subsets are drawn with seed FEW_SHOT_SEED + head seed: never the stream (seed 0)
#: that carved the validation rows.
FEW_SHOT_SEED = 1000


# -- plan objects (plain, picklable data) --------------------------------------------------------
@dataclass(frozen=True)
class BackbonePlan:
    """A frozen backbone the downstream stage evaluates, and the pre-training that makes it (if any)."""

    key: str  # the pre-training job's key, or a hash of the frozen spec
    spec: dict[str, Any]  # for backbones.create_backbone
    params: dict[str, Any]  # backbone (display), objective, noise_kind, noise_ratio, pretrain_seed, pretrain_key
    job: PretrainJob | None = None  # None: a frozen backbone used as released

    @property
    def display(self) -> str:
        return str(self.params["backbone"])


@dataclass(frozen=True)
class FitSpec:
    """One head fit: what it trains on, how, and everything needed to key and record it."""

    key: str
    pair: str
    hparams: HParams
    head_seed: int
    fraction: float
    train_rows: tuple[int, ...] | None  # positions in the task's training rows; None: all of them
    params: dict[str, Any]  # MLflow params (backbone, noise, task, method, hyper-parameters ...)
    tags: dict[str, str] = field(default_factory=dict)
    label_noise: LabelNoiseSetting | None = None  # downstream label noise; None: clean labels

    @property
    def head(self) -> str:
        return self.hparams.head


@dataclass(frozen=True)
class PairPlan:
    """A (backbone, task) pair: its features are extracted once and every fit in ``fits`` reads them."""

    key: str
    backbone: BackbonePlan
    task: TaskPlan
    fits: tuple[FitSpec, ...]


@dataclass(frozen=True)
class TrialPlan:
    """A batch of fits on one pair: the unit Ray Tune schedules (Tune's overhead is paid per batch)."""

    trial_id: str
    pair: str
    fits: tuple[FitSpec, ...]


@dataclass(frozen=True)
class Plan:
    """Everything a suite will do, stage by stage (see the module docstring)."""

    suite: str
    work_dir: Path
    data_root: str | None
    normalize_features: bool
    pretrain: tuple[PretrainJob, ...]
    backbones: tuple[BackbonePlan, ...]
    tasks: tuple[TaskPlan, ...]
    pairs: tuple[PairPlan, ...]

    @property
    def fits(self) -> list[FitSpec]:
        return [f for p in self.pairs for f in p.fits]

    def pair(self, key: str) -> PairPlan:
        return next(p for p in self.pairs if p.key == key)

    def without_backbones(self, keys: Iterable[str]) -> Plan:
        """The plan minus the backbones (and their pairs) whose pre-training failed: ``keys`` are
        backbone or pre-training keys (a failed run takes all its checkpoint epochs with it)."""
        drop = set(keys)

        def dropped(b: BackbonePlan) -> bool:
            return b.key in drop or (b.job is not None and b.job.key in drop)

        return Plan(
            self.suite,
            self.work_dir,
            self.data_root,
            self.normalize_features,
            self.pretrain,
            tuple(b for b in self.backbones if not dropped(b)),
            self.tasks,
            tuple(p for p in self.pairs if not dropped(p.backbone)),
        )


# -- stage 1: pre-training jobs and the backbones they make ----------------------------------------
def pretrain_jobs(suite: Suite) -> list[PretrainJob]:
    """Every pre-training run: blocks x noise ratios x seeds, in file order."""
    return [
        _job(b, ratio, seed, suite.data_root)
        for b in suite.pretrain
        for ratio, seed in itertools.product(b.noise.ratios, b.seeds)
    ]


def _job(b: PretrainBlock, ratio: float, seed: int, data_root: str | None) -> PretrainJob:
    """One job of a block: every block key that names a job field is copied (the recipe is
    declared once, on ``PretrainJob``); the rest is filled per job."""
    per_job: dict[str, Any] = {
        "noise_kind": b.noise.kind,
        "noise_ratio": float(ratio),
        "class_map": dict(b.noise.class_map) if b.noise.class_map else None,
        "seed": seed,
        "data_root": data_root,
        "display": str(b.name),
        "snapshot_epochs": tuple(e for e in b.checkpoint_epochs or () if e < b.epochs),
    }
    return PretrainJob(**{name: block_value(name, getattr(b, name)) for name in BLOCK_FIELDS}, **per_job)


def pretrained_backbone(job: PretrainJob, work_dir: str | Path, epoch: int | None = None) -> BackbonePlan:
    """The backbone a pre-training run makes: its final weights (``epoch`` None, named as the
    block) or its weights after ``epoch`` (named ``<name>@e<epoch>``; the final epoch keeps the
    run's key, so its features and fits are the ones a plain suite computes)."""
    final = epoch is None or int(epoch) == int(job.epochs)
    file = "model.pt" if final else snapshot_file(int(epoch))  # type: ignore[arg-type]
    params: dict[str, Any] = {
        "backbone": job.backbone_name,
        "objective": job.objective,
        "noise_kind": job.noise_kind,
        "noise_ratio": float(job.noise_ratio),
        "pretrain_seed": int(job.seed),
        "pretrain_key": job.key,
    }
    if epoch is not None:
        params.update(backbone=f"{job.backbone_name}@e{int(epoch)}", pretrain_epoch=int(epoch))
    return BackbonePlan(
        key=job.key if final else config_hash({"pretrain": job.key, "epoch": int(epoch)}),  # type: ignore[arg-type]
        spec={"family": "nmlbench", "checkpoint": str(job_dir(job, work_dir) / file)},
        params=params,
        job=job,
    )


def pretrained_backbones(suite: Suite) -> list[BackbonePlan]:
    """Every backbone the suite's pre-training makes: one per run, or one per run and
    ``checkpoint_epochs`` entry (the regime factor: early and late points of the same run)."""
    out = []
    for b in suite.pretrain:
        for ratio, seed in itertools.product(b.noise.ratios, b.seeds):
            job = _job(b, ratio, seed, suite.data_root)
            epochs: list[int | None] = [*b.checkpoint_epochs] if b.checkpoint_epochs else [None]
            out += [pretrained_backbone(job, suite.work_dir, e) for e in epochs]
    return out


def frozen_backbone(entry: FrozenBackbone) -> BackbonePlan:
    spec = entry.spec()
    display = spec.pop("name")
    return BackbonePlan(
        key=config_hash({"frozen": spec}),
        spec=spec,
        params={
            "backbone": display,
            "objective": "frozen",
            "noise_kind": "unknown",
            "noise_ratio": float("nan"),
            "pretrain_seed": 0,
            "pretrain_key": "",
        },
    )


# -- heads -----------------------------------------------------------------------------------------
def head_grid(suite: Suite) -> list[HParams]:
    """Resolved hyper-parameters of every head configuration: heads x the grid axes each takes."""
    ds = suite.downstream
    out: list[HParams] = []
    for head in ds.heads:
        fixed, axes = ds.fixed_hparams(head), ds.axes(head)
        for values in itertools.product(*axes.values()):
            out.append(resolve_hparams(head, **{**fixed, **dict(zip(axes, values))}))
    return out


def fit_key(
    pair: str, hp: HParams, head_seed: int, fraction: float, label_noise: LabelNoiseSetting | None = None
) -> str:
    """Key of one fit: the pair's features and how the head is fit (every resolved value).

    The names hashed are those keys were first published with, so stored fits keep their keys:
    ``"method"`` for the head and ``hp.key_dict()`` (``heads.hparams.KEY_ALIASES``) for renamed
    hyper-parameters. Downstream label noise enters only when set (ratio > 0): clean fits keep
    the keys they always had.
    """
    ident: dict[str, Any] = {
        "kind": "fit",
        "pair": pair,
        "method": hp.head,
        "hparams": hp.key_dict(),
        "head_seed": int(head_seed),
        "fraction": float(fraction),
    }
    if label_noise is not None:
        ident["label_noise"] = label_noise.key_dict()
    return config_hash(ident)


def label_noise_settings(suite: Suite, task: TaskPlan) -> list[LabelNoiseSetting | None]:
    """The downstream label-noise settings of ``task``, one per ratio (None: clean labels)."""
    ln = suite.downstream.label_noise
    if ln is None:
        return [None]
    out = [
        setting_for(
            task.identity(), kind=ln.kind, ratio=r, validation=ln.validation, seed=ln.seed, options=ln.options()
        )
        for r in ln.ratios
    ]
    return list({repr(s.key_dict()) if s else "": s for s in out}.values())


def _few_shot_rows(task: TaskPlan, fraction: float, head_seed: int) -> tuple[int, ...] | None:
    if fraction >= 1.0:
        return None
    rows = few_shot_indices(np.asarray(task.train_labels), fraction=fraction, seed=FEW_SHOT_SEED + head_seed)
    return tuple(int(r) for r in rows)


def _pair(suite: Suite, b: BackbonePlan, t: TaskPlan, grid: Sequence[HParams]) -> PairPlan:
    ds = suite.downstream
    key = config_hash({"backbone": b.key, "task": t.identity(), "normalize": ds.normalize_features})
    fits = []
    for noise, seed, frac, hp in itertools.product(label_noise_settings(suite, t), ds.seeds, ds.fractions, grid):
        params = {
            **b.params,
            "backbone_id": b.key,
            "task": t.name,
            "task_kind": t.kind,
            "head": hp.head,
            **hp.as_dict(),
            "head_seed": int(seed),
            "fraction": float(frac),
            **(noise.params() if noise is not None else {RATIO_PARAM: 0.0}),
        }
        fits.append(
            FitSpec(
                fit_key(key, hp, seed, frac, noise),
                key,
                hp,
                int(seed),
                float(frac),
                _few_shot_rows(t, frac, seed),
                params,
                {"nmlbench.kind": "fit", "suite": suite.name},
                noise,
            )
        )
    return PairPlan(key, b, t, tuple(fits))


def make_plan(suite: Suite) -> Plan:
    """The whole plan of ``suite`` (loads label vectors to fix rows; decodes no image)."""
    jobs = list({j.key: j for j in pretrain_jobs(suite)}.values())
    backbones = pretrained_backbones(suite)
    backbones += [frozen_backbone(b) for b in suite.backbones]
    backbones = list({b.key: b for b in reversed(backbones)}.values())[::-1]  # equal keys: the first wins
    tasks = build_tasks(suite)
    grid = head_grid(suite)
    pairs = [_pair(suite, b, t, grid) for b in backbones for t in tasks]
    return Plan(
        suite.name,
        Path(suite.work_dir),
        suite.data_root,
        suite.downstream.normalize_features,
        tuple(jobs),
        tuple(backbones),
        tuple(tasks),
        tuple(pairs),
    )


def rows_digest(rows: Sequence[int] | None) -> str:
    """A short digest of a row selection (``all`` when None), for logs and plan listings."""
    return "all" if rows is None else array_digest(np.asarray(rows, dtype=np.int64), 8)
