"""Heads on real pre-trained features: the converged LP against a tuned scikit-learn logistic
regression, and batched fits against each head fitted alone.

Features: torchvision's ImageNet MobileNetV2 at 64 px (offline weights) and a small CNN (timm
``test_resnet``) pre-trained here, in-process, on 3,000 Fashion-MNIST images; on the quick
suite's tasks with the rows its plan chooses (``make_plan``: ``max_train``, the validation
carve), extracted through the features stage (``extraction.extract_payload``) once per module.
``NMLBENCH_REAL_FEATURES_DIR=DIR`` keeps the pre-trained CNN and the feature cache in ``DIR``
across runs (a fresh temporary directory otherwise).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.config import load_suite, validate_suite
from benchmark.extraction import FeaturePayload, extract_payload
from benchmark.heads import resolve_hparams
from benchmark.plan import head_grid, make_plan
from benchmark.probe import FitRequest, evaluate_head, fit_many, train_head
from benchmark.probe.reference import compare_lp_with_sklearn
from benchmark.sweep import prepare_payload

SUITES = Path(__file__).resolve().parents[1] / "suites"
MOBILENET = {"name": "mobilenet_v2", "family": "torchvision", "arch": "mobilenet_v2", "weights": "imagenet",
             "image_size": 64}

pytestmark = pytest.mark.slow
#: Batched and lone fits run the same arithmetic in another order (stacked bmm vs one matmul;
#: a batched L-BFGS over the L2 grid vs one solve). On a 2-core AMD EPYC without AVX-512 (Zen 3)
#: that rounding, carried through 30 epochs (or to the solver's tolerance), moves single members
#: by up to a few points (lr 1e-2); on average they agree within half a point. Measured, not assumed:
#: the benchmark head_fits_batched_vs_one_at_a_time reports the gaps on the quick suite's grid.
MEMBER_GAP = 0.03
MEAN_GAP = 0.005


def _pretrain_cnn(path: Path) -> Path:
    """A timm test_resnet learns 3,000 clean Fashion-MNIST images for 3 epochs (seconds), saved
    as the ``nmlbench`` family's checkpoint, like the suite's own pre-training writes it."""
    from benchmark.backbones import save_pretrain_checkpoint
    from benchmark.pretrain import (
        PRETRAIN_MEAN,
        PRETRAIN_STD,
        PretrainJob,
        array_images,
        build_model,
        build_training_set,
        preprocess,
    )

    job = PretrainJob(objective="supervised", corpus="fashion-mnist", arch="test_resnet", epochs=3, lr=2e-3,
                      train_subset=3000, display="cnn")
    ts = build_training_set(job)  # the label table; the images stay in the corpus (as in a worker)
    model, _ = build_model({"objective": "supervised", "arch": job.arch, "seed": 0, "image_size": job.image_size,
                            "num_classes": len(ts.classes)})
    images = torch.from_numpy(array_images(ts.corpus.open()))
    targets = torch.from_numpy(ts.labels.targets)
    steps = -(-len(images) // job.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=job.lr, weight_decay=job.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=job.epochs * steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(job.epochs):
        order = torch.randperm(len(images), generator=gen)
        for s in range(steps):
            idx = order[s * job.batch_size:(s + 1) * job.batch_size]
            loss = F.cross_entropy(model(preprocess(images[idx], job.image_size, PRETRAIN_MEAN, PRETRAIN_STD)),
                                   targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return save_pretrain_checkpoint(path, family="timm", arch=job.arch, model=model.eval(),
                                    image_size=job.image_size, mean=PRETRAIN_MEAN, std=PRETRAIN_STD,
                                    job={"name": job.name, "key": job.key})


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> dict[tuple[str, str], FeaturePayload]:
    """(backbone, task) -> features of the quick suite's tasks, plan rows, both backbones."""
    keep = os.environ.get("NMLBENCH_REAL_FEATURES_DIR")
    work = Path(keep) if keep else tmp_path_factory.mktemp("real-features")
    threads, env = torch.get_num_threads(), os.environ.get("NMLBENCH_THREADS")
    os.environ["NMLBENCH_THREADS"] = str(max(1, min(2, os.cpu_count() or 1)))
    try:
        cnn = work / "cnn" / "model.pt"
        if not cnn.is_file():
            _pretrain_cnn(cnn)
        quick = load_suite(SUITES / "quick.yaml", check_names=False)
        suite = validate_suite({
            "name": "real-features", "work_dir": str(work),
            "backbones": [MOBILENET, {"name": "cnn-fmnist", "family": "nmlbench", "checkpoint": str(cnn)}],
            "downstream": quick.downstream.model_dump(),
            "selection": quick.selection.model_dump()})
        plan = make_plan(suite)
        assert len(plan.pairs) == 2 * 6
        return {(p.backbone.display, p.task.name): extract_payload(p, str(work / "features"), None, True)
                for p in plan.pairs}
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("NMLBENCH_THREADS", None)
        else:
            os.environ["NMLBENCH_THREADS"] = env


@pytest.fixture(scope="module")
def lp_rows(payloads) -> dict[tuple[str, str], dict]:
    """``compare_lp_with_sklearn`` on every pair: our LPs and tuned sklearn, one thread each, the
    pairs spread over two processes (the costliest, MobileNetV2's 1280-d pairs, first)."""
    keys = sorted(payloads, key=lambda k: (k[0] != "mobilenet_v2", k))
    lp_hp = resolve_hparams("lp")
    with ProcessPoolExecutor(max(1, min(2, os.cpu_count() or 1)), mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(compare_lp_with_sklearn, [payloads[k] for k in keys], [lp_hp] * len(keys)))
    return dict(zip(keys, rows))


