"""Captions for image-text pre-training, built from class names and a few sentence templates.

The labelled corpora the suite pre-trains on have no captions, so a CLIP-style objective needs
text made from the class name. Several templates per class keep the text tower from learning a
single token pattern; which template a sample gets is a seeded draw, so the same job always sees
the same captions and caption noise (``benchmark.noise.swap_captions``) is applied on top of a
reproducible clean set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmark.errors import ConfigError

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a picture of a {c}.",
    "an image of the {c}.",
    "a small photo of the {c}.",
    "a low resolution photo of a {c}.",
    "a cropped photo of a {c}.",
    "a black and white photo of the {c}.",
    "a close-up picture of a {c}.",
)


def class_captions(
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    seed: int = 0,
    templates: Sequence[str] = CAPTION_TEMPLATES,
) -> list[str]:
    """One caption per sample: ``templates[k].format(c=classes[label])`` with ``k`` drawn per sample.

    The draw uses its own generator seeded by ``seed``, so it never shifts other seeded draws.
    Class names have underscores replaced by spaces ("ankle_boot" -> "ankle boot") because the
    tokenizer should see words, not identifiers.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not templates:
        raise ConfigError("class_captions: no templates given; pass at least one '{c}' template")
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise ConfigError(f"caption templates {bad} lack the '{{c}}' placeholder; add it")
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ConfigError(
            f"labels range {labels.min()}..{labels.max()} does not fit {len(classes)} classes; "
            "pass the split's own class list"
        )
    names = [str(c).replace("_", " ").strip() for c in classes]
    picks = np.random.default_rng(seed).integers(0, len(templates), size=labels.size)
    return [templates[k].format(c=names[y]) for k, y in zip(picks.tolist(), labels.tolist())]
