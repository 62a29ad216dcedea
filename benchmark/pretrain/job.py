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


@dataclass(frozen=True)
class PretrainJob:
    """One noisy pre-training run: (objective, backbone, noise ratio, seed) and its recipe.

    ``batch_size`` is per worker: the global batch of one optimiser step is
    ``batch_size * workers``. ``workers`` is part of the key because it changes what is learnt
    (the global batch and each worker's BatchNorm statistics); ``gpus_per_worker``, ``display``
    and ``data_root`` are not: they say where a job runs and what it is called. The noisy labels
    never depend on the worker count.
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

    _UNKEYED = ("gpus_per_worker", "display", "data_root")

    @property
    def key(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k not in self._UNKEYED}
        return config_hash({"kind": "pretrain", **d})

    @property
    def backbone_name(self) -> str:
        """The display name the model's features carry downstream (the suite block's ``name``)."""
        return self.display or f"{self.arch}-{self.objective}"

    @property
    def name(self) -> str:
        """Human-readable label: arch, objective, noise, seed."""
        return f"{self.backbone_name}@{self.noise_kind}{self.noise_ratio:g}-s{self.seed}"


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


def check_job(job: PretrainJob) -> None:
    """Reject a job that cannot run, before anything is loaded (ConfigError names the fix)."""
    problem = noise_problem(job.objective, job.noise_kind, job.class_map)
    if problem is not None:
        raise ConfigError(f"pretrain job {job.name}: {problem}")
    if not 0.0 <= float(job.noise_ratio) < 1.0:
        raise ConfigError(f"pretrain job {job.name}: noise_ratio {job.noise_ratio} must be in "
                          "[0, 1)")
    for name in ("epochs", "batch_size", "image_size", "workers"):
        if int(getattr(job, name)) < 1:
            raise ConfigError(f"pretrain job {job.name}: {name} must be >= 1, got "
                              f"{getattr(job, name)}")
    if job.train_subset is not None and int(job.train_subset) < 2:
        raise ConfigError(f"pretrain job {job.name}: train_subset must be >= 2 or null (all), "
                          f"got {job.train_subset}")


def job_dir(job: PretrainJob, work_dir: str | Path) -> Path:
    """``work_dir/pretrain/<key>``: everything one job writes (absolute). The plan names the
    checkpoint ``job_dir(...) / "model.pt"`` before it exists; the launcher writes it there."""
    return Path(work_dir).resolve() / "pretrain" / job.key
