"""Pre-training jobs as plain data, and the one set of rules a job must satisfy.

A suite block expands into ``PretrainJob``s (``benchmark.plan``); the launcher trains them
(``launch.py``). Both ask the functions here whether a job makes sense, so a rule is written once
and a suite file and a hand-built job are rejected with the same words. Nothing here imports torch
or Ray: ``nmlbench validate`` and the suite loader import this module and must stay fast.

A job's key depends only on what changes its output, so equal keys share one checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError
from benchmark.hashing import config_hash
from benchmark.noise import FLIP_KINDS

OBJECTIVES: tuple[str, ...] = ("supervised", "clip")

#: Noise kinds each objective accepts; the first is the default. Supervised jobs flip class
#: labels (``benchmark.noise.flip_labels``); clip jobs swap captions between image-text pairs.
NOISE_KINDS: dict[str, tuple[str, ...]] = {"supervised": FLIP_KINDS, "clip": ("swap",)}

#: Training-time augmentation: ``none`` (the image resized to ``image_size``, as the features
#: are later extracted) or ``crop_flip`` (random-resized crop of ``crop_scale`` of the area,
#: aspect 3/4..4/3, then a horizontal flip with probability 1/2: the ImageNet recipe).
AUGMENTS: tuple[str, ...] = ("none", "crop_flip")
#: Arithmetic: ``auto`` = bf16 autocast on CUDA and float32 elsewhere; ``bf16`` also autocasts
#: on the CPU; ``fp32`` never autocasts.
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")

#: Recipe fields added after keys were first published, with the value that reproduces the
#: earlier recipe. A job leaves a field out of its key while it holds that value, so every job
#: written before the field existed keeps its key (and its finished checkpoint).
RECIPE_DEFAULTS: dict[str, Any] = {"augment": "none", "crop_scale": (0.08, 1.0),
                                   "warmup_epochs": 0.0, "grad_accum": 1, "precision": "auto",
                                   "snapshot_epochs": ()}


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

    objective: str                 # "supervised" | "clip"
    corpus: str                    # data set name, e.g. "fashion-mnist"
    arch: str                      # timm model name or open_clip config name
    noise_kind: str = "symmetric"  # supervised: flip kind; clip: "swap"
    noise_ratio: float = 0.0
    class_map: dict[int, int] | None = None  # asymmetric noise: {true class: noisy class}
    seed: int = 0
    epochs: int = 3
    batch_size: int = 128          # per worker
    lr: float = 1e-3
    weight_decay: float = 0.05
    image_size: int = 32
    train_subset: int | None = None  # first-N of a seeded shuffle of the corpus' train split
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    display: str = ""
    # -- the recipe for real corpora (defaults: the embedded suites' recipe) --
    augment: str = "none"          # AUGMENTS
    crop_scale: tuple[float, float] = (0.08, 1.0)  # crop_flip: area share range of the crop
    warmup_epochs: float = 0.0     # linear warm-up, then cosine decay to 0 (per optimiser step)
    grad_accum: int = 1            # micro-batches per optimiser step on each worker
    precision: str = "auto"        # PRECISIONS
    # -- what it keeps: the weights after these epochs (1-based, below ``epochs``) besides the
    # final ones, so one run is evaluated at several points of training (the regime factor).
    # Keyed, because a finished run without a snapshot cannot give one without training again.
    snapshot_epochs: tuple[int, ...] = ()
    # -- how fast it runs (not keyed) --
    channels_last: bool = True     # NHWC activations on CUDA (ignored on the CPU)
    cpus_per_worker: float = 1.0   # CPUs Ray reserves per Ray Train worker
    loader_workers: int | None = None  # decoding processes per worker; None: cpus_per_worker - 1, >= 1

    _UNKEYED = ("gpus_per_worker", "display", "data_root", "channels_last", "cpus_per_worker",
                "loader_workers")

    @property
    def key(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k not in self._UNKEYED}
        for name, default in RECIPE_DEFAULTS.items():
            if _same(d[name], default):
                del d[name]
        return config_hash({"kind": "pretrain", **d})

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


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, tuple) and not default:
        return not value
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and [float(v) for v in value] == list(default)
    return value == default


def _unknown_objective(objective: str) -> str:
    return f"objective {objective!r} is unknown; use one of {list(OBJECTIVES)}"


def default_noise_kind(objective: str) -> str:
    """The noise kind a block gets when it names none: label flips differ from caption swaps."""
    if objective not in NOISE_KINDS:
        raise ConfigError(_unknown_objective(objective))
    return NOISE_KINDS[objective][0]


def noise_problem(objective: str, kind: str, class_map: Mapping[int, int] | None) -> str | None:
    """What is wrong with this (objective, noise kind, class map), or None when it is fine.

    The text names suite keys (``noise.kind``, ``noise.class_map``), where users set them;
    the suite schema reports it under the block's path and :func:`check_job` under the job's name.
    """
    if objective not in NOISE_KINDS:
        return _unknown_objective(objective)
    if objective == "clip" and kind != "swap":
        return (f"noise.kind {kind!r} does not apply to objective 'clip': image-text pre-training "
                "corrupts pairs by swapping captions (use noise.kind: swap)")
    if objective == "supervised" and kind == "swap":
        return ("noise.kind 'swap' applies only to objective 'clip'; supervised noise is one of "
                + ", ".join(NOISE_KINDS["supervised"]))
    if kind not in NOISE_KINDS[objective]:
        return (f"noise.kind {kind!r} is unknown; {objective} noise is one of "
                + ", ".join(NOISE_KINDS[objective]))
    if kind == "asymmetric" and not class_map:
        return "noise.kind 'asymmetric' needs noise.class_map ({source class: target class})"
    if class_map and kind != "asymmetric":
        return f"noise.class_map is used only by noise.kind 'asymmetric', not {kind!r}"
    return None


def recipe_problem(augment: str, crop_scale: Any, precision: str, warmup_epochs: float,
                   epochs: int) -> str | None:
    """What is wrong with a training recipe, or None; worded with the suite keys."""
    if augment not in AUGMENTS:
        return f"augment {augment!r} is unknown; use one of {list(AUGMENTS)}"
    if precision not in PRECISIONS:
        return f"precision {precision!r} is unknown; use one of {list(PRECISIONS)}"
    lo, hi = (float(v) for v in crop_scale)
    if not 0.0 < lo <= hi <= 1.0:
        return (f"crop_scale {[lo, hi]} must be two area shares 0 < low <= high <= 1 "
                "(e.g. [0.08, 1.0])")
    if not 0.0 <= float(warmup_epochs) < float(epochs):
        return (f"warmup_epochs {warmup_epochs} must be >= 0 and below epochs ({epochs}); the "
                "cosine decay needs steps after the warm-up")
    return None


def check_job(job: PretrainJob) -> None:
    """Reject a job that cannot run, before anything is loaded (ConfigError names the fix)."""
    problem = noise_problem(job.objective, job.noise_kind, job.class_map)
    if problem is not None:
        raise ConfigError(f"pretrain job {job.name}: {problem}")
    if not 0.0 <= float(job.noise_ratio) < 1.0:
        raise ConfigError(f"pretrain job {job.name}: noise_ratio {job.noise_ratio} must be in "
                          "[0, 1)")
    for name in ("epochs", "batch_size", "image_size", "workers", "grad_accum"):
        if int(getattr(job, name)) < 1:
            raise ConfigError(f"pretrain job {job.name}: {name} must be >= 1, got "
                              f"{getattr(job, name)}")
    problem = recipe_problem(job.augment, job.crop_scale, job.precision, job.warmup_epochs,
                             job.epochs)
    if problem is not None:
        raise ConfigError(f"pretrain job {job.name}: {problem}")
    if job.loader_workers is not None and int(job.loader_workers) < 0:
        raise ConfigError(f"pretrain job {job.name}: loader_workers must be >= 0 or null (auto), "
                          f"got {job.loader_workers}")
    bad = [e for e in job.snapshot_epochs if not 1 <= int(e) < int(job.epochs)]
    if bad:
        raise ConfigError(f"pretrain job {job.name}: snapshot epochs {bad} must lie in 1..{job.epochs - 1} "
                          "(the final epoch's weights are always kept)")
    if job.train_subset is not None and int(job.train_subset) < 2:
        raise ConfigError(f"pretrain job {job.name}: train_subset must be >= 2 or null (all), "
                          f"got {job.train_subset}")


def job_dir(job: PretrainJob, work_dir: str | Path) -> Path:
    """``work_dir/pretrain/<key>``: everything one job writes (absolute). The plan names the
    checkpoint ``job_dir(...) / "model.pt"`` before it exists; the launcher writes it there."""
    return Path(work_dir).resolve() / "pretrain" / job.key


def snapshot_file(epoch: int) -> str:
    """File name, inside the job's folder, of the weights kept after ``epoch`` (1-based)."""
    return f"model_epoch_{int(epoch):04d}.pt"
