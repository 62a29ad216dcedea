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


@pytest.mark.parametrize(("width", "depth", "n_bn"), [(4, 1, 1), (2, 3, 3), (0.5, 2, 2)])
def test_residual_mlp_structure(width, depth, n_bn):
    d, k = 6, 4
    head = ResidualMLPHead(d, k, width=width, depth=depth)
    hidden = int(round(width * d))
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(d, hidden)] + [(hidden, hidden)] * (depth - 1) + [
        (hidden, d)
    ]
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
    z = torch.randn(4, 16, 6, generator=g, dtype=torch.float64)
    f = torch.randn(4, 16, 6, generator=g, dtype=torch.float64)
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
    mlp = create_head("nmtune", 4, 2, width=2, depth=2)
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
    from benchmark.heads.registry import builtin_heads
    from benchmark.probe import fit_and_evaluate

    # an installed plugin head (tests/plugins) may follow the built-ins; it is not walked here
    assert builtin_heads() == ("lp", "lp_adamw", "mlp", "nmtune", "lgm", "finetune") and set(HEADS) == set(head_names())
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    short = {"lp": {"l2_steps": 2}}
    for name in builtin_heads():
        head = HEADS[name]
        if head.inputs == "images":  # trains the backbone on images: tests/test_finetune.py
            continue
        hp = resolve_hparams(name)
        assert hp.head == name and set(hp.as_dict()) <= set(head.defaults)
        module = create_head(name, 6, 2, **hp.arch())
        logits, z = module(x)
        assert logits.shape == (64, 2) and z.shape == (64, 6)
        quick = short.get(name, {"epochs": 1, "batch_size": 16})
        res = fit_and_evaluate(name, x, y, {"val": x, "test": x}, {"val": y, "test": y}, **quick)
        assert res["head"] == name and res["eval"]["test"]["n"] == 64
        assert head.label and head.description


def test_batch_key_groups_what_can_share_a_computation():
    from benchmark.heads import resolve_hparams

    mlp = resolve_hparams("mlp", lr=1e-3)
    # MLP and NMTune are one module with or without regularisers: lr, weight decay and the loss
    # weights may differ inside a batch, the architecture and schedule may not.
    assert mlp.batch_key() == resolve_hparams("nmtune", lr=3e-3, lam=0.1, weight_decay=0.0).batch_key()
    for other in ({"depth": 2}, {"epochs": 5}, {"batch_size": 32}, {"epoch_selection": "last"}, {"width": 2}):
        assert mlp.batch_key() != resolve_hparams("mlp", **other).batch_key(), other
    assert resolve_hparams("lp").batch_key() != resolve_hparams("lp_adamw").batch_key()
    assert resolve_hparams("lp").batch_key() != resolve_hparams("lp", l2_steps=3).batch_key()


def test_registry_rejects_unknown_names_and_duplicates():
    from benchmark.heads import HeadSpec, HParam, get_head, register_head

    known = "unknown head method 'svm'; known head methods: (cosine, )?finetune, lgm, lp, lp_adamw, mlp, nmtune"
    with pytest.raises(UnknownNameError, match=known):
        get_head("svm")
    with pytest.raises(ConfigError, match="registered twice"):
        register_head(get_head("lp"))
    # one hyper-parameter name means one thing: epochs is an int with tie-break rank 3 everywhere
    with pytest.raises(ConfigError, match="'epochs' as float.*'lp_adamw' declares it as int"):
        register_head(
            HeadSpec("x", "X", 9, "", (HParam("epochs", "float", 1.0),), "benchmark.heads.modules:LinearHead")
        )
    with pytest.raises(ConfigError, match="kind 'number' is not one of"):
        HParam("momentum", "number", 0.9)
    with pytest.raises(ConfigError, match="labels depth, which it does not take"):
        HeadSpec("x", "X", 9, "", (), "benchmark.heads.modules:LinearHead", labelled=("depth",))
    assert "x" not in head_names_now()


def head_names_now() -> tuple[str, ...]:
    from benchmark.heads import head_names

    return head_names()


