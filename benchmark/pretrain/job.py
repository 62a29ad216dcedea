"""Pre-training jobs as plain data, and the one set of rules a job must satisfy.

A suite block expands into ``PretrainJob``s (``benchmark.plan``); the launcher trains them
(``launch.py``). Both ask the functions here whether a job makes sense, so a rule is written once
and a suite file and a hand-built job are rejected with the same words. Nothing here imports torch
or Ray: ``nmlbench validate`` and the suite loader import this module and must stay fast.

A job's key depends only on what changes its output, so equal keys share one checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError
from benchmark.hashing import config_hash

#: Training-time augmentation: ``none`` (the image resized to ``image_size``, as the features
#: are later extracted) or ``crop_flip`` (random-resized crop of ``crop_scale`` of the area,
#: aspect 3/4..4/3, then a horizontal flip with probability 1/2: the ImageNet recipe).
AUGMENTS: tuple[str, ...] = ("none", "crop_flip")
#: Arithmetic: ``auto`` = bf16 autocast on CUDA and float32 elsewhere; ``bf16`` also autocasts
#: on the CPU; ``fp32`` never autocasts.
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")


def _floats(v: Any) -> tuple[float, ...]:
    return tuple(float(x) for x in v)


def _ints(v: Any) -> list[int]:
    return [int(x) for x in v]


def _recipe(
    default: Any, *, keyed: bool = True, late: bool = False, worker: Any = None, block: bool = True, norm: Any = None
) -> Any:
    """A recipe field, declared once with what every reader of the recipe needs to know.

    ``keyed``: part of :attr:`PretrainJob.key` (False: where and how fast a job runs, what it is
    called). ``late``: added after keys were first published; left out of the key while it holds
    its default, so jobs written before it existed keep their keys (:data:`RECIPE_DEFAULTS`).
    ``worker``: the cast with which it enters a Ray Train worker's config (None: not sent).
    ``block``: a suite ``pretrain`` block key of the same name and default (False: the plan
    fills it per job). ``norm``: how the plan normalises the block's value.
    """
    meta = {"keyed": keyed, "late": late, "worker": worker, "block": block, "norm": norm}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class PretrainJob:
    """One noisy pre-training run: (objective, backbone, noise ratio, seed) and its recipe.

    ``batch_size`` is per worker and per micro-batch: one optimiser step sees
    ``batch_size * workers * grad_accum`` images. ``workers`` is part of the key because it
    changes what is learnt (the global batch and each worker's BatchNorm statistics);
    ``gpus_per_worker``, ``cpus_per_worker``, ``loader_workers``, ``channels_last``, ``display``
    and ``data_root`` are not: they say where and how fast a job runs and what it is called
    (augmentation is seeded per sample, so the number of loader processes changes nothing). The
    noisy labels never depend on the worker count.
    """

    objective: str = field(metadata={"worker": str, "block": True})  # a registered objective
    corpus: str = field(metadata={"block": True})  # data set name, e.g. "fashion-mnist"
    arch: str = field(metadata={"worker": str, "block": True})  # timm / open_clip config name
    noise_kind: str = _recipe("symmetric", block=False)  # a registered noise kind
    noise_ratio: float = _recipe(0.0, block=False)
    class_map: dict[int, int] | None = _recipe(None, block=False)  # asymmetric: {true: noisy}
    seed: int = _recipe(0, worker=int, block=False)
    epochs: int = _recipe(3, worker=int)
    batch_size: int = _recipe(128, worker=int)  # per worker
    lr: float = _recipe(1e-3, worker=float)
    weight_decay: float = _recipe(0.05, worker=float)
    image_size: int = _recipe(32, worker=int)
    train_subset: int | None = _recipe(None)  # first-N of a seeded shuffle of the train split
    model_kwargs: dict[str, Any] = _recipe({}, worker=dict, norm=dict)
    data_root: str | None = _recipe(None, keyed=False, block=False)
    workers: int = _recipe(1)
    gpus_per_worker: float = _recipe(0.0, keyed=False)
    display: str = _recipe("", keyed=False, block=False)
    # -- the recipe for real corpora (defaults: the embedded suites' recipe) --
    augment: str = _recipe("none", late=True, worker=str)  # AUGMENTS
    crop_scale: tuple[float, float] = _recipe(
        (0.08, 1.0), late=True, worker=_floats, norm=_floats
    )  # crop_flip: area share range
    warmup_epochs: float = _recipe(0.0, late=True, worker=float, norm=float)  # linear, then cosine
    grad_accum: int = _recipe(1, late=True, worker=int)  # micro-batches per optimiser step
    precision: str = _recipe("auto", late=True, worker=str)  # PRECISIONS
    # -- what it keeps: the weights after these epochs (1-based, below ``epochs``) besides the
    # final ones, so one run is evaluated at several points of training (the regime factor).
    # Keyed, because a finished run without a snapshot cannot give one without training again.
    # The plan fills it from the block's ``checkpoint_epochs``.
    snapshot_epochs: tuple[int, ...] = _recipe((), late=True, worker=_ints, block=False)
    # -- how fast it runs (not keyed) --
    channels_last: bool = _recipe(True, keyed=False, worker=bool)  # NHWC on CUDA (not the CPU)
    cpus_per_worker: float = _recipe(1.0, keyed=False, norm=float)  # CPUs per Ray Train worker
    loader_workers: int | None = _recipe(None, keyed=False)  # None: cpus_per_worker - 1, >= 1

    @property
    def key(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k not in UNKEYED}
        for name, default in RECIPE_DEFAULTS.items():
            if _same(d[name], default):
                del d[name]
        return config_hash({"kind": "pretrain", **d})

    def worker_config(self) -> dict[str, Any]:
        """The recipe as a Ray Train worker reads it (the fields declared with a ``worker``
        cast), plus the job's identity and its loader processes."""
        cfg: dict[str, Any] = {"key": self.key, "name": self.name}
        for f in fields(self):
            cast = f.metadata.get("worker")
            if cast is not None:
                cfg[f.name] = cast(getattr(self, f.name))
        cfg["loader_workers"] = self.loader_processes
        return cfg

    @property
    def global_batch(self) -> int:
        """Images per optimiser step: per-worker micro-batch x workers x accumulation."""
        return int(self.batch_size) * int(self.workers) * int(self.grad_accum)

    @property
    def loader_processes(self) -> int:
        """Decoding processes per worker for file-backed corpora (at least one)."""
        if self.loader_workers is not None:
            return int(self.loader_workers)
        return max(1, int(self.cpus_per_worker) - 1)

    @property
    def backbone_name(self) -> str:
        """The display name the model's features carry downstream (the suite block's ``name``)."""
        return self.display or f"{self.arch}-{self.objective}"

    @property
    def name(self) -> str:
        """Human-readable label: arch, objective, noise, seed."""
        return f"{self.backbone_name}@{self.noise_kind}{self.noise_ratio:g}-s{self.seed}"


#: Recipe fields added after keys were first published, with the value that reproduces the
#: earlier recipe. A job leaves a field out of its key while it holds that value, so every job
#: written before the field existed keeps its key (and its finished checkpoint).
RECIPE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(PretrainJob) if f.metadata.get("late")}
#: Fields that say where and how fast a job runs or what it is called: not in the key.
UNKEYED: tuple[str, ...] = tuple(f.name for f in fields(PretrainJob) if not f.metadata.get("keyed", True))
#: Block keys of the suite's ``pretrain`` blocks that copy a job field of the same name.
BLOCK_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PretrainJob) if f.metadata.get("block"))


