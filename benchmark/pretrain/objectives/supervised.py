"""Supervised pre-training: cross-entropy on class labels, a fraction of them flipped.

Its noise kinds are the label kinds (``benchmark.noise``, data ``"labels"``); its memorisation
metrics compare the model's predictions on the flipped samples with their noisy and true labels
(``noisy_fit``: memorised, ``true_fit``: resisted). No torch at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.errors import ConfigError
from benchmark.pretrain.objectives import Objective, register_objective

#: Order of the per-epoch sums (``recipe.supervised_step``).
SUPERVISED_SUMS = ("loss", "n", "correct", "clean_ok", "flipped", "noisy_fit", "true_fit", "unflipped", "unflipped_ok")


class _Step:
    """Noisy targets, true labels and flip mask on the worker's device; one batch's step."""

    def __init__(self, table: Any, device: Any, on: Any) -> None:
        import torch

        self.device = device
        self.targets = torch.as_tensor(table.targets, device=on)
        self.clean = torch.as_tensor(table.clean, device=on)
        self.noisy = torch.as_tensor(table.noisy, device=on)

    def __call__(self, model: Any, x: Any, pos_on: Any, pos: Any) -> tuple[Any, Any]:
        from benchmark.pretrain.recipe import supervised_step

        d = self.device
        return supervised_step(model, x, self.targets[pos_on].to(d), self.clean[pos_on].to(d), self.noisy[pos_on].to(d))

    def after_update(self, model: Any) -> None:
        pass


@register_objective
class Supervised(Objective):
    name = "supervised"
    default_noise_kind = "symmetric"
    noise_hint = "supervised pre-training flips class labels"
    family = "timm"
    sums = SUPERVISED_SUMS
    needs_classes = True

    def training_set(
        self, job: Any, split: Any, idx: np.ndarray, clean: np.ndarray, classes: list[str], base: dict[str, Any]
    ) -> tuple[Any, float, dict[str, Any], dict[str, Any], bool]:
        """``flip_labels(labels, K, noise_ratio, noise_kind, seed)`` on the true labels; kinds
        that need per-sample ``features`` get the corpus' pixels (or thumbnails)."""
        from benchmark.noise import flip_labels, get_noise_kind
        from benchmark.pretrain.corpus import (
            LabelTable,
            _instance_features,
            _npz_fields,
        )

        if not classes or (clean < 0).any():
            raise ConfigError(
                f"pretrain job {job.name}: corpus {job.corpus!r} is unlabelled; "
                "supervised pre-training needs class labels (use objective: clip)"
            )
        # Instance-dependent noise (Xia et al.) draws flip rates from the samples themselves:
        # the pixels are the features, so the noise does not depend on any model.
        kind = get_noise_kind(job.noise_kind)
        feats = _instance_features(split, job) if "features" in kind.inputs else None
        nr = flip_labels(
            clean,
            len(classes),
            float(job.noise_ratio),
            kind=job.noise_kind,
            seed=job.seed,
            class_map=job.class_map,
            features=feats,
        )
        record = {**_npz_fields(nr.to_npz), "indices": idx, "clean_labels": clean}
        summary = {**base, "realised_ratio": float(nr.realised_ratio), "num_flipped": int(nr.flipped.sum())}
        table = LabelTable(nr.noisy_labels.astype(np.int64), clean, nr.flipped.astype(bool))
        return table, float(nr.realised_ratio), record, summary, False

    def build_model(self, cfg: dict[str, Any]) -> tuple[Any, Any]:
        from benchmark import backbones

        model = backbones.create_timm_classifier(
            cfg["arch"], cfg["num_classes"], cfg["image_size"], cfg["seed"], **cfg.get("model_kwargs", {})
        )
        return model, None

    def batch_step(
        self, split: Any, table: Any, cfg: dict[str, Any], tokenizer: Any, device: Any, on: Any, rank: int, world: int
    ) -> _Step:
        return _Step(table, device, on)

    def epoch_metrics(self, sums: Sequence[float]) -> dict[str, float]:
        s = dict(zip(SUPERVISED_SUMS, sums))
        out = {
            "loss": s["loss"] / s["n"],
            "train_accuracy": s["correct"] / s["n"],
            "clean_accuracy": s["clean_ok"] / s["n"],
        }
        if s["unflipped"]:
            out["unflipped_accuracy"] = s["unflipped_ok"] / s["unflipped"]
        if s["flipped"]:
            out["noisy_fit"] = s["noisy_fit"] / s["flipped"]
            out["true_fit"] = s["true_fit"] / s["flipped"]
        return out
