"""Head fits on cached features: accuracy vs sklearn, NMTune's terms, determinism, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits

from benchmark.errors import ConfigError, TrainingDiverged, UnknownNameError
from benchmark.heads import get_head
from benchmark.probe import (
    FitRequest,
    batch_groups,
    evaluate_head,
    fit_and_evaluate,
    fit_many,
    macro_f1,
    prepare_data,
    resolve_hparams,
    train_head,
)
from benchmark.spectrum import lsvr

EVAL_KEYS = {"accuracy", "macro_f1", "sve", "lsvr", "sve_raw", "lsvr_raw", "n"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: bit-identical asserts need one thread


def blobs(n: int, k: int, d: int, spread: float, seed: int, centres_seed: int = 0):
    centres = np.random.default_rng(centres_seed).standard_normal((k, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = centres[y] + spread * rng.standard_normal((n, d))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def split3(x, y):
    """Train / val / test thirds (val: the set fits select on)."""
    n = len(y)
    a, b = n // 2, (3 * n) // 4
    return x[:a], y[:a], {"val": x[a:b], "test": x[b:]}, {"val": y[a:b], "test": y[b:]}


def test_lp_record_shape_curves_and_selection():
    x, y = blobs(1600, 6, 16, spread=1.5, seed=1)
    tx, ty, sx, sy = split3(x, y)
    rec = fit_and_evaluate("lp", tx, ty, sx, sy)
    assert set(rec) == {"head", "hparams", "train_loss", "epochs_run", "train_rows", "eval", "curves", "summary"}
    assert rec["head"] == "lp" and rec["train_rows"] == len(ty)
    assert rec["hparams"] == {
        "l2_min": 1e-6,
        "l2_max": 10.0,
        "l2_steps": 15,
        "l2_refine": 4,
        "standardize": False,
        "max_iter": 1000,
        "tol": 1e-6,
    }
    ev = rec["eval"]["test"]
    # 0.83 measured; the L2 values within 2 validation rows of the best (what round-off could make
    # selection pick instead) score 0.8125-0.8325 on test. 0.75 is 3 binomial std of 400 rows below those.
    assert set(ev) == EVAL_KEYS and ev["n"] == 400 and ev["accuracy"] >= 0.75
    # For LP z = f: head spectrum equals the raw one.
    assert (ev["sve"], ev["lsvr"]) == (ev["sve_raw"], ev["lsvr_raw"])
    c, summ = rec["curves"], rec["summary"]
    # 15 coarse values, at most 2 x 2 past an edge the winner sits on, at most 4 between the
    # winner's neighbours; sorted, every one solved.
    assert 15 < len(c["l2"]) <= 23 and c["l2"] == sorted(c["l2"])
    assert summ["chosen_l2_at_edge"] == 0.0
    assert {len(v) for k, v in c.items() if k != "train_loss"} == {len(c["l2"])}
    assert set(np.round(np.log10(c["l2"][::1]), 6)) >= set(np.round(np.linspace(-6, 1, 15), 6))
    # the chosen value has the best validation accuracy of the whole curve, and is what the eval saw
    best = max(c["val_accuracy_by_l2"])
    assert summ["val_accuracy_selected"] == best == rec["eval"]["val"]["accuracy"]
    assert c["val_accuracy_by_l2"][c["l2"].index(summ["chosen_l2"])] == best
    assert summ["converged"] == 1.0 and summ["lbfgs_iterations"] == len(c["train_loss"]) - 1 == rec["epochs_run"]
    # Monotone descent: Armijo backtracking never accepts a step that raises the float64 loss; 1e-12
    # absorbs evaluating the same loss in another summation order (~1e-16 relative).
    assert all(b <= a + 1e-12 for a, b in zip(c["train_loss"], c["train_loss"][1:]))
    assert rec["train_loss"] == pytest.approx(c["train_loss"][-1])  # the same number, passed on


@pytest.mark.parametrize("standardize", [False, True])
def test_lp_reaches_the_same_optimum_as_sklearn(standardize):
    """At one fixed L2 the probe is scikit-learn's LogisticRegression at C = 1 / (l2 n s^2)."""
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)  # like the suites' features
    y = d.target
    l2 = 1e-3
    rec_data = prepare_data(x, y, x, y, device="cpu")
    hp = resolve_hparams(
        "lp", l2_min=l2, l2_max=l2, l2_steps=1, l2_refine=0, standardize=standardize, tol=1e-9, max_iter=5000
    )
    [res] = fit_many(rec_data, [FitRequest(hp)])
    assert res["summary"]["converged"] == 1.0 and res["curves"]["l2"] == [l2]
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(0)
    std = x64.std(0)
    scaled = centred / np.where(std > 0, std, 1.0) if standardize else centred / np.sqrt((std**2).mean())
    with threadpool_limits(1):
        clf = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-9, max_iter=10_000).fit(scaled, y)
    from benchmark.probe.linear import fit_linear_probes

    data = prepare_data(x, y, x, y, device="cpu")
    [trained] = fit_linear_probes(data, [FitRequest(hp)])
    with torch.no_grad():
        logits = trained.head(torch.tensor(x))[0].numpy()
    ours = np.exp(logits - logits.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    # Two solvers stopped at tolerance 1e-9 agree to 1.4e-6 here (8e-5 at the default tol 1e-6): the
    # gap follows the stopping tolerance, not the machine, and 1e-5 leaves 7x.
    theirs = clf.predict_proba(scaled)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # Accuracies equal exactly: no row's two most likely classes are within 2e-5 (the smallest gap
    # is 0.04), so no prediction can differ between probabilities that agree to 1e-5.
    assert np.diff(np.sort(theirs, axis=1)[:, -2:], axis=1).min() > 2e-5
    assert res["eval"]["test"]["accuracy"] == pytest.approx(clf.score(scaled, y), abs=1e-12)


def test_lp_grid_solved_one_value_at_a_time_is_the_same_probe():
    """Batching the L2 grid changes its cost, not its answer: each value keeps its own L-BFGS
    state, so solving the values one by one (the batching benchmark's baseline) lands on the same
    optima, the same validation curve and the same chosen probe."""
    from benchmark.probe.linear import fit_linear_probes

    x, y = blobs(1200, 5, 12, spread=1.7, seed=4)
    data = prepare_data(*split3(x, y), device="cpu")
    hp = resolve_hparams("lp")
    [batched] = fit_linear_probes(data, [FitRequest(hp)])
    [alone] = fit_linear_probes(data, [FitRequest(hp)], batch_grid=False)
    assert alone.curves["l2"] == batched.curves["l2"] and len(batched.curves["l2"]) > 15
    assert alone.summary["chosen_l2"] == batched.summary["chosen_l2"]
    assert alone.curves["val_accuracy_by_l2"] == batched.curves["val_accuracy_by_l2"]
    # Each member runs the same float64 L-BFGS either way; batching only reshapes the matrix products,
    # which may sum in another order: ulps (measured 4e-16 on the losses, 9e-16 on the logits). The
    # runs branch apart only if a line-search or stopping test lands within ~1e-15 of its threshold.
    np.testing.assert_allclose(alone.curves["train_loss_by_l2"], batched.curves["train_loss_by_l2"], rtol=1e-9)
    with torch.no_grad():
        np.testing.assert_allclose(alone.head(x)[0].numpy(), batched.head(x)[0].numpy(), atol=1e-4)


def test_lp_grid_extends_past_an_edge_that_validation_picks():
    # Well separated classes: the weakest regularisation fits validation best (lower val loss),
    # so a grid that stops at 0.1 is extended downwards, two values at a time, at most twice.
    x, y = blobs(900, 4, 8, spread=0.25, seed=2)
    tx, ty, sx, sy = split3(x, y)
    rec = fit_and_evaluate("lp", tx, ty, sx, sy, l2_min=0.1, l2_max=10.0, l2_steps=5, l2_refine=0)
    l2 = rec["curves"]["l2"]
    # 5 grid values + 2 x 2 past the lower edge; the same np.logspace arithmetic up to ulps (rtol 1e-7).
    np.testing.assert_allclose(l2, np.logspace(-3, 1, 9))
    assert rec["summary"]["chosen_l2"] == pytest.approx(1e-3) and rec["summary"]["chosen_l2_at_edge"] == 1.0
    ox, oy = blobs(900, 4, 8, spread=2.0, seed=2)  # overlapping classes: the winner is inside the grid
    inner = fit_and_evaluate("lp", *split3(ox, oy), l2_min=1e-6, l2_max=10.0, l2_steps=8, l2_refine=0)
    assert len(inner["curves"]["l2"]) == 8 and inner["summary"]["chosen_l2_at_edge"] == 0.0  # nothing extended


def test_lp_without_validation_set_selects_on_a_holdout_and_refits():
    x, y = blobs(900, 5, 12, spread=1.7, seed=3)
    tx, ty = blobs(600, 5, 12, spread=1.7, seed=4)
    rec = fit_and_evaluate("lp", x, y, tx, ty, l2_steps=6, l2_refine=0)
    assert len(rec["curves"]["l2"]) == 6 and rec["summary"]["converged"] == 1.0
    assert rec["summary"]["chosen_l2"] in rec["curves"]["l2"]
    # the seed plays no part in a convex problem
    assert rec == fit_and_evaluate("lp", x, y, tx, ty, l2_steps=6, l2_refine=0, seed=5)
    with threadpool_limits(1):
        sk = LogisticRegression(max_iter=5000).fit(x.numpy(), y.numpy()).score(tx.numpy(), ty.numpy())
    assert rec["eval"]["test"]["accuracy"] >= sk - 0.02


@pytest.fixture(scope="module")
def correlated():
    """Correlated, anisotropic class blobs: room for the regularisers to change z."""
    rng = np.random.default_rng(0)
    k, d = 8, 32
    centres = rng.standard_normal((k, d))
    mix = rng.standard_normal((d, d)) / np.sqrt(d)

    def draw(n):
        y = rng.integers(0, k, n)
        return ((centres[y] + rng.standard_normal((n, d))) @ mix).astype(np.float32), y

    (a, b), (c, e) = draw(1500), draw(1000)
    return prepare_data(a, b, c, e, device="cpu")


def _z_stats(data, **hp) -> dict[str, float]:
    trained = train_head(
        data, resolve_hparams("nmtune", epochs=10, batch_size=128, epoch_selection="last", **hp), seed=0
    )
    f = data.eval_sets["test"][0]
    with torch.no_grad():
        _, z = trained.head(f)
    zc = z - z.mean(0)
    cov = zc.T @ zc / (len(z) - 1)
    d = z.shape[1]
    off = (cov - torch.diag(torch.diagonal(cov))).pow(2).sum() / (d * (d - 1))
    n = torch.nn.functional.normalize
    return {
        "cov": float(off),
        "lsvr": lsvr(z.numpy()),
        "mse": float((n(z, dim=1) - n(f, dim=1)).pow(2).sum(1).mean()),
    }


REFERENCE_WEIGHTS = {"w_mse": 1.0, "w_cov": 0.04, "w_svd": 0.001}


@pytest.mark.parametrize(
    ("term", "weight", "extra", "metric", "factor"),
    [
        # Measured (1 thread): off-diagonal cov 0.93 -> 0.013; LSVR 0.079 -> 0.16 (k=1) / 0.14 (k=5);
        # distance to f 0.65 -> 0.023. Each bound asks for well under the measured effect (7x, 1.3x,
        # 1.4x, 6x of margin), while round-off on another CPU moves a seeded fit's statistics by ~1e-6.
        ("w_cov", 1.0, {}, "cov", 1 / 10),
        ("w_svd", 100.0, {"svd_topk": 1}, "lsvr", 1.5),
        ("w_svd", 100.0, {"svd_topk": 5}, "lsvr", 1.3),
        ("w_mse", 10.0, {}, "mse", 1 / 5),
    ],
)
def test_each_nmtune_term_moves_its_target(correlated, term, weight, extra, metric, factor):
    off = _z_stats(correlated, **{**REFERENCE_WEIGHTS, term: 0.0}, **extra)
    on = _z_stats(correlated, **{**REFERENCE_WEIGHTS, term: weight}, **extra)
    print(f"{term}={weight} {extra}: {metric} {off[metric]:.4f} -> {on[metric]:.4f}")
    if factor > 1:
        assert on[metric] > factor * off[metric]
    else:
        assert on[metric] < factor * off[metric]


def test_same_seed_bit_identical_other_seed_differs():
    x, y = blobs(400, 4, 12, spread=1.0, seed=5)
    tx, ty = blobs(200, 4, 12, spread=1.0, seed=6)
    sets = ({"val": tx[:100], "test": tx[100:]}, {"val": ty[:100], "test": ty[100:]})
    for method in ("lp_adamw", "mlp", "nmtune"):
        a = fit_and_evaluate(method, x, y, *sets, seed=3, epochs=3)
        b = fit_and_evaluate(method, x, y, *sets, seed=3, epochs=3)
        c = fit_and_evaluate(method, x, y, *sets, seed=4, epochs=3)
        assert a == b  # every float bit-identical
        assert a["train_loss"] != c["train_loss"]


def test_global_rng_untouched():
    x, y = blobs(100, 3, 5, spread=1.0, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_and_evaluate("mlp", x, y, {"val": x}, {"val": y}, epochs=1, seed=9)
    fit_and_evaluate("lp", x, y, {"val": x}, {"val": y}, l2_steps=2)
    torch.testing.assert_close(torch.rand(3), expected)


def test_single_sample_last_batch_is_dropped():
    # 129 = 2 x 64 + 1: a 1-sample BatchNorm batch would raise; it must be skipped.
    x, y = blobs(129, 3, 6, spread=1.0, seed=0)
    rec = fit_and_evaluate("nmtune", x, y, x, y, epochs=2, epoch_selection="last")
    assert math.isfinite(rec["train_loss"])
    # 130 keeps its 2-sample tail batch.
    x2, y2 = blobs(130, 3, 6, spread=1.0, seed=0)
    assert math.isfinite(fit_and_evaluate("mlp", x2, y2, x2, y2, epochs=1, epoch_selection="last")["train_loss"])


@pytest.mark.parametrize("method", ["lp_adamw", "mlp", "nmtune"])
def test_huge_lr_raises_training_diverged(method):
    # Adam's normalised steps keep an LP's loss finite (if absurd) at lr=1e30 without weight
    # decay; decoupled decay lr * wd = 1e26 overflows the weights within a few steps.
    x, y = blobs(300, 3, 8, spread=1.0, seed=0)
    with pytest.raises(TrainingDiverged, match=r"epoch \d+, step \d+ with hparams .*'lr': 1e\+30"):
        fit_and_evaluate(method, x, y, x, y, lr=1e30, weight_decay=1e-4, epochs=5, epoch_selection="last")


@pytest.mark.parametrize("method", ["lp_adamw", "mlp", "nmtune"])
def test_inf_features_raise_training_diverged(method):
    x, y = blobs(200, 3, 8, spread=1.0, seed=0)
    x[17, 3] = float("inf")
    with pytest.raises(TrainingDiverged, match="epoch 0, step .*contains NaN or inf"):
        fit_and_evaluate(method, x, y, x, y, epochs=2, epoch_selection="last")
    with pytest.raises(TrainingDiverged, match="lp probe cannot be solved .*contains NaN or inf"):
        fit_and_evaluate("lp", x, y, x, y)


def test_best_val_needs_a_validation_set():
    x, y = blobs(100, 3, 5, spread=1.0, seed=0)
    with pytest.raises(ConfigError, match="epoch_selection 'best_val' .* includes 'val'.*epoch_selection='last'"):
        fit_and_evaluate("mlp", x, y, x, y, epochs=1)


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    for k in (2, 7, 30):
        yt = rng.integers(0, k, 500)
        yp = np.where(rng.random(500) < 0.6, yt, rng.integers(0, k + 3, 500))  # extra unseen preds
        ours = macro_f1(torch.tensor(yt), torch.tensor(yp))
        assert ours == pytest.approx(f1_score(yt, yp, average="macro"), abs=1e-12)  # the same counts, float64
    # And the probe's reported macro-F1 equals sklearn's on the head's own predictions.
    x, y = blobs(300, 5, 6, spread=2.0, seed=1)
    data = prepare_data(x, y, x, y, device="cpu")
    trained = train_head(data, resolve_hparams("lp_adamw", epochs=2))
    with torch.no_grad():
        pred = trained.head(x)[0].argmax(1)
    reported = evaluate_head(trained, data)["test"]["macro_f1"]
    assert reported == pytest.approx(f1_score(y.numpy(), pred.numpy(), average="macro"), abs=1e-12)  # same counts
    assert 0.3 < reported < 1  # 0.42 measured: not a degenerate score, on 300 rows and 5 classes (chance 0.2)


def test_several_sets_and_class_subsets():
    x, y = blobs(800, 6, 10, spread=1.2, seed=0)
    va, vy = blobs(300, 6, 10, spread=1.2, seed=1)
    # An "ImageNet-R" style set that only holds classes 1, 3, 4.
    ox, oy = blobs(600, 6, 10, spread=1.2, seed=2)
    keep = torch.isin(oy, torch.tensor([1, 3, 4]))
    ox, oy = ox[keep], oy[keep]
    sets_x, sets_y = {"val": va, "r": ox}, {"val": vy, "r": oy}
    full = fit_and_evaluate("lp_adamw", x, y, sets_x, sets_y, epochs=5)
    sub = fit_and_evaluate("lp_adamw", x, y, sets_x, sets_y, epochs=5, class_subsets={"r": [1, 3, 4]})
    assert set(full["eval"]) == {"val", "r"}
    assert full["eval"]["val"] == sub["eval"]["val"]
    assert sub["eval"]["r"]["n"] == int(keep.sum())
    # Restricting the competing logits can only fix mistakes, and here it does fix some (9 of 303 rows).
    assert sub["eval"]["r"]["accuracy"] > full["eval"]["r"]["accuracy"]
    with pytest.raises(ConfigError, match="labels outside its class subset"):
        fit_and_evaluate("lp_adamw", x, y, sets_x, sets_y, epochs=1, class_subsets={"r": [1, 3]})
    with pytest.raises(ConfigError, match="class_subsets names set 'sketch'"):
        fit_and_evaluate("lp", x, y, sets_x, sets_y, class_subsets={"sketch": [1]})
    # the converged probe reads the same subsets
    lp_full = fit_and_evaluate("lp", x, y, sets_x, sets_y, l2_steps=4)
    lp_sub = fit_and_evaluate("lp", x, y, sets_x, sets_y, l2_steps=4, class_subsets={"r": [1, 3, 4]})
    assert lp_sub["eval"]["r"]["accuracy"] > lp_full["eval"]["r"]["accuracy"]  # 16 rows fixed


def test_hparam_resolution_and_errors():
    assert dict(get_head("lp_adamw").defaults) == {
        "epochs": 30,
        "batch_size": 64,
        "lr": 0.1,
        "weight_decay": 0.0,
        "epoch_selection": "last",
        # the task loss (heads/robust.py): unset is cross-entropy, so none of these enters a fit key
        "loss": None,
        "gce_q": None,
        "sce_alpha": None,
        "sce_beta": None,
    }
    mlp = resolve_hparams("mlp")
    assert (mlp.lr, mlp.weight_decay, mlp.epochs, mlp.batch_size, mlp.epoch_selection) == (
        1e-3,
        1e-4,
        30,
        64,
        "best_val",
    )
    nm = resolve_hparams("nmtune", lam=0.3)
    assert (nm.preset, nm.lam, nm.w_cov, nm.svd_topk) == ("reference", 0.3, 0.04, 5)
    paper = resolve_hparams("nmtune", preset="paper", w_svd=0.0)
    assert (paper.lam, paper.w_mse, paper.w_svd, paper.svd_topk) == (0.01, 1.0, 0.0, 1)
    lp = resolve_hparams("lp", lam=None, depth=None)
    assert (lp.epochs, lp.lr, lp.l2_steps, lp.standardize) == (None, None, 15, False)
    with pytest.raises(ConfigError, match="unknown hyper-parameter.*learning_rate.*allowed: epochs"):
        resolve_hparams("lp_adamw", learning_rate=0.1)
    with pytest.raises(ConfigError, match="lam do not apply to method 'lp'.*lam applies to nmtune"):
        resolve_hparams("lp", lam=0.5)
    with pytest.raises(ConfigError, match="lr do not apply to method 'lp'.*lr applies to lp_adamw, mlp, nmtune"):
        resolve_hparams("lp", lr=0.5)
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        resolve_hparams("mlp", batch_size=1)
    with pytest.raises(ConfigError, match="lr must be a finite number > 0"):
        resolve_hparams("mlp", lr=0)
    with pytest.raises(ConfigError, match="epoch_selection must be one of best_val, last"):
        resolve_hparams("mlp", epoch_selection="early")
    with pytest.raises(ConfigError, match="l2_min=1 is above l2_max=0.1"):
        resolve_hparams("lp", l2_min=1, l2_max=0.1)
    with pytest.raises(ConfigError, match="standardize must be true or false"):
        resolve_hparams("lp", standardize="yes")
    with pytest.raises(UnknownNameError, match="unknown head method 'knn'"):
        fit_and_evaluate("knn", torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(UnknownNameError, match="NMTune preset 'big'"):
        resolve_hparams("nmtune", preset="big")


def test_bad_data_errors():
    x, y = blobs(50, 3, 4, spread=1.0, seed=0)
    with pytest.raises(ConfigError, match="3 feature dims but train_x has 4"):
        fit_and_evaluate("lp", x, y, x[:, :3], y)
    with pytest.raises(ConfigError, match="label 7 but the head has 3 classes.*num_classes=8"):
        fit_and_evaluate("lp", x, y, x, torch.full((50,), 7))
    assert fit_and_evaluate("lp", x, y, x, y, l2_steps=2, num_classes=8)["eval"]["test"]["n"] == 50
    assert fit_and_evaluate("lp_adamw", x, y, x, y, epochs=1, num_classes=8)["eval"]["test"]["n"] == 50
    with pytest.raises(ConfigError, match="length 50"):
        fit_and_evaluate("lp", x, y[:10], x, y)
    with pytest.raises(ConfigError, match="integer class indices"):
        fit_and_evaluate("lp", x, y.float(), x, y)
    with pytest.raises(ConfigError, match="both be tensors or both be dicts"):
        fit_and_evaluate("lp", x, y, {"a": x}, y)


def _without_timing(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("seconds", "batch_members")}


def test_fit_many_groups_batches_and_isolates_errors():
    x, y = blobs(300, 4, 8, spread=1.0, seed=0)
    tx, ty = blobs(200, 4, 8, spread=1.0, seed=1)
    sets = ({"val": tx[:100], "test": tx[100:]}, {"val": ty[:100], "test": ty[100:]})
    data = prepare_data(x, y, *sets, device="cpu")
    requests = [
        FitRequest(resolve_hparams("lp_adamw", epochs=3), seed=1),
        FitRequest(resolve_hparams("nmtune", lam=0.1, epochs=2)),
        FitRequest(resolve_hparams("mlp", lr=1e30, weight_decay=1e-4, epochs=2)),  # diverges
        FitRequest(resolve_hparams("mlp", epochs=2), seed=2),
        FitRequest(resolve_hparams("lp_adamw", epochs=3), rows=np.arange(0, 300, 2)),
        FitRequest(resolve_hparams("lp", l2_steps=3)),
        FitRequest(resolve_hparams("lp", l2_steps=3), seed=4),
    ]
    assert batch_groups(requests) == [[0], [1, 2, 3], [4], [5, 6]]  # MLP and NMTune share one batch
    recs = fit_many(data, requests)
    assert [r.get("batch_members") for r in recs] == [1, 3, 3, 3, 1, 2, 2]
    assert recs[2]["error"].startswith("TrainingDiverged") and "Traceback" in recs[2]["traceback"]
    assert _without_timing(recs[0]) == fit_and_evaluate("lp_adamw", x, y, *sets, seed=1, epochs=3)
    # rows select the training set
    assert _without_timing(recs[4]) == fit_and_evaluate("lp_adamw", x[::2], y[::2], *sets, epochs=3)
    assert _without_timing(recs[5]) == _without_timing(recs[6])  # one convex problem, solved once
    # the batch members that did not diverge equal their lone fits (the reference trainer)
    for i in (1, 3):
        alone = train_head(data, requests[i].hparams, seed=requests[i].seed)
        # float32: batching changes the products' shapes, so sums may round differently (measured 3e-8
        # relative on the losses); 1e-5 is ~80 eps32. Accuracies are compared exactly: the smallest
        # top-two logit gap on these rows is 3e-3 of logits ~2, 1e4 x that round-off.
        assert recs[i]["curves"]["val_accuracy"] == alone.curves["val_accuracy"]
        np.testing.assert_allclose(recs[i]["curves"]["train_loss"], alone.curves["train_loss"], rtol=1e-5)
        assert recs[i]["eval"]["test"]["accuracy"] == evaluate_head(alone, data)["test"]["accuracy"]
    # the frozen features' spectra do not depend on the head: computed once for the whole batch
    assert set(data.raw_spectra) == {"val", "test"}
    with pytest.raises(ConfigError, match="do not apply to method 'lp'"):
        resolve_hparams("lp", depth=3)


def test_curves_and_best_epoch_selection():
    x, y = blobs(600, 5, 10, spread=2.5, seed=2)
    vx, vy = blobs(300, 5, 10, spread=2.5, seed=3)
    sets = ({"val": vx, "test": vx}, {"val": vy, "test": vy})
    for method in ("mlp", "nmtune"):
        best = fit_and_evaluate(method, x, y, *sets, epochs=8, lr=3e-2, seed=1)
        last = fit_and_evaluate(method, x, y, *sets, epochs=8, lr=3e-2, seed=1, epoch_selection="last")
        c = best["curves"]
        assert len(c["train_loss"]) == len(c["val_accuracy"]) == 8
        assert c == last["curves"]  # one run: the curves do not depend on which epoch is kept
        e = int(best["summary"]["best_epoch"])
        assert c["val_accuracy"][e - 1] == max(c["val_accuracy"])
        assert all(v < max(c["val_accuracy"]) for v in c["val_accuracy"][e:])  # ties go to the later epoch
        assert best["eval"]["val"]["accuracy"] == c["val_accuracy"][e - 1]
        assert best["train_loss"] == c["train_loss"][e - 1]
        assert last["summary"]["best_epoch"] == 8 and last["eval"]["val"]["accuracy"] == c["val_accuracy"][-1]
        print(method, "best epoch", e, c["val_accuracy"])