def job_default(name: str) -> Any:
    """The default of a recipe field: the suite schema's default for the block key ``name``."""
    f = next(f for f in fields(PretrainJob) if f.name == name)
    if f.default is not MISSING:
        return f.default
    factory = f.default_factory
    return factory() if callable(factory) else None


def block_value(name: str, value: Any) -> Any:
    """A block's value for job field ``name``, normalised as the job holds it."""
    norm = next(f for f in fields(PretrainJob) if f.name == name).metadata.get("norm")
    return value if norm is None else norm(value)


def __getattr__(name: str) -> Any:
    # Registries, read when asked: a plugin objective or noise kind counts as soon as it loads.
    if name == "OBJECTIVES":
        from benchmark.pretrain.objectives import objective_names

        return objective_names()
    if name == "NOISE_KINDS":
        return {o: allowed_noise_kinds(o) for o in _objective_names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _objective_names() -> tuple[str, ...]:
    from benchmark.pretrain.objectives import objective_names

    return objective_names()


def allowed_noise_kinds(objective: str) -> tuple[str, ...]:
    """The noise kinds that apply to ``objective``, its default first."""
    from benchmark.noise import noise_kinds

    kinds = list(noise_kinds(objective))
    default = default_noise_kind(objective)
    return tuple([default] + [k for k in kinds if k != default]) if default in kinds else tuple(kinds)


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, tuple) and not default:
        return not value
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and [float(v) for v in value] == list(default)
    return value == default


def _unknown_objective(objective: str) -> str:
    return f"objective {objective!r} is unknown; use one of {list(_objective_names())}"


def default_noise_kind(objective: str) -> str:
    """The noise kind a block gets when it names none: label flips differ from caption swaps."""
    from benchmark.pretrain.objectives import objectives

    known = objectives()
    if objective not in known:
        raise ConfigError(_unknown_objective(objective))
    return known[objective].default_noise_kind


