"""Full fine-tuning (``finetune``): the reference arm that trains the whole backbone with its head.

Every other head reads the cached frozen features of a backbone. This one trains the backbone's
own weights together with a linear head on the task's images (``benchmark.finetune``), with
cross-entropy, or with NMTune's regularisers (``heads/nmtune.py``) added on the backbone's
features when ``lam`` > 0: the feature ``z`` the head classifies is kept near the pre-trained
feature ``f`` of the same image (consistency), decorrelated (covariance) and with its dominant
singular values spread (SVD), weighted as the NMTune ``preset`` says. It is the arm the frozen
heads are measured against: what having the weights buys. So it is never a default head, its
budget is small and fixed (``epochs`` 2), and it declares ``inputs="images"``: its fits cannot use
the feature cache, encode the training images every epoch, and run as their own trials
(``benchmark.finetune_run``). A black-box backbone (no weights) refuses it at plan time.

``backbone_lr`` scales the learning rate of the backbone's weights against the head's ``lr``
(the usual lower rate for pre-trained weights); ``epoch_selection`` keeps the epoch with the best
validation accuracy (or the last), as for the other gradient heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from benchmark.errors import ConfigError, UnknownNameError
from benchmark.heads.gradient import BATCH_SIZE, EPOCH_SELECTION, EPOCHS, LR, WEIGHT_DECAY
from benchmark.heads.hparams import HParam
from benchmark.heads.nmtune import NMTUNE_PRESETS
from benchmark.heads.registry import HeadSpec, get_head, register_head

#: The fixed small budget of the reference arm: two epochs over the task's training rows.
FINETUNE_EPOCHS = 2


def _known_preset(name: str, val: Any) -> str:
    if val not in NMTUNE_PRESETS:
        raise UnknownNameError("NMTune preset", str(val), NMTUNE_PRESETS, hint=f"({name})")
    return str(val)


#: Backbone families that are opaque functions: no weights to train.
WEIGHTLESS_FAMILIES: frozenset[str] = frozenset({"blackbox"})


def weightless_message(head: str, backbone: str) -> str:
    """The refusal of a head that trains the backbone on a backbone without weights, naming the
    alternative."""
    return (
        f"head {head!r} trains the backbone's weights; backbone {backbone!r} is a black box (no weights): "
        f"use the frozen-feature heads lp, mlp, nmtune or lgm for it, or remove {head}"
    )


def image_heads(heads: Iterable[str]) -> list[str]:
    """The heads among ``heads`` that train on images (``inputs="images"``)."""
    return [h for h in heads if get_head(h).inputs == "images"]


def check_image_heads(heads: Iterable[str], backbones: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """``ConfigError`` when a head that trains the backbone meets a black-box backbone.

    ``backbones``: (display name, spec) of every backbone the suite evaluates. Called when the plan
    is made (``plan.make_plan``), so ``nmlbench validate``/``plan``/``run`` refuse before any work.
    """
    wanting = image_heads(heads)
    for name, spec in backbones:
        if wanting and str(spec.get("family")) in WEIGHTLESS_FAMILIES:
            raise ConfigError(weightless_message(wanting[0], name))


def _refuse_features(data: object, requests: object) -> list[object]:
    """``fitter`` on cached features: fine-tuning cannot run there (it needs the backbone)."""
    raise ConfigError(
        f"head {FINETUNE.name!r} trains the backbone's weights on the task's images; it cannot be fitted on "
        "cached features. Run it through a suite (its fits run as their own trials: benchmark.finetune_run) "
        "or call benchmark.finetune.finetune with the backbone"
    )


FINETUNE = register_head(
    HeadSpec(
        name="finetune",
        label="Fine-tune",
        order=5,
        description="the whole backbone and a linear head trained end to end on the task's images (the "
        "reference arm: needs the weights; cross-entropy, or NMTune's regularisers with lam > 0)",
        hparams=(
            replace(EPOCHS, default=FINETUNE_EPOCHS),
            replace(BATCH_SIZE, default=32),
            LR,
            WEIGHT_DECAY,
            EPOCH_SELECTION,
            HParam(
                "backbone_lr",
                "float",
                0.1,
                "learning rate of the backbone's weights as a multiple of lr (0 trains the head only)",
            ),
            HParam(
                "preset",
                "str",
                "reference",
                "paper | reference: NMTune's weights of its three terms (used when lam > 0)",
                check=_known_preset,
            ),
            HParam(
                "lam",
                "float",
                0.0,
                "weight of NMTune's regularisers on the backbone's features (0 = cross-entropy)",
                tiebreak=0,
                label="λ{:g}",
            ),
        ),
        builder="benchmark.heads.modules:LinearHead",
        fitter="benchmark.heads.finetune:_refuse_features",
        default=False,  # a suite names it: the reference arm is dear, and existing suites keep their fits
        labelled=("lam",),
        style=("tab:brown", "P"),
        inputs="images",
    )
)
