"""Noisy downstream labels: the paper's Sec. 4.3, noisy model learning composed with noisy label learning.

A suite may corrupt a downstream task's *training* labels with the same registered, exactly
counted label-noise kinds that pre-training uses (``downstream.label_noise``). Why here and not
in the data layer: the corruption belongs to one fit's setting (kind, ratio, seed), is an axis of
the study (``ratios: [0.0, 0.2]`` fits every head twice) and must be recorded with each fit (the
realised rates and a digest of the flipped rows), while the features of a (backbone, task) pair
stay shared by every ratio.

The rules, each one tested:

- **Test labels are never touched.** :func:`noisy_task_labels` takes train and validation
  labels only; test sets never pass through it (the sweep hands it nothing else).
- **Validation** is noisy by default (``validation: noisy``): a practitioner choosing
  hyper-parameters has only noisy labels, so a clean validation split would leak oracle
  information into model selection and overstate every head. ``clean`` keeps it clean.
- **Exact and seeded.** ``round(ratio * n_c)`` labels of every class change (``flip_labels``).
  The seeds of the train and validation draws are derived from (task identity, kind, ratio,
  suite seed) and differ from each other, so two tasks get different flips and the validation
  draw is not the train draw.
- **Ratio 0 is the identity**: no setting at all (``None``); such fits keep their old keys.
- **Recorded rates** are ``flip_labels``' ``realised_ratio``: over all rows, except for
  ``asymmetric``, where only the mapped classes are eligible. Few-shot subsets
  (``downstream.fractions``) are drawn at plan time from the clean labels and then read their
  rows' noisy labels, so every fraction of a setting sees the same corrupted rows.
- With ``instance`` noise the per-sample inputs are the pair's frozen features (the only ones a
  head fit has), so the flips differ between backbones (the new labels; the rows too when the
  feature widths differ); the recorded digest (rows and new labels) tells them apart.

No Ray, MLflow or torch here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmark.hashing import config_hash
from benchmark.noise.flips import flip_labels
from benchmark.noise.registry import get_noise_kind

#: How validation labels are treated: corrupted like the train labels (the default), or left clean.
VALIDATION_MODES = ("noisy", "clean")
#: Record names: metrics for the realised rates, a param for the digest of the flipped rows.
TRAIN_RATE = "label_noise_train_rate"
VAL_RATE = "label_noise_val_rate"
DIGEST = "label_noise_digest"
#: The MLflow param that makes the downstream noise ratio an axis (0.0 for clean fits and old runs).
RATIO_PARAM = "label_noise_ratio"


@dataclass(frozen=True)
class LabelNoiseSetting:
    """One downstream noise setting of one task, with its seeds already derived (see :func:`setting_for`).

    ``options``: the kind's options (``class_map`` for ``asymmetric``); kept out of the hash
    because a dict is not hashable, and part of :meth:`key_dict`, so it is part of fit keys.
    """

    kind: str
    ratio: float
    validation: str
    seed: int
    train_seed: int
    val_seed: int
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    def key_dict(self) -> dict[str, Any]:
        """What a fit key hashes: everything that changes the labels a head sees."""
        return {
            "kind": self.kind,
            "ratio": float(self.ratio),
            "validation": self.validation,
            "seed": int(self.seed),
            "options": _jsonable(self.options),
        }

    def params(self) -> dict[str, Any]:
        """The MLflow params of a fit under this setting."""
        return {
            RATIO_PARAM: float(self.ratio),
            "label_noise_kind": self.kind,
            "label_noise_validation": self.validation,
        }


@dataclass(frozen=True)
class NoisyLabels:
    """The labels a head trains and selects on, and the record of how they were made."""

    train: np.ndarray
    val: np.ndarray
    train_rate: float
    val_rate: float
    digest: str
    train_flipped: np.ndarray
    val_flipped: np.ndarray

    def metrics(self) -> dict[str, float]:
        return {TRAIN_RATE: self.train_rate, VAL_RATE: self.val_rate}


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options with mapping keys as strings (a class_map's int keys), for hashing and records."""
    return {k: ({str(a): b for a, b in v.items()} if isinstance(v, Mapping) else v) for k, v in options.items()}


def derived_seed(task: Mapping[str, Any] | str, kind: str, ratio: float, seed: int, part: str) -> int:
    """A seed in [0, 2**63) from (task identity, kind, ratio, suite seed, part): different tasks
    and the two parts (``train``, ``val``) draw different flips, each reproducibly."""
    digest = config_hash(
        {"task": task, "kind": kind, "ratio": float(ratio), "seed": int(seed), "part": part, "what": "label_noise"},
        length=16,
    )
    return int(digest, 16) >> 1


def no_noise(ratio: float) -> bool:
    """Whether ``ratio`` means clean labels (the identity: no setting, no flips, old fit keys)."""
    return float(ratio) <= 0.0