#: Fit keys and resolved values computed on the tree before heads became one module each
#: (``plan.fit_key`` hashes ``hp.as_dict()``): a changed key re-runs every stored fit.
PINNED_FIT_KEYS = [
    ("lp", {}, "0eb7ca461473b591", "61bbe4064d0d8bfc"),
    ("lp", {"l2_steps": 5, "standardize": True, "tol": 1e-8}, "ae29bc9acd7d0610", "b0c5588fc14c8e9d"),
    ("lp_adamw", {}, "7a0016cc7b4df884", "b5e9c1421c9c6ddc"),
    ("lp_adamw", {"epochs": 10, "lr": 0.05}, "4e3aad77c64bcf19", "65b6856f34dd5f7c"),
    ("mlp", {}, "dbb84bf7ef87a6f0", "a57089781034722b"),
    ("mlp", {"depth": 2, "width": 2, "lr": 3e-3, "epoch_selection": "last"}, "e2c346671f64078a", "7425e5aea85055bf"),
    ("nmtune", {}, "aa0dee8cf8a1a2e5", "84ecc50056004308"),
    ("nmtune", {"lam": 0.01, "depth": 1}, "3ff0426db225d540", "701c8fc9e7a0b0a8"),
    (
        "nmtune",
        {"preset": "paper", "w_cov": 0.5, "svd_topk": 3, "batch_size": 32},
        "897412fa7f41a5a1",
        "93c1a36a65095b6e",
    ),
]


@pytest.mark.parametrize(("method", "given", "key", "other_key"), PINNED_FIT_KEYS)
def test_fit_keys_are_those_of_the_closed_hparams_union(method, given, key, other_key):
    from benchmark.heads import resolve_hparams
    from benchmark.plan import fit_key

    hp = resolve_hparams(method, **given)
    assert fit_key("a", hp, 0, 1.0) == key
    assert fit_key("pair-x", hp, 3, 0.1) == other_key


def test_renamed_hyper_parameters_keep_their_fit_keys_and_old_names_are_refused_by_name():
    """The MLP width multiplier was ``ratio`` (also the noise ratio's name): it is ``width`` now,
    but fit keys and batch keys hash it as ``ratio`` so every stored fit keeps its key."""
    from benchmark.hashing import config_hash
    from benchmark.heads import resolve_hparams
    from benchmark.heads.hparams import KEY_ALIASES, RENAMED
    from benchmark.plan import fit_key

    assert dict(KEY_ALIASES) == {"width": "ratio"} and dict(RENAMED) == {"ratio": "width"}
    hp = resolve_hparams("mlp", width=2, depth=2)
    assert hp.as_dict()["width"] == 2.0 and "ratio" not in hp.as_dict()
    assert list(hp.key_dict()) == [KEY_ALIASES.get(k, k) for k in hp.as_dict()]
    old = {k if k != "width" else "ratio": v for k, v in hp.as_dict().items()}
    spelled = {"kind": "fit", "pair": "a", "method": "mlp", "hparams": old, "head_seed": 0, "fraction": 1.0}
    assert fit_key("a", hp, 0, 1.0) == config_hash(spelled)
    with pytest.raises(ConfigError, match="ratio was renamed width"):
        resolve_hparams("mlp", ratio=2)


def test_as_dict_and_batch_key_keep_their_exact_values_and_order():
    from benchmark.heads import resolve_hparams

    nm = resolve_hparams("nmtune", preset="paper", w_cov=0.5, svd_topk=3, batch_size=32)
    assert repr(list(nm.as_dict().items())) == (
        "[('epochs', 30), ('batch_size', 32), ('lr', 0.001), ('weight_decay', 0.0001), "
        "('epoch_selection', 'best_val'), ('width', 4.0), ('depth', 1), ('preset', 'paper'), ('lam', 0.01), "
        "('w_mse', 1.0), ('w_cov', 0.5), ('w_svd', 1.0), ('svd_topk', 3)]"
    )
    assert repr(nm.batch_key()) == (
        "('', 'benchmark.heads.modules:ResidualMLPHead', (('epochs', 30), ('batch_size', 32), "
        "('epoch_selection', 'best_val'), ('ratio', 4.0), ('depth', 1)))"
    )
    lp = resolve_hparams("lp")
    assert repr(list(lp.as_dict().items())) == (
        "[('l2_min', 1e-06), ('l2_max', 10.0), ('l2_steps', 15), ('l2_refine', 4), ('standardize', False), "
        "('max_iter', 1000), ('tol', 1e-06)]"
    )
    assert lp.batch_key()[:2] == ("benchmark.probe.linear:fit_linear_probes", "benchmark.heads.modules:LinearHead")
    assert repr(list(resolve_hparams("lp_adamw").as_dict().items())) == (
        "[('epochs', 30), ('batch_size', 64), ('lr', 0.1), ('weight_decay', 0.0), ('epoch_selection', 'last')]"
    )


