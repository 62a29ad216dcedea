"""CLIP-style image-text pre-training: symmetric InfoNCE over the global batch, a fraction of the
pairs given another pair's caption.

Its noise kinds are the caption kinds (``benchmark.noise``, data ``"captions"``), drawn on the
caption table (the corpus' own captions, else class templates); its memorisation metrics are the
normalised ranks of each image's paired caption, apart for matched and swapped pairs. No torch
at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.errors import ConfigError
from benchmark.pretrain.objectives import Objective, register_objective

#: Order of the per-epoch sums (``recipe.clip_step``).
CLIP_SUMS = ("loss", "n", "correct", "matched", "matched_rank", "mismatched", "mismatched_rank")


class _Captions:
    """Token ids of the caption each image trains with: template captions (a few distinct
    texts) are tokenised once; a corpus' own caption table is tokenised batch by batch."""

    def __init__(self, split: Any, table: Any, cfg: dict[str, Any], tokenizer: Any, device: Any) -> None:
        import torch

        from benchmark.pretrain.corpus import clean_captions

        texts = clean_captions(split, table.clean, cfg["classes"], cfg["seed"])
        self.source, self.tokenizer, self.device = table.targets, tokenizer, device
        self.per_batch = bool(cfg.get("has_caption_table"))
        if self.per_batch:
            self.texts = texts
        else:
            unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
            self.tokens = torch.as_tensor(np.asarray(tokenizer(list(unique))), dtype=torch.int64, device=device)
            self.row = torch.as_tensor(inverse[self.source], device=device)

    def __call__(self, pos: Any) -> Any:
        import torch

        if self.per_batch:
            texts = [self.texts[int(self.source[p])] for p in pos.tolist()]
            return torch.as_tensor(np.asarray(self.tokenizer(texts)), dtype=torch.int64).to(
                self.device, non_blocking=True
            )
        return self.tokens[self.row[pos.to(self.row.device)]]


class _Step:
    """The swap mask on the worker's device, the captions' tokens; one batch's step."""

    def __init__(
        self, split: Any, table: Any, cfg: dict[str, Any], tokenizer: Any, device: Any, on: Any, rank: int, world: int
    ) -> None:
        import torch

        self.device, self.rank, self.world = device, rank, world
        self.noisy = torch.as_tensor(table.noisy, device=on)
        self.captions = _Captions(split, table, cfg, tokenizer, device)

    def __call__(self, model: Any, x: Any, pos_on: Any, pos: Any) -> tuple[Any, Any]:
        from benchmark.pretrain.recipe import clip_step

        return clip_step(model(x, self.captions(pos)), self.noisy[pos_on].to(self.device), self.rank, self.world)

    def after_update(self, model: Any) -> None:
        from benchmark.pretrain.recipe import clamp_logit_scale

        clamp_logit_scale(model)


@register_objective
class Clip(Objective):
    name = "clip"
    default_noise_kind = "swap"
    noise_hint = "image-text pre-training corrupts pairs by swapping captions"
    family = "open_clip"
    sums = CLIP_SUMS
    needs_classes = False

    def training_set(
        self, job: Any, split: Any, idx: np.ndarray, clean: np.ndarray, classes: list[str], base: dict[str, Any]
    ) -> tuple[Any, float, dict[str, Any], dict[str, Any], bool]:
        """The clean captions (``corpus.clean_captions``), then the job's caption kind (``swap``:
        ``swap_captions``) with the job's seed; the record keeps, per image, the index of the
        caption it trains with (``caption_source``)."""
        from benchmark.noise import get_noise_kind, transition_matrix
        from benchmark.pretrain.corpus import (
            LabelTable,
            caption_sources,
            clean_captions,
        )

        texts = clean_captions(split, clean, classes, job.seed)
        own_table = getattr(split, "captions", None) is not None
        sw = get_noise_kind(job.noise_kind).fn(texts, float(job.noise_ratio), job.seed)
        mismatched = sw.mismatched.astype(bool)
        source = caption_sources(texts, sw.captions, mismatched)
        record: dict[str, Any] = {
            "mismatched": mismatched,
            "caption_source": source,
            "realised_ratio": np.float64(sw.realised_ratio),
            "kind": np.str_(job.noise_kind),
            "ratio": np.float64(job.noise_ratio),
            "seed": np.int64(job.seed),
            "indices": idx,
            "clean_labels": clean,
        }
        summary = {
            **base,
            "realised_ratio": float(sw.realised_ratio),
            "num_mismatched": int(mismatched.sum()),
            "captions": "corpus" if own_table else "class templates",
        }
        if classes and (clean >= 0).all():
            cap_labels = clean[source]
            record["caption_labels"] = cap_labels
            record["transition"] = transition_matrix(clean, cap_labels, len(classes))
            # Swaps between two templates of one class change the text, not the class.
            summary["num_class_mismatched"] = int((cap_labels != clean).sum())
        if not own_table:  # template captions: short, so the record shows them as text
            record["clean_captions"] = np.array(texts, dtype=np.str_)
            record["captions"] = np.array(sw.captions, dtype=np.str_)
        table = LabelTable(source, clean, mismatched)
        return table, float(sw.realised_ratio), record, summary, own_table

    def build_model(self, cfg: dict[str, Any]) -> tuple[Any, Any]:
        from benchmark import backbones

        return backbones.create_open_clip_model(cfg["arch"], cfg["seed"], **(cfg.get("model_kwargs") or {}))

    def check_model(self, job: Any, model: Any) -> None:
        """open_clip vision towers fix their input size; the job must train at that size."""
        size = getattr(getattr(model, "visual", None), "image_size", None)
        if size is None:
            return
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        if size != job.image_size:
            raise ConfigError(
                f"clip job {job.name}: {job.arch} takes {size}px images, the job "
                f"says image_size {job.image_size}; set image_size: {size} (or pass "
                f"model_kwargs force_image_size: {job.image_size})"
            )

    def batch_step(
        self, split: Any, table: Any, cfg: dict[str, Any], tokenizer: Any, device: Any, on: Any, rank: int, world: int
    ) -> _Step:
        return _Step(split, table, cfg, tokenizer, device, on, rank, world)

    def epoch_metrics(self, sums: Sequence[float]) -> dict[str, float]:
        s = dict(zip(CLIP_SUMS, sums))
        out = {"loss": s["loss"] / s["n"], "train_accuracy": s["correct"] / s["n"]}
        if s["matched"]:
            out["matched_rank"] = s["matched_rank"] / s["matched"]
        if s["mismatched"]:
            out["mismatched_rank"] = s["mismatched_rank"] / s["mismatched"]
        return out
