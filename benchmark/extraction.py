"""The features stage: frozen features of each (backbone, task) pair, through the on-disk cache.

One call of ``extract_backbone`` builds a backbone once and returns, for each of its pairs, the
train, validation and test features as a ``FeaturePayload`` (float32 numpy, L2-normalised per row
when the suite asks); the runner makes it one Ray task per backbone with one returned object per
pair, and one small summary per pair (spectra and width, ``extract_with_summaries``), so every
head-fit trial fetches only its own pair. Grouping by backbone matters: a Ray task pays for a
worker, the torch import, the data sets and the model, and the quick suite's 42 pairs share 7
backbones. A split several tasks read (a test domain of two OOD groups) is encoded once per task
call. Extraction runs with deterministic algorithms and ``$NMLBENCH_THREADS`` threads
(``benchmark.determinism``), restored after: a cache refill of a key gives the same bits on
the same machine. When all of a pair's splits are cached it writes a small marker
(``pairs/<pair key>.json``), so ``nmlbench plan`` can say which pairs need no extraction without
building any backbone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.atomic import atomic_write_json
from benchmark.plan import PairPlan
from benchmark.task_plan import SplitRef

#: Threads one extraction task may use (Ray gives each task one CPU by default).
THREADS_ENV = "NMLBENCH_THREADS"


@dataclass
class FeaturePayload:
    """Features of one (backbone, task) pair: train, val and one or more test sets.

    Arrays are float32 numpy (zero-copy out of Ray's object store). ``class_subsets`` restricts
    the competing logits of a test set (ImageNet-A/-R style label spaces).
    """

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    tests: dict[str, tuple[np.ndarray, np.ndarray]]
    num_classes: int
    class_subsets: dict[str, np.ndarray] = field(default_factory=dict)


def pair_marker(cache_root: str | Path, pair_key: str) -> Path:
    """The file that says a pair's features are all in the cache under ``cache_root``."""
    return Path(cache_root) / "pairs" / f"{pair_key}.json"


def resolve_split(ref: SplitRef, data_root: str | None) -> Any:
    """The ``ImageSplit`` a ``SplitRef`` names (rows selected)."""
    from benchmark.data import get_dataset

    split = get_dataset(ref.dataset, data_root).split(ref.split)
    return split if ref.indices is None else split.subset(np.asarray(ref.indices, dtype=np.int64))


def extract_backbone(
    pairs: Sequence[PairPlan], cache_root: str, data_root: str | None, normalize: bool
) -> tuple[FeaturePayload, ...]:
    """Payloads of pairs that share one backbone, in order, building the backbone once (GPU when present)."""
    from benchmark.determinism import deterministic_section

    if len({p.backbone.key for p in pairs}) > 1:
        raise ValueError("extract_backbone takes pairs of one backbone; group them by backbone key")
    threads = max(1, int(os.environ.get(THREADS_ENV, "1")))
    with deterministic_section(threads):  # a cache refill under the same key: the same bits
        return _extract(pairs, cache_root, data_root, normalize)


def _extract(
    pairs: Sequence[PairPlan], cache_root: str, data_root: str | None, normalize: bool
) -> tuple[FeaturePayload, ...]:
    """``extract_backbone``'s work, inside its deterministic section."""
    import torch

    from benchmark.backbones import create_backbone
    from benchmark.features import FeatureCache

    backbone = create_backbone(dict(pairs[0].backbone.spec))
    cache = FeatureCache(cache_root, progress=False)
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def get(ref: SplitRef) -> tuple[np.ndarray, np.ndarray]:
        key = ref.fingerprint()
        if key not in seen:
            f = cache.get(backbone, resolve_split(ref, data_root))
            x = f.x.float()
            if normalize:
                x = torch.nn.functional.normalize(x, dim=1)
            seen[key] = (x.numpy().astype(np.float32, copy=False), f.y.numpy().astype(np.int64, copy=False))
        return seen[key]

    payloads = []
    for pair in pairs:
        task = pair.task
        tests = {name: get(ref) for name, ref in task.tests}
        subsets = {
            name: cs for name, ref in task.tests if (cs := resolve_split(ref, data_root).class_subset) is not None
        }
        payloads.append(
            FeaturePayload(
                train=get(task.train),
                val=get(task.val),
                tests=tests,
                num_classes=task.num_classes,
                class_subsets=subsets,
            )
        )
        atomic_write_json(
            pair_marker(cache_root, pair.key),
            {
                "pair": pair.key,
                "backbone": pair.backbone.display,
                "backbone_identity": backbone.identity,
                "task": task.name,
                "rows": {"train": len(task.train), "val": len(task.val)},
            },
        )
    return tuple(payloads)


def extract_payload(pair: PairPlan, cache_root: str, data_root: str | None, normalize: bool) -> FeaturePayload:
    """The payload of a single pair (``extract_backbone`` of one)."""
    return extract_backbone([pair], cache_root, data_root, normalize)[0]


def extract_with_summaries(
    pairs: Sequence[PairPlan], cache_root: str, data_root: str | None, normalize: bool
) -> tuple[Any, ...]:
    """``extract_backbone``'s payloads, then each pair's ``payload_summary``: 2 x len(pairs) objects.

    The runner's features task. The summaries (spectra, width) are computed where the features
    already are, so the driver gets what it logs and orders by as small objects of the same task,
    instead of from one more task per pair started after all extraction is done.
    """
    payloads = extract_backbone(pairs, cache_root, data_root, normalize)
    return (*payloads, *(payload_summary(p) for p in payloads))


def payload_spectrum(payload: FeaturePayload) -> dict[str, np.ndarray]:
    """Singular values of the frozen test features of a pair (for the spectra figure)."""
    from benchmark.spectrum import singular_values

    return {name: singular_values(x) for name, (x, _) in payload.tests.items()}


def payload_summary(payload: FeaturePayload) -> dict[str, Any]:
    """What the driver needs of a payload without fetching it: the test features' spectra (the
    spectra figure) and the feature width (to run the heads' largest trials first)."""
    return {"spectra": payload_spectrum(payload), "width": int(np.shape(payload.train[0])[1])}
