"""Out-of-domain groups: train a head on one set, test it on others that share its label space.

The paper's OOD protocol (DomainNet real -> sketch, painting, clipart; ImageNet -> V2, Sketch, A,
R) needs a real data root; the two embedded digit groups give the same kind of shift offline
(measured: an MNIST-trained CNN drops from 0.997 to 0.82 on sklearn digits and ~0.96 on fonts).
A group is only meaningful when every member scores the same logits, hence
``check_label_space``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from benchmark.data.registry import get_dataset
from benchmark.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class OODGroup:
    """Train on ``train``'s train split; evaluate on the test split of each of ``tests``."""

    name: str
    train: str
    tests: tuple[str, ...]
    description: str = ""

    @property
    def members(self) -> tuple[str, ...]:
        return (self.train, *self.tests)


OOD_GROUPS: dict[str, OODGroup] = {
    g.name: g
    for g in (
        OODGroup(
            "digits-from-mnist",
            "mnist-5k",
            ("sklearn-digits", "digits-printed", "digits-handwriting"),
            "MNIST handwriting -> other writers (sklearn, 8x8 upscaled) and font-rendered digits",
        ),
        OODGroup(
            "digits-from-fonts",
            "digits-printed",
            ("mnist-5k", "sklearn-digits"),
            "printed font digits -> real handwriting (MNIST, sklearn)",
        ),
        OODGroup(
            "domainnet-real",
            "domainnet-real",
            ("domainnet-sketch", "domainnet-painting", "domainnet-clipart"),
            "DomainNet photos -> sketch, painting, clipart (paper's OOD protocol)",
        ),
        OODGroup(
            "domainnet-sketch",
            "domainnet-sketch",
            ("domainnet-real", "domainnet-painting", "domainnet-clipart"),
            "DomainNet sketches -> real, painting, clipart (paper's OOD protocol)",
        ),
        OODGroup(
            "imagenet-variants",
            "imagenet",
            ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"),
            "ImageNet LP -> V2, Sketch, A, R (A and R score their 200 classes only)",
        ),
    )
}


def get_ood_group(name: str) -> OODGroup:
    if name not in OOD_GROUPS:
        raise UnknownNameError("OOD group", name, OOD_GROUPS)
    return OOD_GROUPS[name]


def check_label_space(group: OODGroup | str, data_root: str | os.PathLike | None = None) -> None:
    """Raise ConfigError unless every member shares the train set's label space.

    Shared means the same class list; a test split may restrict itself to a ``class_subset`` of
    it (ImageNet-A/-R), and its labels must then lie inside that subset. Loads the members'
    splits, so real groups need their files (DatasetUnavailable otherwise).
    """
    group = get_ood_group(group) if isinstance(group, str) else group
    train = get_dataset(group.train, data_root).split("train")
    for name in group.tests:
        test = get_dataset(name, data_root).split("test")
        if list(test.classes) != list(train.classes):
            raise ConfigError(
                f"OOD group {group.name!r}: {name} has {test.num_classes} classes "
                f"({', '.join(test.classes[:3])}, ...) but {group.train} has {train.num_classes} "
                f"({', '.join(train.classes[:3])}, ...): members must share one label space"
            )
        allowed = np.arange(train.num_classes) if test.class_subset is None else test.class_subset
        if allowed.size and (allowed.min() < 0 or allowed.max() >= train.num_classes):
            raise ConfigError(
                f"OOD group {group.name!r}: {name}'s class_subset leaves the "
                f"{train.num_classes}-class label space of {group.train}"
            )
        stray = np.setdiff1d(np.unique(test.labels), allowed)
        if stray.size:
            raise ConfigError(
                f"OOD group {group.name!r}: {name} has labels {stray[:5].tolist()} outside its class_subset"
            )
