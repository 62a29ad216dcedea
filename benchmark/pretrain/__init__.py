"""Noisy pre-training, split by the process each part runs in.

- ``job``: ``PretrainJob`` (the recipe, declared once) and the one set of job rules
  (``check_job``, ``noise_problem``, ``default_noise_kind``, ``OBJECTIVES``, ``NOISE_KINDS``);
  no torch, no Ray.
- ``objectives``: the objective registry (supervised, clip; plugins): each objective owns its
  training set, model, step, sums and memorisation metrics.
- ``corpus``: the driver's label table, noise and record; images stay on disk (no torch, no Ray).
- ``inputs``: a worker's batches of its own shard, streamed from the data root (or an array).
- ``recipe``: preprocessing, model, schedule, losses and per-epoch metrics (memorisation too).
- ``worker``: the loop inside each Ray Train worker (jobs in turn, shards, checkpoints, resume).
- ``trainer``: one ``TorchTrainer`` fit for one job or a list of small ones, and its outputs.
- ``launch``: the driver's entry points (reuse, job lists that share a trainer, concurrency);
  ``progress``: its bar of finished epochs.

Names are imported lazily, on first use, so ``from benchmark.pretrain import PretrainJob`` (the
suite loader, ``nmlbench validate``) loads neither torch nor Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PretrainJob": "job",
    "OBJECTIVES": "job",
    "NOISE_KINDS": "job",
    "check_job": "job",
    "noise_problem": "job",
    "default_noise_kind": "job",
    "recipe_problem": "job",
    "AUGMENTS": "job",
    "PRECISIONS": "job",
    "RECIPE_DEFAULTS": "job",
    "job_dir": "job",
    "allowed_noise_kinds": "job",
    "UNKEYED": "job",
    "BLOCK_FIELDS": "job",
    "Objective": "objectives",
    "get_objective": "objectives",
    "objective_names": "objectives",
    "register_objective": "objectives",
    "EpochBar": "progress",
    "TrainingSet": "corpus",
    "LabelTable": "corpus",
    "CorpusRef": "corpus",
    "build_training_set": "corpus",
    "write_noise_record": "corpus",
    "subset_indices": "corpus",
    "array_images": "corpus",
    "clean_captions": "corpus",
    "caption_sources": "corpus",
    "decode_item": "inputs",
    "crop_box": "inputs",
    "make_input": "inputs",
    "instance_features": "inputs",
    "preprocess": "recipe",
    "build_model": "recipe",
    "lr_factor": "recipe",
    "make_optimizer": "recipe",
    "epoch_metrics": "recipe",
    "PRETRAIN_MEAN": "recipe",
    "PRETRAIN_STD": "recipe",
    "train_loop_per_worker": "worker",
    "epoch_shard": "audit",
    "index_digest": "audit",
    "param_digest": "audit",
    "PretrainResult": "launch",
    "load_done": "launch",
    "run_pretrain": "launch",
    "run_pretrain_jobs": "launch",
    "trainer_lists": "launch",
    "shares_trainer": "launch",
    "FAULT_ENV": "launch",
    "fault_kill_epoch": "launch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = list(_LAZY)
