"""The paper's linear probe (``lp_adamw``): AdamW, lr 0.1, no weight decay, 30 epochs, last epoch.

A reproduction variant, run when a suite names it (not by default); ``lp`` is the converged probe.
"""

from __future__ import annotations

from benchmark.heads.gradient import gradient_hparams
from benchmark.heads.registry import HeadSpec, register_head

LP_ADAMW = register_head(
    HeadSpec(
        name="lp_adamw",
        label="LP (AdamW)",
        order=1,
        description="the paper's linear probe: AdamW, lr 0.1, no weight decay, 30 epochs, cosine schedule, last epoch",
        hparams=gradient_hparams(lr=0.1, weight_decay=0.0, epoch_selection="last"),
        builder="benchmark.heads.modules:LinearHead",
        default=False,
    )
)
