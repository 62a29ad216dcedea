"""Noise-robust task losses (benchmark/heads/robust.py): GCE and SCE against their formulas, the
``loss`` hyper-parameter on every gradient head (default ``ce`` leaves fit keys alone), and both
engines training NMTune / LGM / MLP on top of them alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from benchmark.errors import ConfigError
from benchmark.heads import NMTuneLoss, get_head, resolve_hparams
from benchmark.heads.robust import SCE_LOG_ZERO, StackedRowLoss, loss_suffix, robust_rows
from benchmark.plan import fit_key
from benchmark.probe import FitRequest, prepare_data, train_head
from benchmark.probe.batched import fit_gradient_heads
from benchmark.probe.train import head_loss

GRADIENT_HEADS = ("lp_adamw", "mlp", "nmtune", "lgm")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: bit-identical asserts need one thread


def _logits(seed: int = 0, b: int = 7, k: int = 4):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(b, k, generator=g, dtype=torch.float64), torch.randint(0, k, (b,), generator=g)


def test_gce_matches_its_formula_and_tends_to_cross_entropy():
    logits, y = _logits()
    p_y = torch.softmax(logits, 1)[torch.arange(len(y)), y]
    for q in (0.3, 0.7, 1.0):
        torch.testing.assert_close(robust_rows(logits, y, "gce", q=q), (1 - p_y**q) / q, rtol=1e-12, atol=1e-14)
    ce = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(robust_rows(logits, y, "gce", q=1e-7), ce, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(robust_rows(logits, y, "gce", q=1.0), 1 - p_y)  # q = 1: the MAE


def test_sce_matches_its_formula():
    logits, y = _logits(1)
    p = torch.softmax(logits, 1)
    onehot = F.one_hot(y, 4).bool()
    log_label = torch.where(onehot, torch.zeros(()), torch.full((), SCE_LOG_ZERO, dtype=torch.float64))
    rce = -(p * log_label).sum(1)  # the reverse cross-entropy with log 0 clipped to A = -4
    ce = -torch.log(p[onehot])
    for alpha, beta in ((0.1, 1.0), (1.0, 0.5)):
        want = alpha * ce + beta * rce
        torch.testing.assert_close(robust_rows(logits, y, "sce", alpha=alpha, beta=beta), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["ce", "gce", "sce"])
def test_gradients_are_finite_even_for_confident_wrong_rows(kind):
    logits = torch.tensor([[60.0, -60.0, 0.0], [0.0, 0.0, 0.0], [-80.0, 80.0, 1.0]], requires_grad=True)
    y = torch.tensor([1, 2, 0])
    (grad,) = torch.autograd.grad(robust_rows(logits, y, kind).sum(), logits)
    assert bool(torch.isfinite(grad).all())


def test_stacked_rows_are_each_members_own_loss():
    logits, y = _logits(2)
    hps = [
        resolve_hparams("mlp"),
        resolve_hparams("mlp", loss="gce", gce_q=0.5),
        resolve_hparams("nmtune", loss="sce", sce_beta=2.0),
    ]
    stacked = StackedRowLoss(hps)(logits.expand(3, -1, -1), y.expand(3, -1))
    torch.testing.assert_close(stacked[0], F.cross_entropy(logits, y, reduction="none"))
    torch.testing.assert_close(stacked[1], robust_rows(logits, y, "gce", q=0.5))
    torch.testing.assert_close(stacked[2], robust_rows(logits, y, "sce", alpha=0.1, beta=2.0))


@pytest.mark.parametrize("method", GRADIENT_HEADS)
def test_loss_is_a_grid_axis_of_every_gradient_head_and_ce_keeps_the_key(method):
    head = get_head(method)
    assert "loss" in head.grid_axes and "loss" in head.per_member
    default = resolve_hparams(method)
    assert "loss" not in default.as_dict()
    assert resolve_hparams(method, loss="ce") == default  # ce is stored as unset: the same fit key
    assert fit_key("p", resolve_hparams(method, loss="ce"), 0, 1.0) == fit_key("p", default, 0, 1.0)
    gce = resolve_hparams(method, loss="gce")
    assert gce.as_dict()["gce_q"] == 0.7 and gce.sce_alpha is None  # the paper's q filled in
    assert resolve_hparams(method, loss="sce").as_dict()["sce_alpha"] == 0.1
    assert fit_key("p", gce, 0, 1.0) != fit_key("p", default, 0, 1.0)
    with pytest.raises(ConfigError, match="gce_q applies to loss 'gce'"):
        resolve_hparams(method, gce_q=0.5)
    with pytest.raises(ConfigError, match=r"gce_q must be in \(0, 1\]"):
        resolve_hparams(method, loss="gce", gce_q=1.5)
    with pytest.raises(ConfigError, match="loss must be one of ce, gce, sce"):
        resolve_hparams(method, loss="mae")
    assert loss_suffix(gce) == "+GCE" and loss_suffix({"loss": "sce"}) == "+SCE" and loss_suffix(default) == ""


def test_nmtune_regularisers_add_to_gce_instead_of_cross_entropy():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(16, 6, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    z = f + 0.1 * torch.randn(16, 6, generator=g)
    logits = z @ torch.randn(6, 3, generator=g)
    plain = resolve_hparams("nmtune", lam=0.5)
    robust = resolve_hparams("nmtune", lam=0.5, loss="gce")
    ce_total, terms = NMTuneLoss.from_hparams(plain)(logits, y, z, f)
    gce_total, gce_terms = head_loss(robust)(logits, y, z, f)
    gce = robust_rows(logits, y, "gce", q=0.7).mean()
    torch.testing.assert_close(gce_terms["ce"], gce)
    torch.testing.assert_close(gce_total - gce, ce_total - terms["ce"], rtol=1e-5, atol=1e-6)


def _blobs(n: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = np.random.default_rng(0).standard_normal((k, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return torch.tensor(2 * centres[y] + rng.standard_normal((n, d)), dtype=torch.float32), torch.tensor(y)


def test_batched_fits_with_robust_losses_equal_lone_fits():
    x, y = _blobs(120, 3, 6, seed=1)
    vx, vy = _blobs(60, 3, 6, seed=2)
    data = prepare_data(x, y, {"val": vx, "test": vx}, {"val": vy, "test": vy}, device="cpu")
    common = {"epochs": 3, "batch_size": 32, "lr": 3e-3}
    hps = [
        resolve_hparams("mlp", **common),
        resolve_hparams("mlp", loss="gce", **common),
        resolve_hparams("nmtune", loss="sce", lam=0.1, **common),
        resolve_hparams("nmtune", lam=0.1, **common),
        resolve_hparams("lgm", loss="gce", lgm_sigma=0.1, **common),
    ]
    assert len({hp.batch_key() for hp in hps}) == 1
    requests = [FitRequest(hp, seed=i) for i, hp in enumerate(hps)]
    batched = fit_gradient_heads(data, requests)
    for req, got in zip(requests, batched, strict=True):
        alone = train_head(data, req.hparams, seed=req.seed)
        assert not isinstance(got, Exception)
        np.testing.assert_allclose(got.curves["train_loss"], alone.curves["train_loss"], rtol=1e-4)
        assert got.curves["val_accuracy"] == alone.curves["val_accuracy"]
        assert all(np.isfinite(got.curves["train_loss"]))


def test_a_head_with_a_robust_loss_is_a_leaderboard_row_of_its_own():
    from support import synthetic_runs

    from benchmark.heads import head_label, head_order, hparam_label, plot_style
    from benchmark.leaderboard import leaderboard

    plain = synthetic_runs()
    gce = plain[plain["head"] == "nmtune"].assign(
        loss="gce", val_accuracy=lambda d: d["val_accuracy"] * 0.9, test_accuracy=lambda d: d["test_accuracy"] * 0.8
    )
    both = pd.concat([plain.assign(loss=np.nan), gce], ignore_index=True)
    board = leaderboard(both)
    assert set(board["head"]) == {"lp", "nmtune", "nmtune+gce"}
    alone = leaderboard(plain).set_index(["noise_ratio", "head"])
    mixed = board.set_index(["noise_ratio", "head"])
    for key in alone.index:  # the cross-entropy rows are exactly what they were without the GCE fits
        assert mixed.loc[key, "id_acc"] == alone.loc[key, "id_acc"], key
    ratio = mixed.xs("nmtune+gce", level="head")["id_acc"] / mixed.xs("nmtune", level="head")["id_acc"]
    np.testing.assert_allclose(ratio, 0.8)  # validation still chose the same configs, test scaled by 0.8
    assert head_label("nmtune+gce") == "NMTune+GCE" and head_label("lgm+sce") == "LGM+SCE"
    assert head_order("nmtune+gce") == head_order("nmtune") and plot_style("mlp+gce") == plot_style("mlp")
    assert hparam_label("nmtune+gce", {"lam": 0.1, "depth": 1}) == "λ0.1 d1"


def test_the_rows_a_robust_loss_adds_count_their_own_fits():
    """``leaderboard_rows`` (what ``nmlbench run`` publishes to MLflow) counts the fits of each row
    under the row's own head: ``nmtune+gce`` rows once had no count (NaN), and publishing the board
    of a suite with a robust loss failed on it (``int(nan)``)."""
    from support import synthetic_runs

    from benchmark.leaderboard import leaderboard_rows
    from benchmark.reporting.publish import _row_entry

    plain = synthetic_runs()
    gce = plain[plain["head"] == "nmtune"].assign(loss="gce")
    both = pd.concat([plain.assign(loss=np.nan), gce], ignore_index=True)
    rows = leaderboard_rows(both)
    assert set(rows["head"]) == {"lp", "nmtune", "nmtune+gce"} and not rows["fits"].isna().any()
    for (ratio, head), part in rows.groupby(["noise_ratio", "head"]):
        plain_head = head.removesuffix("+gce")
        fits = both[(both["noise_ratio"] == ratio) & (both["head"] == plain_head)]
        fits = fits[fits["loss"].eq("gce") == head.endswith("+gce")]
        assert int(part["fits"].iloc[0]) == len(fits) > 0, (ratio, head)
    entries = [_row_entry("s", i, r, False) for i, r in enumerate(rows.to_dict("records"))]
    assert [e["params"]["fits"] for e in entries] == [int(v) for v in rows["fits"]]