def test_hparams_read_like_the_old_union():
    """Attribute access for the head's values, None for another head's, an error for a typo."""
    import pickle

    from benchmark.heads import HParams, resolve_hparams

    mlp = resolve_hparams("mlp", depth=2)
    assert (mlp.head, mlp.depth, mlp.width, mlp.lam, mlp.l2_steps, mlp.preset) == ("mlp", 2, 4.0, None, None, None)
    assert mlp.arch() == {"width": 4.0, "depth": 2} and resolve_hparams("lp").arch() == {}
    with pytest.raises(AttributeError, match="'lamda'"):
        _ = mlp.lamda
    with pytest.raises(AttributeError, match="frozen"):
        mlp.lr = 1.0
    assert pickle.loads(pickle.dumps(mlp)) == mlp and hash(pickle.loads(pickle.dumps(mlp))) == hash(mlp)
    assert mlp != resolve_hparams("mlp") and mlp == resolve_hparams("mlp", depth=2.0)
    assert dict(mlp) == {**mlp.as_dict()} and mlp["depth"] == 2 and len(mlp) == 7
    assert HParams("mlp", mlp.as_dict()) == mlp


def test_reporting_lookups_reproduce_the_old_spellings():
    """What tracking, the report and the claims used to spell out by head name."""
    import math

    from benchmark.heads import contenders, head_label, head_order, hparam_label, plot_style, probe_head, tiebreak_axes
    from benchmark.heads.registry import PER_MEMBER, TIEBREAK_AXES

    assert TIEBREAK_AXES == ("lam", "depth", "width", "epochs", "lr", "weight_decay", "batch_size") == tiebreak_axes()
    assert tiebreak_axes(["mlp", "lp"]) == ("depth", "width", "epochs", "lr", "weight_decay", "batch_size")
    old = {"lr", "weight_decay", "preset", "lam", "w_mse", "w_cov", "w_svd", "svd_topk"}
    # LGM (heads/lgm.py) adds its two loss weights, heads/robust.py the task loss and its values
    assert PER_MEMBER == old | {"lgm_lambda", "lgm_sigma", "loss", "gce_q", "sce_alpha", "sce_beta"}
    # tracking/publish.py's `selected` labels and tracking/layout.py's fit names
    assert hparam_label("nmtune", {"lam": 0.01, "depth": 1}) == "λ0.01 d1"
    assert hparam_label("nmtune", {"lam": "0.1", "depth": "2"}) == "λ0.1 d2"  # MLflow params are text
    assert hparam_label("nmtune", {"lam": 0.0, "depth": 1.0}) == "λ0 d1"
    assert hparam_label("nmtune", {"lam": math.nan, "depth": 1}) == "d1"
    assert hparam_label("mlp", {"lam": 0.01, "depth": 3.0}) == "d3"
    assert hparam_label("mlp", {"depth": math.nan}, empty="no grid") == "no grid"
    assert hparam_label("lp", {"lam": 1, "depth": 1}, empty="no grid") == "no grid"
    assert hparam_label("lp_adamw", {}) == "" and hparam_label("svm", {"depth": 1}) == ""
    # report.py's METHOD_STYLE, with its default for everything else
    assert [plot_style(m) for m in ("lp", "mlp", "nmtune", "lp_adamw", "svm")] == [
        ("tab:blue", "o"),
        ("tab:orange", "s"),
        ("tab:green", "^"),
        ("tab:gray", "x"),
        ("tab:gray", "x"),
    ]
    # claims.py: LP is the probe of claims 1-3; claim 4 compares NMTune with the MLP, then the LP
    assert probe_head() == "lp" and contenders() == (("nmtune", "mlp"), ("nmtune", "lp"))
    # leaderboard.py's label and order lookups
    assert [head_label(m) for m in ("lp", "nmtune", "svm")] == ["LP", "NMTune", "svm"]
    assert [head_order(m) for m in ("lp", "lp_adamw", "mlp", "nmtune", "svm")] == [0, 1, 2, 3, 99]


def test_declarations_say_what_a_suite_may_sweep_and_what_a_batch_may_mix():
    from benchmark.heads import get_head

    nm = get_head("nmtune")
    assert nm.grid_axes == tuple(nm.defaults) and nm.sweepable("lam") and not nm.sweepable("l2_min")
    task_loss = {"loss", "gce_q", "sce_alpha", "sce_beta"}  # heads/robust.py: any member its own task loss
    assert nm.per_member == {"lr", "weight_decay", "preset", "lam", "w_mse", "w_cov", "w_svd", "svd_topk"} | task_loss
    assert get_head("mlp").per_member == {"lr", "weight_decay"} | task_loss and get_head("lp").per_member == frozenset()
    assert [p.name for p in nm.hparams if p.arch] == ["width", "depth"]
    assert nm.stacked_loss and nm.loss and not get_head("mlp").loss and get_head("lp").fitter
