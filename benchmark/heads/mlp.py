"""NMTune's residual MLP trained with cross-entropy only (``mlp``): the MLP baseline.

``width`` (hidden width = width x feature width; ``ratio`` before it was renamed, the name fit
keys still hash: ``hparams.KEY_ALIASES``) and ``depth`` (hidden blocks) shape the module
(``heads.modules.ResidualMLPHead``); NMTune declares the same two and adds its regularisers.
"""

from __future__ import annotations

from benchmark.heads.gradient import gradient_hparams
from benchmark.heads.hparams import HParam
from benchmark.heads.registry import HeadSpec, register_head

WIDTH = HParam(
    "width",
    "float",
    4,
    "hidden width as a multiple of the feature width",
    positive=True,
    arch=True,
    tiebreak=2,
    label=None,
)
DEPTH = HParam("depth", "int", 1, "hidden Linear-BatchNorm-ReLU blocks", minimum=1, arch=True, tiebreak=1, label="d{}")
RESIDUAL_MLP = (WIDTH, DEPTH)

MLP = register_head(
    HeadSpec(
        name="mlp",
        label="MLP",
        order=2,
        description="NMTune's residual MLP trained with cross-entropy only (the MLP baseline)",
        hparams=(*gradient_hparams(), *RESIDUAL_MLP),
        builder="benchmark.heads.modules:ResidualMLPHead",
        labelled=("depth",),
        style=("tab:orange", "s"),
    )
)
