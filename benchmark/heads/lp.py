"""The converged linear probe (``lp``): the probe the paper's claims 1-3 read.

Multinomial logistic regression solved to convergence by L-BFGS in float64 on centred, globally
scaled features (``probe.linear``, ``probe.lbfgs``); its L2 strength is chosen on validation from
``l2_steps`` log-spaced values in ``[l2_min, l2_max]``, then ``l2_refine`` values between the
winner's neighbours. ``standardize`` scales each feature dimension instead of one global scale;
``max_iter`` and ``tol`` (largest gradient entry at convergence) stop the solver.
"""

from __future__ import annotations

from typing import Any

from benchmark.errors import ConfigError
from benchmark.heads.hparams import HParam
from benchmark.heads.registry import HeadSpec, register_head


def check_l2_range(values: dict[str, Any]) -> dict[str, Any]:
    """``l2_min`` must not exceed ``l2_max``."""
    if values["l2_min"] > values["l2_max"]:
        raise ConfigError(f"l2_min={values['l2_min']:g} is above l2_max={values['l2_max']:g}; swap them")
    return values


LP = register_head(
    HeadSpec(
        name="lp",
        label="LP",
        order=0,
        description="linear probe solved to convergence: multinomial logistic regression (L-BFGS, float64) on "
        "centred, scaled features, its L2 strength chosen on the validation split from a log-spaced grid",
        hparams=(
            HParam("l2_min", "float", 1e-6, "smallest L2 strength of the search", positive=True),
            HParam("l2_max", "float", 10.0, "largest L2 strength of the search", positive=True),
            HParam("l2_steps", "int", 15, "log-spaced L2 values", minimum=1),
            HParam("l2_refine", "int", 4, "values between the best one's neighbours", minimum=0),
            HParam("standardize", "bool", False, "scale each dimension (else one global scale)"),
            HParam("max_iter", "int", 1000, "L-BFGS iterations at most", minimum=1),
            HParam("tol", "float", 1e-6, "largest gradient entry at convergence", positive=True),
        ),
        builder="benchmark.heads.modules:LinearHead",
        fitter="benchmark.probe.linear:fit_linear_probes",
        finish=check_l2_range,
        style=("tab:blue", "o"),
        role="probe",
    )
)