def noise_problem(objective: str, kind: str, class_map: Mapping[int, int] | None) -> str | None:
    """What is wrong with this (objective, noise kind, class map), or None when it is fine.

    Asks the registries: the objective must be registered, the kind registered for it, and the
    kind's options given as it declares them. The text names suite keys (``noise.kind``,
    ``noise.class_map``), where users set them; the suite schema reports it under the block's
    path and :func:`check_job` under the job's name.
    """
    from benchmark.noise import noise_kinds, option_problem
    from benchmark.pretrain.objectives import objectives

    known = objectives()
    if objective not in known:
        return _unknown_objective(objective)
    allowed = allowed_noise_kinds(objective)
    every = noise_kinds()
    if kind not in allowed:
        if kind in every:
            owners = " | ".join(repr(o) for o in every[kind].objectives)
            return (
                f"noise.kind {kind!r} does not apply to objective {objective!r}: "
                f"{known[objective].noise_hint}; {kind!r} applies only to objective {owners} "
                f"(use noise.kind: {' | '.join(allowed)})"
            )
        return f"noise.kind {kind!r} is unknown; {objective} noise is one of " + ", ".join(allowed)
    return option_problem(every[kind], {"class_map": class_map})


def recipe_problem(augment: str, crop_scale: Any, precision: str, warmup_epochs: float, epochs: int) -> str | None:
    """What is wrong with a training recipe, or None; worded with the suite keys."""
    if augment not in AUGMENTS:
        return f"augment {augment!r} is unknown; use one of {list(AUGMENTS)}"
    if precision not in PRECISIONS:
        return f"precision {precision!r} is unknown; use one of {list(PRECISIONS)}"
    lo, hi = (float(v) for v in crop_scale)
    if not 0.0 < lo <= hi <= 1.0:
        return f"crop_scale {[lo, hi]} must be two area shares 0 < low <= high <= 1 (e.g. [0.08, 1.0])"
    if not 0.0 <= float(warmup_epochs) < float(epochs):
        return (
            f"warmup_epochs {warmup_epochs} must be >= 0 and below epochs ({epochs}); the "
            "cosine decay needs steps after the warm-up"
        )
    return None


def check_job(job: PretrainJob) -> None:
    """Reject a job that cannot run, before anything is loaded (ConfigError names the fix).

    The launcher (``launch.py``) is the one place that calls it, once per job; a suite's blocks
    are checked by the same rules (:func:`noise_problem`, :func:`recipe_problem`) when it loads.
    """
    problem = noise_problem(job.objective, job.noise_kind, job.class_map)
    if problem is not None:
        raise ConfigError(f"pretrain job {job.name}: {problem}")
    if not 0.0 <= float(job.noise_ratio) < 1.0:
        raise ConfigError(f"pretrain job {job.name}: noise_ratio {job.noise_ratio} must be in [0, 1)")
    for name in ("epochs", "batch_size", "image_size", "workers", "grad_accum"):
        if int(getattr(job, name)) < 1:
            raise ConfigError(f"pretrain job {job.name}: {name} must be >= 1, got {getattr(job, name)}")
    problem = recipe_problem(job.augment, job.crop_scale, job.precision, job.warmup_epochs, job.epochs)
    if problem is not None:
        raise ConfigError(f"pretrain job {job.name}: {problem}")
    if job.loader_workers is not None and int(job.loader_workers) < 0:
        raise ConfigError(
            f"pretrain job {job.name}: loader_workers must be >= 0 or null (auto), got {job.loader_workers}"
        )
    bad = [e for e in job.snapshot_epochs if not 1 <= int(e) < int(job.epochs)]
    if bad:
        raise ConfigError(
            f"pretrain job {job.name}: snapshot epochs {bad} must lie in 1..{job.epochs - 1} "
            "(the final epoch's weights are always kept)"
        )
    if job.train_subset is not None and int(job.train_subset) < 2:
        raise ConfigError(f"pretrain job {job.name}: train_subset must be >= 2 or null (all), got {job.train_subset}")


def job_dir(job: PretrainJob, work_dir: str | Path) -> Path:
    """``work_dir/pretrain/<key>``: everything one job writes (absolute). The plan names the
    checkpoint ``job_dir(...) / "model.pt"`` before it exists; the launcher writes it there."""
    return Path(work_dir).resolve() / "pretrain" / job.key


def snapshot_file(epoch: int) -> str:
    """File name, inside the job's folder, of the weights kept after ``epoch`` (1-based)."""
    return f"model_epoch_{int(epoch):04d}.pt"
