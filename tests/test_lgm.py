"""Local Gradient Matching (benchmark/heads/lgm.py): the loss and its gradient against the formula
written out here, the reduction to cross-entropy at lambda 0, stacked == per member, both engines,
and a short fit through the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from benchmark.heads import LinearHead, ResidualMLPHead, default_heads, get_head, head_names, resolve_hparams
from benchmark.heads.lgm import LGMLoss, LGMStackedLoss, batch_noise
from benchmark.plan import fit_key
from benchmark.probe import FitRequest, fit_and_evaluate, fit_many, prepare_data, train_head
from benchmark.probe.batched import fit_gradient_heads
from benchmark.probe.stacked import StackedHeads

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: bit-identical asserts need one thread


def _example(seed: int = 0, b: int = 6, d: int = 4, k: int = 3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype), torch.randint(0, k, (b,), generator=g)


def _linear_reference(w, bias, f, y, e, lam, sigma):
    """The formula for a linear head, in closed form (no double backward): a row's input gradient
    of its cross-entropy is ``W^T (softmax(W f + b) - onehot(y))``."""
    onehot = F.one_hot(y, w.shape[0]).to(f.dtype)

    def grads(x):
        return (torch.softmax(x @ w.T + bias, dim=1) - onehot) @ w

    logits = f @ w.T + bias
    ce = (torch.logsumexp(logits, dim=1) - logits.gather(1, y[:, None])[:, 0]).mean()
    match = (grads(f) - grads(f + sigma * e)).pow(2).sum(1).mean()
    return ce + lam * match


@pytest.mark.parametrize(("lam", "sigma"), [(1.0, 0.1), (3.0, 0.5)])
def test_linear_head_loss_and_gradient_match_closed_form(lam, sigma):
    f, y = _example()
    torch.manual_seed(0)
    head = LinearHead(4, 3).double()
    logits, z = head(f)
    total, terms = LGMLoss(lam, sigma)(logits, y, z, f, forward=head)
    w = head.classifier.weight.detach().clone().requires_grad_()
    bias = head.classifier.bias.detach().clone().requires_grad_()
    ref = _linear_reference(w, bias, f, y, batch_noise(f), lam, sigma)
    assert float(total.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    assert float(terms["match"].detach()) > 0  # the term is not trivially zero on this example
    got = torch.autograd.grad(total, [head.classifier.weight, head.classifier.bias])
    want = torch.autograd.grad(ref, [w, bias])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_residual_mlp_loss_and_gradient_match_autograd_of_formula():
    """Training-mode residual MLP (BatchNorm couples the rows): the formula by plain autograd."""
    f, y = _example(1, b=8)
    torch.manual_seed(1)
    head = ResidualMLPHead(4, 3, width=2).double().train()
    lam, sigma = 0.7, 0.2
    logits, z = head(f)
    total, _ = LGMLoss(lam, sigma)(logits, y, z, f, forward=head)
    got = torch.autograd.grad(total, list(head.parameters()))

    e = batch_noise(f)
    clean, noisy = f.clone().requires_grad_(), (f + sigma * e).requires_grad_()
    row_grads = []
    for x in (clean, noisy):
        out = head(x)[0]
        summed = sum(torch.logsumexp(out[i], 0) - out[i, y[i]] for i in range(len(y)))
        row_grads.append(torch.autograd.grad(summed, x, create_graph=True)[0])
    again = head(f)[0]  # the loss's graph was freed by its gradient above
    ce = sum(torch.logsumexp(again[i], 0) - again[i, y[i]] for i in range(len(y))) / len(y)
    ref = ce + lam * sum(((row_grads[0][i] - row_grads[1][i]) ** 2).sum() for i in range(len(y))) / len(y)
    want = torch.autograd.grad(ref, list(head.parameters()))
    assert float(total.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        assert bool(torch.isfinite(a).all())


def test_lambda_zero_is_cross_entropy():
    f, y = _example(2)
    torch.manual_seed(2)
    head = ResidualMLPHead(4, 3).double().train()
    logits, z = head(f)
    total, _ = LGMLoss(0.0, 0.3)(logits, y, z, f, forward=head)
    ce = F.cross_entropy(logits, y)
    assert float(total.detach()) == pytest.approx(float(ce.detach()), rel=1e-15)
    for a, b in zip(
        torch.autograd.grad(total, list(head.parameters()), retain_graph=True),
        torch.autograd.grad(ce, list(head.parameters())),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_noise_depends_on_the_batch_rows_only():
    f, _ = _example(3, d=5)
    a, b = batch_noise(f), batch_noise(f.clone())
    assert torch.equal(a, b) and a.shape == f.shape
    assert not torch.equal(a, batch_noise(f.flip(0)))  # another row order is another batch
    stacked = batch_noise(torch.stack([f, f.flip(0)]))
    assert torch.equal(stacked[0], a) and torch.equal(stacked[1], batch_noise(f.flip(0)))
    big = batch_noise(torch.randn(4000, 8, generator=torch.Generator().manual_seed(0)))
    assert abs(float(big.mean())) < 0.02 and float(big.std()) == pytest.approx(1.0, abs=0.02)


def test_stacked_loss_equals_each_member_alone():
    f, y = _example(4, b=10, dtype=torch.float32)
    hps = [resolve_hparams("lgm", lgm_lambda=lam, lgm_sigma=s) for lam, s in ((0.0, 0.1), (1.0, 0.05), (2.5, 0.3))]
    mods = []
    for seed in range(3):
        torch.manual_seed(seed)
        mods.append(ResidualMLPHead(4, 3).train())
    heads = StackedHeads(mods)
    fs = torch.stack([f, f.flip(0), f * 2])
    ys = torch.stack([y, y.flip(0), y])
    logits, z = heads.forward(fs, training=True)
    ce = F.cross_entropy(logits.reshape(-1, 3), ys.reshape(-1), reduction="none").view(3, -1).mean(1)
    stacked = LGMStackedLoss(hps, "cpu")(logits, ys, z, fs, ce, forward=lambda x: heads.forward(x, training=True))
    for g, (hp, mod) in enumerate(zip(hps, mods, strict=True)):
        lg, zg = mod(fs[g])
        alone, _ = LGMLoss.from_hparams(hp)(lg, ys[g], zg, fs[g], forward=mod)
        assert float(stacked[g].detach()) == pytest.approx(float(alone.detach()), rel=1e-5), g


def _blobs(n: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = np.random.default_rng(0).standard_normal((k, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return torch.tensor(3 * centres[y] + rng.standard_normal((n, d)), dtype=torch.float32), torch.tensor(y)


@pytest.fixture(scope="module")
def data():
    x, y = _blobs(160, 4, 8, seed=1)
    vx, vy = _blobs(120, 4, 8, seed=2)
    return prepare_data(x, y, {"val": vx[:60], "test": vx[60:]}, {"val": vy[:60], "test": vy[60:]}, device="cpu")


def test_batched_engine_equals_lone_fits(data):
    """LGM members batched with an MLP member: each equals its lone fit (train_head)."""
    hps = [
        resolve_hparams("lgm", epochs=3, batch_size=32, lgm_lambda=1.0, lgm_sigma=0.1),
        resolve_hparams("lgm", epochs=3, batch_size=32, lgm_lambda=4.0, lgm_sigma=0.3, lr=3e-3),
        resolve_hparams("mlp", epochs=3, batch_size=32),
    ]
    assert len({hp.batch_key() for hp in hps}) == 1
    requests = [FitRequest(hp, seed=s) for hp, s in zip(hps, (0, 1, 2), strict=True)]
    batched = fit_gradient_heads(data, requests)
    for req, got in zip(requests, batched, strict=True):
        alone = train_head(data, req.hparams, seed=req.seed)
        assert not isinstance(got, Exception)
        np.testing.assert_allclose(got.curves["train_loss"], alone.curves["train_loss"], rtol=1e-4)
        assert got.curves["val_accuracy"] == alone.curves["val_accuracy"]
        assert got.summary == alone.summary
    assert batched[0].curves["train_loss"] != batched[2].curves["train_loss"]  # the matching term is on


def test_registry_lists_lgm_and_a_short_fit_beats_chance(data):
    assert "lgm" in head_names() and "lgm" not in default_heads()  # existing suites run what they ran
    head = get_head("lgm")
    assert {"lgm_lambda", "lgm_sigma"} <= set(head.grid_axes) and {"lgm_lambda", "lgm_sigma"} <= head.per_member
    assert head.label == "LGM" and head.builder_id == get_head("nmtune").builder_id
    from benchmark.heads import hparam_label

    assert hparam_label("lgm", resolve_hparams("lgm")) == "λ1 σ0.01 d1"
    # the fit key of the defaults is pinned: a changed key would re-run every stored LGM fit
    assert fit_key("pair", resolve_hparams("lgm"), 0, 1.0) == PINNED_LGM_KEY
    x, y = data.train_x, data.train_y
    res = fit_and_evaluate(
        "lgm",
        x,
        y,
        {"val": data.eval_sets["val"][0], "test": data.eval_sets["test"][0]},
        {"val": data.eval_sets["val"][1], "test": data.eval_sets["test"][1]},
        epochs=8,
        batch_size=32,
        lr=1e-2,
        lgm_sigma=0.1,
    )
    assert res["head"] == "lgm" and res["hparams"]["lgm_sigma"] == 0.1
    assert res["eval"]["test"]["accuracy"] > 0.6  # 4 classes: chance is 0.25
    results = fit_many(data, [FitRequest(resolve_hparams("lgm", epochs=2, batch_size=32), seed=0)])
    assert "error" not in results[0] and results[0]["head"] == "lgm"


PINNED_LGM_KEY = "de07ff99d824d215"
