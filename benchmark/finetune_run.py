"""Running the fits of heads that train on images (``HeadSpec.inputs == "images"``: ``finetune``).

Why apart from the feature sweep: such a head trains the backbone's weights, so its fits cannot
read the feature cache. They are planned and keyed like every fit (``plan.fit_key`` of the pair),
but the runner keeps them out of the feature stage (a pair with only such fits left extracts
nothing) and runs them as their own Ray Tune trials (``sweep``), whose body is
``iter_image_fit_batches``: build the pair's backbone, load and transform the task's images once,
fine-tune per fit (``benchmark.finetune``), and hand back fit records of the same shape as the
feature fits'.

A backbone without weights (the ``blackbox`` family) cannot be fine-tuned:
``heads.finetune.check_image_heads`` refuses the suite when it is loaded, naming the
frozen-feature heads to use instead; a plugin family without a torch network is refused by
the fit itself with the same message.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from benchmark.heads.registry import get_head
from benchmark.plan import FitSpec, PairPlan
from benchmark.task_plan import SplitRef, TaskPlan

#: The evaluation set that selects the epoch (the name the feature sweep uses too).
VAL_SET = "val"


def needs_images(spec: FitSpec) -> bool:
    """Whether a planned fit trains on images (its head declares ``inputs="images"``)."""
    return get_head(spec.head).inputs == "images"


def split_images(ref: SplitRef, data_root: str | None, transform: Any) -> tuple[Any, Any, Any]:
    """(transformed images N x C x H x W, labels N, class subset or None) of a planned split."""
    import torch

    from benchmark.backbones.base import transform_images
    from benchmark.extraction import resolve_split

    split = resolve_split(ref, data_root)
    images = [split[i][0] for i in range(len(split))]
    labels = torch.as_tensor(np.asarray(split.labels, dtype=np.int64))
    return transform_images(images, transform), labels, split.class_subset


def task_images(task: TaskPlan, data_root: str | None, transform: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The task's training images, its evaluation sets (``val`` first, then the tests) and the
    tests' class subsets, each split loaded once."""
    x, y, _ = split_images(task.train, data_root, transform)
    sets: dict[str, Any] = {}
    subsets: dict[str, Any] = {}
    for name, ref in ((VAL_SET, task.val), *task.tests):
        sx, sy, cs = split_images(ref, data_root, transform)
        sets[name] = (sx, sy)
        if cs is not None:
            subsets[name] = cs
    return (x, y), sets, subsets


def iter_image_fit_batches(
    pair: PairPlan, specs: Sequence[FitSpec], data_root: str | None
) -> Iterator[list[dict[str, Any]]]:
    """Fine-tune every planned fit of ``pair``; yield each fit's record as it ends (a list of one).

    The backbone is built and the images loaded once for all ``specs``; a fit that fails gets an
    error record and the others go on; a backbone or data set that cannot be loaded fails every
    fit alike. Never raises.
    """
    import torch

    from benchmark.backbones import create_backbone
    from benchmark.finetune import finetune, refuse_without_weights
    from benchmark.noise.downstream import noisy_task_labels, with_label_noise
    from benchmark.sweep import error_record, make_record

    try:
        backbone = create_backbone(dict(pair.backbone.spec))
        refuse_without_weights(backbone, specs[0].head if specs else "finetune")
        if torch.cuda.is_available():
            backbone = backbone.to("cuda")
        train, sets, subsets = task_images(pair.task, data_root, backbone.transform)
    except Exception as exc:  # noqa: BLE001 - recorded for every fit of the pair
        yield [error_record(spec, f"{type(exc).__name__}: {exc}", traceback.format_exc()) for spec in specs]
        return
    tests = [name for name, _ in pair.task.tests]
    for spec in specs:
        started = time.perf_counter()
        try:
            x, y = train
            fit_sets, noisy = sets, None
            if spec.label_noise is not None:  # the same flips as the frozen heads' (same rows, same seeds)
                vx, vy = sets[VAL_SET]
                noisy = noisy_task_labels(y.numpy(), vy.numpy(), pair.task.num_classes, spec.label_noise)
                y = torch.from_numpy(noisy.train)
                fit_sets = {**sets, VAL_SET: (vx, torch.from_numpy(noisy.val))}
            if spec.train_rows is not None:
                rows = torch.as_tensor(np.asarray(spec.train_rows, dtype=np.int64))
                x, y = x[rows], y[rows]
            result = finetune(
                backbone,
                (x, y),
                fit_sets,
                spec.hparams,
                seed=spec.head_seed,
                num_classes=pair.task.num_classes,
                selection=VAL_SET,
                class_subsets=subsets,
            )
            record = make_record(spec, {**result, "batch_members": 1}, tests, time.perf_counter() - started)
            record = with_label_noise(record, noisy)
        except Exception as exc:  # noqa: BLE001 - one fit's failure is its record
            record = error_record(spec, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        yield [record]


def image_fit_cost(fits: Sequence[FitSpec], pairs: Sequence[PairPlan]) -> int:
    """Images the fits push through a backbone: per fit and epoch, the training rows (forward and
    backward), once more (forward: the BatchNorm statistics, ``finetune.precise_batchnorm``) and
    the validation rows."""
    tasks = {p.key: p.task for p in pairs}
    total = 0
    for f in fits:
        task = tasks[f.pair]
        rows = len(f.train_rows) if f.train_rows is not None else len(task.train)
        total += (2 * rows + len(task.val)) * int(f.hparams.epochs or 1)
    return total
