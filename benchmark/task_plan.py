"""The downstream tasks of a plan: each ID data set or OOD group with its row indices fixed.

Apart from ``plan.py`` (which pairs tasks with backbones and heads) because choosing rows is
where the benchmark's selection rule lives: the test split is never touched, and validation is
carved from the training rows only. Rows are chosen by the tested samplers of
``benchmark.data.sampling``:
- ``max_train``: a stratified ``few_shot_indices`` share of each class (cap / n of every class,
  round half up, at least one), seed ``SPLIT_SEED``;
- validation: ``stratified_holdout`` of those rows (``selection.val_fraction`` of each class),
  seed ``SPLIT_SEED``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmark.config.schema import Suite
from benchmark.data.sampling import few_shot_indices, stratified_holdout
from benchmark.hashing import config_hash

#: Seed of the ``max_train`` cap and of the validation carve.
SPLIT_SEED = 0


@dataclass(frozen=True)
class SplitRef:
    """A split named by data set, split and row indices: rebuilt cheaply inside a worker."""

    dataset: str
    split: str
    indices: tuple[int, ...] | None = None

    def fingerprint(self) -> str:
        idx = "all" if self.indices is None else config_hash(list(self.indices))
        return f"{self.dataset}/{self.split}/{idx}"

    def __len__(self) -> int:
        return -1 if self.indices is None else len(self.indices)


@dataclass(frozen=True)
class TaskPlan:
    """A downstream task: an ID data set, or an OOD group (train domain + test domains)."""

    name: str
    kind: str  # "id" | "ood"
    train: SplitRef
    val: SplitRef
    tests: tuple[tuple[str, SplitRef], ...]  # (set name, split); ID tasks: (("test", ...),)
    num_classes: int
    train_labels: tuple[int, ...] = field(repr=False, default=())

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "train": self.train.fingerprint(),
            "val": self.val.fingerprint(),
            "tests": {k: v.fingerprint() for k, v in self.tests},
        }


# -- choosing rows ------------------------------------------------------------------------------
def training_rows(labels: np.ndarray, max_train: int | None) -> np.ndarray:
    """The rows of a training split a task may use: all, or a stratified ``max_train`` share."""
    n = len(labels)
    if max_train is None or max_train >= n:
        return np.arange(n, dtype=np.int64)
    return few_shot_indices(labels, fraction=max_train / n, seed=SPLIT_SEED)


def carve_validation(labels: np.ndarray, rows: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of ``rows``: ``val_fraction`` of each class held out."""
    keep, hold = stratified_holdout(labels[rows], val_fraction, SPLIT_SEED)
    return rows[keep], rows[hold]


def build_tasks(suite: Suite) -> list[TaskPlan]:
    """The suite's ID data sets and OOD groups as tasks with fixed row indices."""
    from benchmark.data import get_dataset, get_ood_group

    ds = suite.downstream

    def task(name: str, kind: str, train_set: str, tests: tuple[tuple[str, SplitRef], ...]) -> TaskPlan:
        split = get_dataset(train_set, suite.data_root).split("train")
        labels = np.asarray(split.labels, dtype=np.int64)
        tr, va = carve_validation(labels, training_rows(labels, ds.max_train), suite.selection.val_fraction)
        return TaskPlan(
            name,
            kind,
            SplitRef(train_set, "train", tuple(int(i) for i in tr)),
            SplitRef(train_set, "train", tuple(int(i) for i in va)),
            tests,
            split.num_classes,
            tuple(int(v) for v in labels[tr]),
        )

    tasks = [task(n, "id", n, (("test", SplitRef(n, "test")),)) for n in ds.id]
    for g in map(get_ood_group, ds.ood):
        tasks.append(task(g.name, "ood", g.train, tuple((d, SplitRef(d, "test")) for d in g.tests)))
    return tasks
