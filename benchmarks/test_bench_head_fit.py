"""Measurement 1: head fits on cached features vs re-encoding every image every epoch.

Same backbone (timm ``test_resnet``, random init seed 0, 32 px), data (2,000 stratified
MNIST-5k training images, the 1,000-image test split), head, hyper-parameters (paper defaults,
10 epochs) and seed on both sides; one thread each. Rounds interleave: baseline, one-time
extraction into a fresh cache, then our fit on the cached features (the timed target).
"""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch

from benchmark.backbones import create_backbone
from benchmark.data import get_dataset
from benchmark.plan import training_rows
from benchmark.features import FeatureCache
from benchmark.probe import fit_and_evaluate
import benchutil
import reencode

EPOCHS = 10
N_TRAIN = 2000
ROUNDS = 3
TARGET = 20.0
#: Head fits per (backbone, task) pair in the quick suite (LP, MLP x 2 depths, NMTune x 2 x 2).
FITS_PER_PAIR_QUICK = 7


@pytest.fixture(scope="module")
def setup_data():
    src = get_dataset("mnist-5k")
    train = src.split("train")
    idx = training_rows(train.labels, N_TRAIN)  # the stratified cap the suites use (max_train)
    return train.subset(np.asarray(idx)), src.split("test"), src.info.num_classes


@pytest.mark.parametrize("method", ["lp", "nmtune"])
def test_head_fit_vs_reencode(benchmark, one_thread, setup_data, method):
    train, test, k = setup_data
    backbone = create_backbone({"family": "timm", "arch": "test_resnet", "seed": 0, "image_size": 32})
    sw = benchutil.Stopwatch()
    state: dict = {}
    roots = []

    def baseline_and_extract() -> None:
        state["base"] = sw.timed("baseline_reencode", reencode.fit_reencoding, backbone, train, test,
                                 method, num_classes=k, seed=0, epochs=EPOCHS)
        root = tempfile.TemporaryDirectory(prefix="bench-feat-")
        roots.append(root)
        cache = FeatureCache(root.name, device="cpu", progress=False)
        with sw("one_time_extraction"):
            cache.get(backbone, train), cache.get(backbone, test)
        state["cache"] = cache

    def ours() -> dict:
        cache = state["cache"]
        with sw("ours_cached"):
            tr, te = cache.get(backbone, train), cache.get(backbone, test)  # hits: read from disk
            out = fit_and_evaluate(method, tr.x, tr.y, te.x, te.y, seed=0, num_classes=k,
                                   device="cpu", epochs=EPOCHS)
        assert cache.hits == 2 and cache.misses == 2
        state["ours"], state["train_x"] = out, tr.x
        return out

    benchmark.pedantic(ours, setup=baseline_and_extract, rounds=ROUNDS, iterations=1)
    for r in roots:
        r.cleanup()

    # Correctness: identical features, so the same head and the same accuracy.
    base, mine = state["base"], state["ours"]
    assert torch.equal(base["train_x"], state["train_x"]), "re-encoded features differ from the cache"
    acc_base, acc_ours = base["eval"]["test"]["accuracy"], mine["eval"]["test"]["accuracy"]
    assert abs(acc_base - acc_ours) <= 0.005
    assert acc_ours > 0.3  # well above chance (0.1): the head learned from the frozen random-init features

    t_base = sw.median("baseline_reencode")
    t_ours = sw.median("ours_cached")
    t_extract = sw.median("one_time_extraction")
    ratio = t_base / t_ours
    benchutil.record(
        benchmark, f"head_fit_vs_reencode_{method}", ratio=ratio, target=TARGET, times_s=sw.times,
        what=f"{method} head, {EPOCHS} epochs on {N_TRAIN} MNIST-5k images + 1,000 test: "
             "re-encode every epoch / fit on cached features (already cached)",
        ratio_amortised_1_fit=t_base / (t_extract + t_ours),
        ratio_amortised_per_fit_quick_pair=t_base / (t_extract / FITS_PER_PAIR_QUICK + t_ours),
        fits_per_pair_quick=FITS_PER_PAIR_QUICK,
        accuracy_baseline=acc_base, accuracy_ours=acc_ours,
        train_loss_baseline=base["train_loss"], train_loss_ours=mine["train_loss"],
        params={"method": method, "epochs": EPOCHS, "n_train": N_TRAIN, "n_test": len(test),
                "backbone": backbone.identity, "feature_dim": backbone.feature_dim, "rounds": ROUNDS,
                "threads": 1},
    )