def setting_for(
    task: Mapping[str, Any] | str,
    *,
    kind: str,
    ratio: float,
    validation: str = "noisy",
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> LabelNoiseSetting | None:
    """The setting of one task at one ratio, or None for ratio 0 (clean labels)."""
    if no_noise(ratio):
        return None
    if validation not in VALIDATION_MODES:
        raise ValueError(f"label_noise.validation {validation!r} is unknown; use one of {list(VALIDATION_MODES)}")
    return LabelNoiseSetting(
        kind=kind,
        ratio=float(ratio),
        validation=validation,
        seed=int(seed),
        train_seed=derived_seed(task, kind, ratio, seed, "train"),
        val_seed=derived_seed(task, kind, ratio, seed, "val"),
        options={k: v for k, v in (options or {}).items() if v is not None},
    )


def flipped_digest(
    train_flipped: np.ndarray, val_flipped: np.ndarray, train_labels: np.ndarray, val_labels: np.ndarray
) -> str:
    """sha256 of the flipped rows, train then validation: each row's position and the label it
    was given. Two fits with the same digest trained and selected on exactly the same labels."""
    rows = {
        part: [[int(i), int(labels[i])] for i in np.flatnonzero(flipped)]
        for part, flipped, labels in (("train", train_flipped, train_labels), ("val", val_flipped, val_labels))
    }
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def noisy_task_labels(
    train_labels: Any,
    val_labels: Any,
    num_classes: int,
    setting: LabelNoiseSetting | None,
    *,
    train_features: Any = None,
    val_features: Any = None,
) -> NoisyLabels:
    """The train and validation labels under ``setting`` (None: unchanged, rates 0).

    Only train and validation labels come in: test labels are never an argument. ``*_features``
    feed kinds that need per-sample inputs (``instance``); other kinds ignore them.
    """
    y_tr = np.asarray(train_labels, dtype=np.int64)
    y_va = np.asarray(val_labels, dtype=np.int64)
    if setting is None:
        none_tr, none_va = np.zeros(y_tr.shape[0], bool), np.zeros(y_va.shape[0], bool)
        digest = flipped_digest(none_tr, none_va, y_tr, y_va)
        return NoisyLabels(y_tr.copy(), y_va.copy(), 0.0, 0.0, digest, none_tr, none_va)
    wants_features = "features" in get_noise_kind(setting.kind).inputs

    def draw(y: np.ndarray, seed: int, feats: Any) -> tuple[np.ndarray, np.ndarray, float]:
        extra = {"features": feats} if wants_features else {}
        res = flip_labels(y, num_classes, setting.ratio, kind=setting.kind, seed=seed, **setting.options, **extra)
        return res.noisy_labels, res.flipped, float(res.realised_ratio)

    tr, tr_flip, tr_rate = draw(y_tr, setting.train_seed, train_features)
    if setting.validation == "noisy":
        va, va_flip, va_rate = draw(y_va, setting.val_seed, val_features)
    else:
        va, va_flip, va_rate = y_va.copy(), np.zeros(y_va.shape[0], bool), 0.0
    return NoisyLabels(tr, va, tr_rate, va_rate, flipped_digest(tr_flip, va_flip, tr, va), tr_flip, va_flip)


def expected_rate(labels: Sequence[int] | np.ndarray, ratio: float) -> float:
    """The rate exact-count noise realises on ``labels``: sum over classes of round-half-up
    ``ratio * n_c``, over ``n`` (what the realised rate must equal for the symmetric kind)."""
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0:
        return 0.0
    counts = np.bincount(y)
    return float(np.floor(ratio * counts + 0.5).sum() / y.size)


def setting_label(setting: LabelNoiseSetting | None) -> str:
    """Short text for logs: ``clean`` or ``symmetric 20% (val noisy)``."""
    if setting is None:
        return "clean"
    return f"{setting.kind} {setting.ratio * 100:g}% (val {setting.validation})"


# -- applying a setting in the heads stage (duck-typed: no import of the sweep's types) -----------
def label_noise_groups(specs: Sequence[Any]) -> list[tuple[LabelNoiseSetting | None, list[Any]]]:
    """``specs`` (fit specs with a ``label_noise`` attribute) grouped by setting, first-seen order:
    fits of one group train on one set of labels."""
    groups: dict[str, tuple[LabelNoiseSetting | None, list[Any]]] = {}
    for spec in specs:
        noise = getattr(spec, "label_noise", None)
        ident = config_hash(noise.key_dict()) if noise is not None else ""
        groups.setdefault(ident, (noise, []))[1].append(spec)
    return list(groups.values())


def noisy_payload(payload: Any, setting: LabelNoiseSetting | None) -> tuple[Any, NoisyLabels | None]:
    """A feature payload (``extraction.FeaturePayload``) whose train (and, when noisy, validation)
    labels carry ``setting``'s noise, and the record of it; ``payload.tests`` is the same object,
    never read. None: the payload itself, no record."""
    if setting is None:
        return payload, None
    (x_tr, y_tr), (x_va, y_va) = payload.train, payload.val
    noisy = noisy_task_labels(y_tr, y_va, int(payload.num_classes), setting, train_features=x_tr, val_features=x_va)
    return dataclasses.replace(payload, train=(x_tr, noisy.train), val=(x_va, noisy.val)), noisy


def with_label_noise(record: dict[str, Any], noisy: NoisyLabels | None) -> dict[str, Any]:
    """A fit record with the realised rates (metrics) and the flipped rows' digest (a param)."""
    if noisy is not None:
        record["metrics"].update(noisy.metrics())
        record["params"][DIGEST] = noisy.digest
    return record


def realised_line(record: dict[str, Any]) -> tuple[tuple[str, float], str] | None:
    """For the runner: ((task, ratio), the line that reports the realised rates), or None for a
    clean or failed fit. Printed once per (task, ratio)."""
    p, m = record.get("params") or {}, record.get("metrics") or {}
    if "error" in record or TRAIN_RATE not in m:
        return None
    ratio = float(p.get(RATIO_PARAM, 0.0))
    task = str(p.get("task"))
    return (task, ratio), (
        f"      label noise on {task}: {p.get('label_noise_kind')} {ratio * 100:g}% asked, "
        f"realised {m[TRAIN_RATE] * 100:.2f}% of train labels, {m[VAL_RATE] * 100:.2f}% of validation "
        f"labels ({p.get('label_noise_validation')}); test labels untouched (flips {str(p.get(DIGEST))[:12]})"
    )
