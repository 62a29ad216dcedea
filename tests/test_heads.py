"""Heads and NMTune's regularisers: shapes, formulas against hand computation, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.errors import ConfigError, UnknownNameError
from benchmark.heads import (
    NMTUNE_PRESETS,
    LinearHead,
    NMTunePreset,
    ResidualMLPHead,
    create_head,
    nmtune_regularisers,
)


def test_linear_head_returns_input_as_z():
    torch.manual_seed(0)
    head = LinearHead(8, 3)
    f = torch.randn(5, 8)
    logits, z = head(f)
    assert logits.shape == (5, 3)
    assert z is f


@pytest.mark.parametrize(("ratio", "depth", "n_bn"), [(4, 1, 1), (2, 3, 3), (0.5, 2, 2)])
def test_residual_mlp_structure(ratio, depth, n_bn):
    d, k = 6, 4
    head = ResidualMLPHead(d, k, ratio=ratio, depth=depth)
    hidden = int(round(ratio * d))
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(d, hidden)] + [(hidden, hidden)] * (
        depth - 1
    ) + [(hidden, d)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.mlp) == n_bn
    assert sum(isinstance(m, nn.ReLU) for m in head.mlp) == n_bn
    torch.testing.assert_close(head.scale.data, torch.ones(d))
    assert head.scale.requires_grad
    assert (head.classifier.in_features, head.classifier.out_features) == (d, k)


def test_residual_mlp_forward_is_scaled_residual():
    torch.manual_seed(1)
    head = ResidualMLPHead(5, 3).eval()
    with torch.no_grad():
        head.scale.copy_(torch.arange(5.0))
    f = torch.randn(7, 5)
    logits, z = head(f)
    torch.testing.assert_close(z, head.scale * head.mlp(f) + f)
    torch.testing.assert_close(logits, head.classifier(z))


def _reference_regularisers(z: np.ndarray, f: np.ndarray, k: int) -> dict[str, float]:
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    mse = np.mean(np.sum((zn - fn) ** 2, axis=1))
    cov = np.cov(z, rowvar=False)  # centred, divided by B - 1
    off = cov[~np.eye(z.shape[1], dtype=bool)]
    s = np.linalg.svd(z, compute_uv=False)
    return {"mse": mse, "cov": np.sum(off**2) / z.shape[1], "svd": -np.mean(s[:k] / s.sum())}


@pytest.mark.parametrize("k", [1, 5])
def test_regularisers_match_formulas(k):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((32, 12)) @ rng.standard_normal((12, 12)) + 0.3
    f = rng.standard_normal((32, 12))
    got = nmtune_regularisers(torch.tensor(z), torch.tensor(f), svd_topk=k)
    ref = _reference_regularisers(z, f, k)
    for name in ("mse", "cov", "svd"):  # float64 both sides: ~1e-16 x a few hundred ops, well-conditioned
        assert float(got[name]) == pytest.approx(ref[name], rel=1e-10), name


def test_batched_regularisers_equal_each_member_alone():
    """G x B x D in, one value per member out, each member with its own top-k."""
    g = torch.Generator().manual_seed(3)
    z, f = torch.randn(4, 16, 6, generator=g, dtype=torch.float64), torch.randn(4, 16, 6, generator=g, dtype=torch.float64)
    ks = torch.tensor([1, 5, 2, 9])  # 9 > min(B, D): all six singular values
    got = nmtune_regularisers(z, f, svd_topk=ks)
    for i, k in enumerate(ks.tolist()):
        ref = _reference_regularisers(z[i].numpy(), f[i].numpy(), k)
        for name in ("mse", "cov", "svd"):
            assert float(got[name][i]) == pytest.approx(ref[name], rel=1e-10), (name, i)  # float64, as above
    with pytest.raises(ConfigError, match="svd_topk"):
        nmtune_regularisers(z, f, svd_topk=torch.tensor([1, 0, 1, 1]))


def test_regulariser_extremes_and_gradients():
    f = torch.randn(16, 4)
    # z parallel to f: mse 0. Rank one z: svd term -1 (k=1). Isotropic uncorrelated z: cov ~ 0.
    # float32: the normalised rows agree to a few eps32 (1.2e-7) per entry, squared and summed: ~1e-14.
    assert float(nmtune_regularisers(3 * f, f)["mse"]) == pytest.approx(0.0, abs=1e-6)
    r1 = torch.outer(torch.randn(16), torch.randn(4))
    # float32 SVD of a rank-one matrix: the 3 other singular values are ~eps32 x s1, so -1 + ~4e-7.
    assert float(nmtune_regularisers(r1, f)["svd"]) == pytest.approx(-1.0, abs=1e-5)
    # Orthonormal, zero-mean columns (QR of centred columns keeps them centred): Cov = I / (B-1).
    x = torch.randn(16, 4, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(0))
    # float64: off-diagonal covariances of orthonormal columns are ~1e-17, their mean square ~1e-34.
    assert float(nmtune_regularisers(q, f.double())["cov"]) < 1e-24
    z = torch.randn(16, 4, requires_grad=True)
    reg = nmtune_regularisers(z, f, svd_topk=2)
    sum(reg.values()).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_regulariser_bad_inputs():
    with pytest.raises(ConfigError, match="at least 2"):
        nmtune_regularisers(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ConfigError, match="B x D"):
        nmtune_regularisers(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ConfigError, match="svd_topk"):
        nmtune_regularisers(torch.randn(4, 3), torch.randn(4, 3), svd_topk=0)


def test_presets_and_overrides():
    assert NMTUNE_PRESETS == {
        "paper": {"lam": 0.01, "w_mse": 1, "w_cov": 1, "w_svd": 1, "svd_topk": 1},
        "reference": {"lam": 1.0, "w_mse": 1.0, "w_cov": 0.04, "w_svd": 0.001, "svd_topk": 5},
    }
    ref = NMTunePreset.resolve("reference")
    assert (ref.lam, ref.w_mse, ref.w_cov, ref.w_svd, ref.svd_topk) == (1.0, 1.0, 0.04, 0.001, 5)
    p = NMTunePreset.resolve("paper", lam=0.5, w_cov=0.0)
    assert (p.lam, p.w_mse, p.w_cov, p.w_svd, p.svd_topk) == (0.5, 1.0, 0.0, 1.0, 1)
    with pytest.raises(UnknownNameError, match="paper, reference"):
        NMTunePreset.resolve("fancy")
    with pytest.raises(ConfigError, match="lam=-1.0"):
        NMTunePreset.resolve("paper", lam=-1)


def test_preset_loss_is_ce_plus_weighted_terms():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    z, f = torch.randn(8, 5), torch.randn(8, 5)
    p = NMTunePreset.resolve("reference", lam=0.7)
    total, parts = p.loss(logits, y, z, f)
    expected = torch.nn.functional.cross_entropy(logits, y) + 0.7 * (
        1.0 * parts["mse"] + 0.04 * parts["cov"] + 0.001 * parts["svd"]
    )
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"ce", "mse", "cov", "svd"}


def test_create_head():
    assert isinstance(create_head("lp", 4, 2), LinearHead)
    assert isinstance(create_head("lp", 4, 2, depth=None), LinearHead)
    mlp = create_head("nmtune", 4, 2, ratio=2, depth=2)
    assert isinstance(mlp, ResidualMLPHead) and mlp.mlp[0].out_features == 8
    assert isinstance(create_head("mlp", 4, 2), ResidualMLPHead)
    assert isinstance(create_head("lp_adamw", 4, 2), LinearHead)
    with pytest.raises(UnknownNameError, match="unknown head method 'svm'.*lp, lp_adamw, mlp, nmtune"):
        create_head("svm", 4, 2)
    with pytest.raises(ConfigError, match="'lp' does not take depth"):
        create_head("lp", 4, 2, depth=2)
    with pytest.raises(ConfigError, match="depth must be an int"):
        create_head("mlp", 4, 2, depth=0)


def test_every_registered_head_builds_resolves_and_fits():
    """Walk the registry: each head resolves its defaults, builds, trains briefly and scores."""
    from benchmark.heads import HEADS, head_names, resolve_hparams
    from benchmark.probe import fit_and_evaluate

    assert head_names() == ("lp", "lp_adamw", "mlp", "nmtune") and set(HEADS) == set(head_names())
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    short = {"lp": {"l2_steps": 2}}
    for name in head_names():
        head = HEADS[name]
        hp = resolve_hparams(name)
        assert hp.method == name and set(hp.as_dict()) <= set(head.defaults)
        module = create_head(name, 6, 2, **hp.arch())
        logits, z = module(x)
        assert logits.shape == (64, 2) and z.shape == (64, 6)
        quick = short.get(name, {"epochs": 1, "batch_size": 16})
        res = fit_and_evaluate(name, x, y, {"val": x, "test": x}, {"val": y, "test": y}, **quick)
        assert res["method"] == name and res["eval"]["test"]["n"] == 64
        assert head.label and head.description


def test_batch_key_groups_what_can_share_a_computation():
    from benchmark.heads import resolve_hparams

    mlp = resolve_hparams("mlp", lr=1e-3)
    # MLP and NMTune are one module with or without regularisers: lr, weight decay and the loss
    # weights may differ inside a batch, the architecture and schedule may not.
    assert mlp.batch_key() == resolve_hparams("nmtune", lr=3e-3, lam=0.1, weight_decay=0.0).batch_key()
    for other in ({"depth": 2}, {"epochs": 5}, {"batch_size": 32}, {"epoch_selection": "last"}, {"ratio": 2}):
        assert mlp.batch_key() != resolve_hparams("mlp", **other).batch_key(), other
    assert resolve_hparams("lp").batch_key() != resolve_hparams("lp_adamw").batch_key()
    assert resolve_hparams("lp").batch_key() != resolve_hparams("lp", l2_steps=3).batch_key()


def test_registry_rejects_unknown_names_and_duplicates():
    from benchmark.heads import HeadMethod, get_head, register_head

    with pytest.raises(UnknownNameError, match="unknown head method 'svm'; known head methods: lp, lp_adamw, mlp, nmtune"):
        get_head("svm")
    with pytest.raises(ConfigError, match="registered twice"):
        register_head(get_head("lp"))
    with pytest.raises(ConfigError, match="unknown hyper-parameter"):
        register_head(HeadMethod("x", "X", 9, "", {"momentum": 0.9}, "benchmark.heads.modules:LinearHead"))
