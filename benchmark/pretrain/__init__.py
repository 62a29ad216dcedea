"""Noisy pre-training, split by the process each part runs in.

- ``job``: ``PretrainJob`` and the one set of job rules (``check_job``, ``noise_problem``,
  ``default_noise_kind``, ``OBJECTIVES``, ``NOISE_KINDS``); no torch, no Ray.
- ``corpus``: the driver builds the noisy training set and writes its record (no torch, no Ray).
- ``worker``: what runs inside each Ray Train worker (model, preprocessing, the training loop).
- ``launch``: the driver's orchestration (one ``TorchTrainer`` per job, reuse, concurrency).

Names are imported lazily, on first use, so ``from benchmark.pretrain import PretrainJob`` (the
suite loader, ``nmlbench validate``) loads neither torch nor Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PretrainJob": "job", "OBJECTIVES": "job", "NOISE_KINDS": "job", "check_job": "job",
    "noise_problem": "job", "default_noise_kind": "job",
    "TrainingSet": "corpus", "build_training_set": "corpus", "write_noise_record": "corpus",
    "subset_indices": "corpus", "split_to_uint8": "corpus",
    "preprocess": "worker", "build_model": "worker", "train_loop_per_worker": "worker",
    "epoch_shard": "worker", "index_digest": "worker", "param_digest": "worker",
    "PRETRAIN_MEAN": "worker", "PRETRAIN_STD": "worker",
    "PretrainResult": "launch", "job_dir": "job", "load_done": "launch",
    "run_pretrain": "launch", "run_pretrain_jobs": "launch", "FAULT_ENV": "launch",
    "fault_kill_epoch": "launch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = list(_LAZY)
