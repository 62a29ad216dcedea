"""Head fits on cached features: accuracy vs sklearn, NMTune's terms, determinism, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from benchmark.errors import ConfigError, TrainingDiverged, UnknownNameError
from benchmark.heads import get_head
from benchmark.probe import (
    FitRequest,
    evaluate_head,
    fit_and_evaluate,
    fit_many,
    macro_f1,
    prepare_data,
    resolve_hparams,
    train_head,
)
from benchmark.spectrum import lsvr, spectrum_summary

EVAL_KEYS = {"accuracy", "macro_f1", "sve", "lsvr", "sve_raw", "lsvr_raw", "n"}


@pytest.fixture(autouse=True)
def _one_thread():
    # Shared 2-core CI box; also makes timings comparable.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def blobs(n: int, k: int, d: int, spread: float, seed: int, centres_seed: int = 0):
    centres = np.random.default_rng(centres_seed).standard_normal((k, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = centres[y] + spread * rng.standard_normal((n, d))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def sklearn_accuracy(xtr, ytr, xte, yte) -> float:
    # One BLAS thread: beside torch's OpenMP pool, more threads oversubscribe 2 cores (7 s vs 0.1 s).
    with threadpool_limits(1):
        clf = LogisticRegression(max_iter=5000).fit(np.asarray(xtr), np.asarray(ytr))
    return float(clf.score(np.asarray(xte), np.asarray(yte)))


def test_lp_separable_blobs_high_accuracy_and_record_shape():
    x, y = blobs(1000, 6, 16, spread=0.3, seed=1)
    tx, ty = blobs(600, 6, 16, spread=0.3, seed=2)
    rec = fit_and_evaluate("lp", x, y, tx, ty, epochs=10)
    assert set(rec) == {"method", "hparams", "train_loss", "epochs_run", "train_rows", "eval"}
    assert rec["method"] == "lp" and rec["epochs_run"] == 10 and rec["train_rows"] == 1000
    assert rec["hparams"] == {"epochs": 10, "batch_size": 64, "lr": 0.1, "weight_decay": 0.0}
    ev = rec["eval"]["test"]
    assert set(ev) == EVAL_KEYS and ev["n"] == 600
    assert ev["accuracy"] >= 0.95
    # For LP z = f: head spectrum equals the raw one.
    assert (ev["sve"], ev["lsvr"]) == (ev["sve_raw"], ev["lsvr_raw"])
    assert {k: ev[k] for k in ("sve", "lsvr")} == pytest.approx(spectrum_summary(tx), rel=1e-9)  # of the test features


def test_lp_matches_sklearn_on_overlapping_blobs():
    x, y = blobs(2000, 5, 20, spread=1.7, seed=3)
    tx, ty = blobs(2000, 5, 20, spread=1.7, seed=4)
    sk = sklearn_accuracy(x, y, tx, ty)
    ours = fit_and_evaluate("lp", x, y, tx, ty, epochs=15)["eval"]["test"]["accuracy"]
    print(f"overlapping blobs: LP {ours:.4f} vs sklearn {sk:.4f}")
    assert 0.6 < sk < 0.9  # genuinely overlapping
    assert abs(ours - sk) <= 0.02


def test_lp_matches_sklearn_on_digits():
    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(
        (d.data / 16.0).astype(np.float32), d.target, test_size=0.4, random_state=0, stratify=d.target
    )
    sk = sklearn_accuracy(xtr, ytr, xte, yte)
    ours = fit_and_evaluate("lp", xtr, ytr, xte, yte)["eval"]["test"]["accuracy"]
    print(f"digits: LP {ours:.4f} vs sklearn {sk:.4f}")
    assert abs(ours - sk) <= 0.02


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
    trained = train_head(data, resolve_hparams("nmtune", epochs=10, batch_size=128, **hp), seed=0)
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
        # distance to f 0.65 -> 0.023.
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
    for method in ("lp", "nmtune"):
        a = fit_and_evaluate(method, x, y, tx, ty, seed=3, epochs=3)
        b = fit_and_evaluate(method, x, y, tx, ty, seed=3, epochs=3)
        c = fit_and_evaluate(method, x, y, tx, ty, seed=4, epochs=3)
        assert a == b  # every float bit-identical
        assert a["train_loss"] != c["train_loss"]


def test_global_rng_untouched():
    x, y = blobs(100, 3, 5, spread=1.0, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_and_evaluate("mlp", x, y, x, y, epochs=1, seed=9)
    torch.testing.assert_close(torch.rand(3), expected)


def test_single_sample_last_batch_is_dropped():
    # 129 = 2 x 64 + 1: a 1-sample BatchNorm batch would raise; it must be skipped.
    x, y = blobs(129, 3, 6, spread=1.0, seed=0)
    rec = fit_and_evaluate("nmtune", x, y, x, y, epochs=2)
    assert math.isfinite(rec["train_loss"])
    # 130 keeps its 2-sample tail batch.
    x2, y2 = blobs(130, 3, 6, spread=1.0, seed=0)
    assert math.isfinite(fit_and_evaluate("mlp", x2, y2, x2, y2, epochs=1)["train_loss"])


@pytest.mark.parametrize("method", ["lp", "mlp", "nmtune"])
def test_huge_lr_raises_training_diverged(method):
    # Adam's normalised steps keep an LP's loss finite (if absurd) at lr=1e30 without weight
    # decay; decoupled decay lr * wd = 1e26 overflows the weights within a few steps.
    x, y = blobs(300, 3, 8, spread=1.0, seed=0)
    with pytest.raises(TrainingDiverged, match=r"epoch \d+, step \d+ with hparams .*'lr': 1e\+30"):
        fit_and_evaluate(method, x, y, x, y, lr=1e30, weight_decay=1e-4, epochs=5)


@pytest.mark.parametrize("method", ["lp", "mlp", "nmtune"])
def test_inf_features_raise_training_diverged(method):
    x, y = blobs(200, 3, 8, spread=1.0, seed=0)
    x[17, 3] = float("inf")
    with pytest.raises(TrainingDiverged, match="epoch 0, step .*contains NaN or inf"):
        fit_and_evaluate(method, x, y, x, y, epochs=2)


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    for k in (2, 7, 30):
        yt = rng.integers(0, k, 500)
        yp = np.where(rng.random(500) < 0.6, yt, rng.integers(0, k + 3, 500))  # extra unseen preds
        ours = macro_f1(torch.tensor(yt), torch.tensor(yp))
        assert ours == pytest.approx(f1_score(yt, yp, average="macro"), abs=1e-12)
    # And the probe's reported macro-F1 equals sklearn's on the head's own predictions.
    x, y = blobs(300, 5, 6, spread=2.0, seed=1)
    data = prepare_data(x, y, x, y, device="cpu")
    trained = train_head(data, resolve_hparams("lp", epochs=2))
    with torch.no_grad():
        pred = trained.head(x)[0].argmax(1)
    reported = evaluate_head(trained, data)["test"]["macro_f1"]
    assert reported == pytest.approx(f1_score(y.numpy(), pred.numpy(), average="macro"), abs=1e-12)
    assert 0.3 < reported < 1


def test_several_sets_and_class_subsets():
    x, y = blobs(800, 6, 10, spread=1.2, seed=0)
    va, vy = blobs(300, 6, 10, spread=1.2, seed=1)
    # An "ImageNet-R" style set that only holds classes 1, 3, 4.
    ox, oy = blobs(600, 6, 10, spread=1.2, seed=2)
    keep = torch.isin(oy, torch.tensor([1, 3, 4]))
    ox, oy = ox[keep], oy[keep]
    sets_x, sets_y = {"val": va, "r": ox}, {"val": vy, "r": oy}
    full = fit_and_evaluate("lp", x, y, sets_x, sets_y, epochs=5)
    sub = fit_and_evaluate("lp", x, y, sets_x, sets_y, epochs=5, class_subsets={"r": [1, 3, 4]})
    assert set(full["eval"]) == {"val", "r"}
    assert full["eval"]["val"] == sub["eval"]["val"]
    assert sub["eval"]["r"]["n"] == int(keep.sum())
    # Restricting the competing logits can only fix mistakes, and here it does fix some.
    assert sub["eval"]["r"]["accuracy"] > full["eval"]["r"]["accuracy"]
    with pytest.raises(ConfigError, match="labels outside its class subset"):
        fit_and_evaluate("lp", x, y, sets_x, sets_y, epochs=1, class_subsets={"r": [1, 3]})
    with pytest.raises(ConfigError, match="class_subsets names set 'sketch'"):
        fit_and_evaluate("lp", x, y, sets_x, sets_y, epochs=1, class_subsets={"sketch": [1]})


def test_hparam_resolution_and_errors():
    assert dict(get_head("lp").defaults) == {"epochs": 30, "batch_size": 64, "lr": 0.1, "weight_decay": 0.0}
    assert resolve_hparams("mlp").lr == 1e-3 and resolve_hparams("mlp").weight_decay == 1e-4
    nm = resolve_hparams("nmtune", lam=0.3)
    assert (nm.preset, nm.lam, nm.w_cov, nm.svd_topk) == ("reference", 0.3, 0.04, 5)
    paper = resolve_hparams("nmtune", preset="paper", w_svd=0.0)
    assert (paper.lam, paper.w_mse, paper.w_svd, paper.svd_topk) == (0.01, 1.0, 0.0, 1)
    assert resolve_hparams("lp", lam=None, depth=None).lr == 0.1
    assert resolve_hparams("lp").as_dict() == {"epochs": 30, "batch_size": 64, "lr": 0.1, "weight_decay": 0.0}
    with pytest.raises(ConfigError, match="unknown hyper-parameter.*learning_rate.*allowed: epochs"):
        resolve_hparams("lp", learning_rate=0.1)
    with pytest.raises(ConfigError, match="lam do not apply to method 'lp'.*lam applies to nmtune"):
        resolve_hparams("lp", lam=0.5)
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        resolve_hparams("mlp", batch_size=1)
    with pytest.raises(ConfigError, match="lr must be a finite number > 0"):
        resolve_hparams("mlp", lr=0)
    with pytest.raises(UnknownNameError, match="unknown head method 'knn'"):
        fit_and_evaluate("knn", torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(UnknownNameError, match="NMTune preset 'big'"):
        resolve_hparams("nmtune", preset="big")


def test_bad_data_errors():
    x, y = blobs(50, 3, 4, spread=1.0, seed=0)
    with pytest.raises(ConfigError, match="3 feature dims but train_x has 4"):
        fit_and_evaluate("lp", x, y, x[:, :3], y, epochs=1)
    with pytest.raises(ConfigError, match="label 7 but the head has 3 classes.*num_classes=8"):
        fit_and_evaluate("lp", x, y, x, torch.full((50,), 7), epochs=1)
    assert fit_and_evaluate("lp", x, y, x, y, epochs=1, num_classes=8)["eval"]["test"]["n"] == 50
    with pytest.raises(ConfigError, match="length 50"):
        fit_and_evaluate("lp", x, y[:10], x, y, epochs=1)
    with pytest.raises(ConfigError, match="integer class indices"):
        fit_and_evaluate("lp", x, y.float(), x, y, epochs=1)
    with pytest.raises(ConfigError, match="both be tensors or both be dicts"):
        fit_and_evaluate("lp", x, y, {"a": x}, y, epochs=1)


def test_fit_many_matches_single_fits_and_isolates_errors():
    x, y = blobs(300, 4, 8, spread=1.0, seed=0)
    tx, ty = blobs(100, 4, 8, spread=1.0, seed=1)
    data = prepare_data(x, y, tx, ty, device="cpu")
    requests = [
        FitRequest(resolve_hparams("lp", epochs=3), seed=1),
        FitRequest(resolve_hparams("nmtune", lam=0.1, epochs=2)),
        FitRequest(resolve_hparams("lp", lr=1e30, weight_decay=1e-4, epochs=3)),
        FitRequest(resolve_hparams("lp", epochs=3), rows=np.arange(0, 300, 2)),
    ]
    recs = fit_many(data, requests)
    assert len(recs) == 4
    assert recs[0] == fit_and_evaluate("lp", x, y, tx, ty, seed=1, epochs=3)
    assert recs[1] == fit_and_evaluate("nmtune", x, y, tx, ty, lam=0.1, epochs=2)
    assert recs[2]["error"].startswith("TrainingDiverged") and "Traceback" in recs[2]["traceback"]
    assert recs[3] == fit_and_evaluate("lp", x[::2], y[::2], tx, ty, epochs=3)  # rows select the training set
    # the frozen features' spectra do not depend on the head: computed once for the whole batch
    assert set(data.raw_spectra) == {"test"}
    with pytest.raises(ConfigError, match="do not apply to method 'lp'"):
        resolve_hparams("lp", depth=3)