def test_converged_lp_is_within_one_point_of_tuned_sklearn_on_every_pair(lp_rows):
    lines, gaps = [], []
    for (backbone, task), row in lp_rows.items():
        lp = row["records"]["lp"]
        gaps.append(row["lp"] - row["sklearn"])
        lines.append(f"{backbone:<13} {task:<18} lp {100 * row['lp']:5.1f} (L2 {row['chosen_l2']:.1e}, "
                     f"{row['iterations']:.0f} it)  lp_adamw {100 * row['lp_adamw']:5.1f}"
                     f"  sklearn {100 * row['sklearn']:5.1f} (C {row['sklearn_C']:.0e})  {100 * gaps[-1]:+.1f}")
        assert row["converged"] == 1.0, (backbone, task)
        assert lp["eval"]["val"]["accuracy"] == max(lp["curves"]["val_accuracy_by_l2"])
    print("\n" + "\n".join(lines))
    print(f"mean lp - sklearn {100 * np.mean(gaps):+.2f} points, worst {100 * min(gaps):+.2f}")
    assert min(gaps) >= -0.01, lines[int(np.argmin(gaps))]


@pytest.fixture()
def one_thread():
    """One torch thread: a BLAS that may change its thread count with the machine's load (MKL's
    dynamic threads) would otherwise round differently from run to run, and a comparison of two
    computations must not depend on the load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: The quick suite's non-linear heads as one batch group (depth 1: MLP and NMTune x lam x lr).
def _quick_group(**over) -> list:
    quick = load_suite(SUITES / "quick.yaml", check_names=False)
    plan_hps = [h for h in head_grid(quick) if h.method in ("mlp", "nmtune")]
    keys = {}
    for h in plan_hps:
        keys.setdefault(h.batch_key(), []).append(h)
    group = next(iter(keys.values()))
    return [resolve_hparams(h.method, **{**h.as_dict(), **over}) for h in group]


@pytest.mark.parametrize(("backbone", "task", "over", "seeds"), [
    ("cnn-fmnist", "mnist-5k", {}, (0, 1)),  # the quick suite's own settings, two head seeds
    ("mobilenet_v2", "animal-mnist", {"ratio": 0.25, "epochs": 4}, (0,)),  # 1280-d features, a cheaper head
])
def test_batched_fits_equal_fits_alone_on_real_features(payloads, one_thread, backbone, task, over, seeds):
    payload = payloads[(backbone, task)]
    data = prepare_payload(payload)
    hps = _quick_group(**over)
    assert {h.method for h in hps} == {"mlp", "nmtune"} and len({h.batch_key() for h in hps}) == 1
    requests = [FitRequest(hp, seed) for seed in seeds for hp in hps]
    batched = fit_many(data, requests)
    assert all(r["batch_members"] == len(requests) for r in batched)
    gaps = []
    for req, rec in zip(requests, batched):
        alone = train_head(data, req.hparams, seed=req.seed)
        ev = evaluate_head(alone, data)
        for name in ev:  # every evaluation set, every member
            gap = abs(rec["eval"][name]["accuracy"] - ev[name]["accuracy"])
            gaps.append(gap)
            # stacked bmm and a lone matmul round differently, and 30 epochs carry it (see MEMBER_GAP)
            assert gap <= MEMBER_GAP, (req.hparams.as_dict(), req.seed, name, gap)
        b, a = int(rec["summary"]["best_epoch"]) - 1, int(alone.summary["best_epoch"]) - 1
        if b != a:  # a validation near-tie that rounding broke the other way: both epochs score alike
            assert abs(alone.curves["val_accuracy"][b] - alone.curves["val_accuracy"][a]) <= MEMBER_GAP, (b, a)
        assert len(rec["curves"]["train_loss"]) == len(rec["curves"]["val_accuracy"]) == req.hparams.epochs
        # the same computation: the first epochs agree to rounding; later ones drift apart the way
        # two runs of one chaotic trajectory do (measured: 4 to 6 digits for 2 to 6 epochs, then per cents)
        np.testing.assert_allclose(rec["curves"]["train_loss"][:2], alone.curves["train_loss"][:2], rtol=1e-3)
        assert len(rec["curves"]["val_accuracy"]) == len(alone.curves["val_accuracy"])
    assert np.mean(gaps) <= MEAN_GAP, np.mean(gaps)
    print(f"{backbone}/{task}: {len(requests)} members, accuracy gap to a lone fit: mean {100 * np.mean(gaps):.3f}, "
          f"largest {100 * max(gaps):.3f} points")


def test_lp_grid_solved_together_equals_each_value_alone(payloads, lp_rows, one_thread):
    """The batched L2 grid: the chosen value solved on its own gives the same probe."""
    for key in (("cnn-fmnist", "sklearn-digits"), ("mobilenet_v2", "digits-from-fonts")):
        payload = payloads[key]
        data = prepare_payload(payload)
        grid = lp_rows[key]["records"]["lp"]  # the whole grid, one thread, in lp_rows' process
        l2 = grid["summary"]["chosen_l2"]
        [alone] = fit_many(data, [FitRequest(resolve_hparams("lp", l2_min=l2, l2_max=l2, l2_steps=1, l2_refine=0))])
        for name in grid["eval"]:
            # two L-BFGS runs to the solver's tolerance (one batched over the grid)
            assert abs(grid["eval"][name]["accuracy"] - alone["eval"][name]["accuracy"]) <= MEMBER_GAP / 2, (key, name)
        assert grid["curves"]["train_loss_by_l2"][grid["curves"]["l2"].index(l2)] == pytest.approx(
            alone["train_loss"], rel=5e-3)
