"""Heads on real pre-trained features: the converged LP against a tuned scikit-learn logistic
regression, and batched fits against each head fitted alone.

Features: torchvision's ImageNet MobileNetV2 at 64 px (offline weights) and a small CNN (timm
``test_resnet``) pre-trained here, in-process, on 3,000 Fashion-MNIST images; on the quick
suite's tasks with the rows its plan chooses (``make_plan``: ``max_train``, the validation
carve), extracted through the features stage (``extraction.extract_payload``) once per module.
The independent reference (the LP against sklearn) runs on six of the plan's twelve pairs,
``LP_PAIRS``: every task once, each backbone on three (an OOD task among them), so both feature
kinds and every task's data are still checked, at half the cost; only those six are extracted
(every other test here reads one of them).
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
from benchmark.probe.reference import lp_at_sklearn_objective, optimum_check_failures
from benchmark.sweep import prepare_payload

SUITES = Path(__file__).resolve().parents[1] / "suites"
MOBILENET = {
    "name": "mobilenet_v2",
    "family": "torchvision",
    "arch": "mobilenet_v2",
    "weights": "imagenet",
    "image_size": 64,
}

pytestmark = pytest.mark.slow
#: Batched and lone fits run the same arithmetic in another order (stacked bmm vs one matmul).
#: 30 epochs of minibatch training carry that rounding the way two runs of one chaotic trajectory
#: drift apart, so how far two members end apart is no constant of the code but of the rounding
#: itself: the test measures it on this machine as the gap between a lone fit and the same fit on
#: features moved by one unit in the last place (``_one_ulp``), and allows the batched-vs-lone gap
#: ``ROUNDING_FACTOR`` times that spread, and never less than the floors below (a fifth of the
#: 1-point precision at which the leaderboard reports accuracies: 0.2 points on average, 3 points
#: for one member at the largest learning rate).
ROUNDING_FACTOR = 2.0
MEMBER_GAP, MEAN_GAP = 0.03, 0.002
#: The pairs checked against sklearn (and extracted): every task once, three per backbone, each
#: backbone on one OOD task. MobileNetV2 on digits-from-fonts (the weakest L2, see FLIPPED_ROWS)
#: and the pairs the other tests read are among them.
LP_PAIRS = frozenset(
    {
        ("mobilenet_v2", "animal-mnist"),
        ("mobilenet_v2", "digits-from-fonts"),
        ("mobilenet_v2", "fashion-mnist"),
        ("cnn-fmnist", "digits-from-mnist"),
        ("cnn-fmnist", "mnist-5k"),
        ("cnn-fmnist", "sklearn-digits"),
    }
)


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

    job = PretrainJob(
        objective="supervised",
        corpus="fashion-mnist",
        arch="test_resnet",
        epochs=3,
        lr=2e-3,
        train_subset=3000,
        display="cnn",
    )
    ts = build_training_set(job)  # the label table; the images stay in the corpus (as in a worker)
    model, _ = build_model(
        {
            "objective": "supervised",
            "arch": job.arch,
            "seed": 0,
            "image_size": job.image_size,
            "num_classes": len(ts.classes),
        }
    )
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
            idx = order[s * job.batch_size : (s + 1) * job.batch_size]
            loss = F.cross_entropy(
                model(preprocess(images[idx], job.image_size, PRETRAIN_MEAN, PRETRAIN_STD)), targets[idx]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return save_pretrain_checkpoint(
        path,
        family="timm",
        arch=job.arch,
        model=model.eval(),
        image_size=job.image_size,
        mean=PRETRAIN_MEAN,
        std=PRETRAIN_STD,
        job={"name": job.name, "key": job.key},
    )


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> dict[tuple[str, str], FeaturePayload]:
    """(backbone, task) -> features of ``LP_PAIRS`` (the quick suite's tasks, plan rows, both
    backbones); the plan itself is still the whole 2 x 6."""
    keep = os.environ.get("NMLBENCH_REAL_FEATURES_DIR")
    work = Path(keep) if keep else tmp_path_factory.mktemp("real-features")
    threads, env = torch.get_num_threads(), os.environ.get("NMLBENCH_THREADS")
    os.environ["NMLBENCH_THREADS"] = str(max(1, min(2, os.cpu_count() or 1)))
    try:
        cnn = work / "cnn" / "model.pt"
        if not cnn.is_file():
            _pretrain_cnn(cnn)
        quick = load_suite(SUITES / "quick.yaml", check_names=False)
        suite = validate_suite(
            {
                "name": "real-features",
                "work_dir": str(work),
                "backbones": [MOBILENET, {"name": "cnn-fmnist", "family": "nmlbench", "checkpoint": str(cnn)}],
                "downstream": quick.downstream.model_dump(),
                "selection": quick.selection.model_dump(),
            }
        )
        plan = make_plan(suite)
        assert len(plan.pairs) == 2 * 6
        pairs = {(p.backbone.display, p.task.name): p for p in plan.pairs}
        assert LP_PAIRS <= set(pairs)
        assert {t for _, t in LP_PAIRS} == {t for _, t in pairs} and len({b for b, _ in LP_PAIRS}) == 2
        return {key: extract_payload(pairs[key], str(work / "features"), None, True) for key in sorted(LP_PAIRS)}
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("NMLBENCH_THREADS", None)
        else:
            os.environ["NMLBENCH_THREADS"] = env


#: At (nearly) the same optimum only rows whose two best logits nearly tie can be predicted
#: differently; this many rows of an evaluation set may flip, at least, and at most a fraction of a
#: point of it. Asserted on the rows the fit's domain pins: the validation rows and in-domain test
#: sets. Out-of-domain test sets are printed, not bounded: with a weak L2 the objective is flat
#: along directions the training domain barely uses, a solver stopped at gradient ``tol`` sits up to
#: ~||g|| / l2 away along them, and OOD rows read exactly those directions (MobileNetV2 on
#: digits-from-fonts, L2 7.9e-6: at tol 1e-6 the LP is 1.6 from sklearn's solution and 0.8 points
#: apart on sklearn-digits; at tol 1e-8, 0.03 and equal; measured on a Zen 1 EPYC).
FLIPPED_ROWS, FLIPPED_SHARE = 2, 0.002
OOD_TASKS = frozenset(load_suite(SUITES / "quick.yaml", check_names=False).downstream.ood)


def _pinned(task: str, name: str) -> bool:
    """Whether an evaluation set's predictions are pinned by the training domain (see FLIPPED_ROWS)."""
    return name == "val" or task not in OOD_TASKS


@pytest.fixture(scope="module")
def lp_checks(payloads) -> dict[tuple[str, str], dict]:
    """``lp_at_sklearn_objective`` on every extracted pair (``LP_PAIRS``: every task, both
    backbones): our LP's search, then sklearn at its chosen L2, one thread each, the pairs spread
    over two processes (MobileNetV2's 1280-d pairs first)."""
    keys = sorted(payloads, key=lambda k: (k[0] != "mobilenet_v2", k))
    lp_hp = resolve_hparams("lp")
    with ProcessPoolExecutor(max(1, min(2, os.cpu_count() or 1)), mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(lp_at_sklearn_objective, [payloads[k] for k in keys], [lp_hp] * len(keys)))
    return dict(zip(keys, rows))


def test_converged_lp_reaches_sklearns_objective_at_its_chosen_l2_on_every_pair(lp_checks):
    """On every pair of ``LP_PAIRS`` (every task, both backbones)."""
    assert set(lp_checks) == LP_PAIRS
    lines = []
    for (backbone, task), row in lp_checks.items():
        acc = row["accuracy"]
        flips = {name: abs(ours - theirs) for name, (ours, theirs) in acc.items()}
        lines.append(
            f"{backbone:<13} {task:<18} L2 {row['l2']:.1e} C {row['C']:.1e}  objective gap "
            f"{row['objective_gap']:+.1e}  ({row['lp_iterations']:.0f} / {row['sklearn_iterations']} it)  "
            f"largest accuracy gap {100 * max(flips.values()):.2f} points  distance "
            f"{row['solution_distance']:.1e}"
        )
        lines[-1] += f"  gradient {row['gradient_norm']:.1e} (allowed {row['gradient_norm_allowed']:.1e})"
    print("\n" + "\n".join(lines))
    for ((_backbone, task), row), line in zip(lp_checks.items(), lines):
        assert row["converged"] == 1.0, line
        assert not optimum_check_failures(row), (line, optimum_check_failures(row))
        for name, (ours, theirs) in row["accuracy"].items():
            allowed = max(FLIPPED_ROWS / row["test_rows"][name], FLIPPED_SHARE)
            if _pinned(task, name):
                assert abs(ours - theirs) <= allowed + 1e-12, (line, name, ours, theirs, allowed)


def test_lp_selection_is_the_best_validation_accuracy_ties_to_the_stronger_l2(lp_checks):
    """Selection rule (``probe.linear._best``): the highest validation accuracy on the searched L2
    values; among equal accuracies the lower validation cross-entropy, then the larger L2."""
    for key, row in lp_checks.items():
        curves = row["curves"]
        acc, loss, l2 = (np.array(curves[k]) for k in ("val_accuracy_by_l2", "val_loss_by_l2", "l2"))
        best = acc.max()
        assert row["val_accuracy_selected"] == best, key
        tied = np.flatnonzero(acc == best)
        lowest = tied[loss[tied] == loss[tied].min()]
        assert row["l2"] == l2[lowest].max(), (key, l2[tied], loss[tied])


def test_the_objective_check_fails_for_an_lp_stopped_early(payloads):
    """The criterion can fail: 10 L-BFGS iterations leave the objective far above sklearn's."""
    early = resolve_hparams("lp", max_iter=10)
    for key in (("cnn-fmnist", "sklearn-digits"), ("mobilenet_v2", "animal-mnist")):
        row = lp_at_sklearn_objective(payloads[key], early)
        assert row["converged"] == 0.0, key
        assert len(optimum_check_failures(row)) == 2, (key, row["gradient_norm"], row["objective_excess"])


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
    plan_hps = [h for h in head_grid(quick) if h.head in ("mlp", "nmtune")]
    keys = {}
    for h in plan_hps:
        keys.setdefault(h.batch_key(), []).append(h)
    group = next(iter(keys.values()))
    return [resolve_hparams(h.head, **{**h.as_dict(), **over}) for h in group]


@pytest.mark.parametrize(
    ("backbone", "task", "over", "seeds"),
    [
        ("cnn-fmnist", "mnist-5k", {}, (0, 1)),  # the quick suite's own settings, two head seeds
        ("mobilenet_v2", "animal-mnist", {"width": 0.25, "epochs": 4}, (0,)),  # 1280-d features, a cheaper head
    ],
)
def test_batched_fits_equal_fits_alone_on_real_features(payloads, one_thread, backbone, task, over, seeds):
    payload = payloads[(backbone, task)]
    data = prepare_payload(payload)
    hps = _quick_group(**over)
    assert {h.head for h in hps} == {"mlp", "nmtune"} and len({h.batch_key() for h in hps}) == 1
    requests = [FitRequest(hp, seed) for seed in seeds for hp in hps]
    batched = fit_many(data, requests)
    assert all(r["batch_members"] == len(requests) for r in batched)
    gaps, lone = [], []
    for req, rec in zip(requests, batched):
        alone = train_head(data, req.hparams, seed=req.seed)
        ev = evaluate_head(alone, data)
        lone.append(ev)
        for name in ev:  # every evaluation set, every member
            gap = abs(rec["eval"][name]["accuracy"] - ev[name]["accuracy"])
            gaps.append(gap)
            # stacked bmm and a lone matmul round differently, and 30 epochs carry it (see MEMBER_GAP);
            # judged below against the rounding spread measured on this machine
        b, a = int(rec["summary"]["best_epoch"]) - 1, int(alone.summary["best_epoch"]) - 1
        if b != a:  # a validation near-tie that rounding broke the other way: both epochs score alike
            assert abs(alone.curves["val_accuracy"][b] - alone.curves["val_accuracy"][a]) <= MEMBER_GAP, (b, a)
        # the first epochs agree to float32 rounding of the same products (a few ulps per step,
        # ~1e-6 relative after hundreds of steps); 1e-3 is far above it and far below a wrong update
        assert len(rec["curves"]["train_loss"]) == len(rec["curves"]["val_accuracy"]) == req.hparams.epochs
        np.testing.assert_allclose(rec["curves"]["train_loss"][:2], alone.curves["train_loss"][:2], rtol=1e-3)
        assert len(rec["curves"]["val_accuracy"]) == len(alone.curves["val_accuracy"])
    # the rounding yardstick on this machine: the first seed's members alone, features one ulp apart;
    # the lone fits on ``data`` are the ones above (a seeded fit on one thread repeats bit for bit)
    moved = prepare_payload(_one_ulp(payload))
    spread = []
    for req, ev in zip(requests[: len(hps)], lone):
        ev_moved = evaluate_head(train_head(moved, req.hparams, seed=req.seed), moved)
        spread += [abs(ev[name]["accuracy"] - ev_moved[name]["accuracy"]) for name in ev]
    mean_allowed = max(MEAN_GAP, ROUNDING_FACTOR * float(np.mean(spread)))
    member_allowed = max(MEMBER_GAP, ROUNDING_FACTOR * max(spread))
    print(
        f"{backbone}/{task}: {len(requests)} members, accuracy gap to a lone fit: mean {100 * np.mean(gaps):.3f}, "
        f"largest {100 * max(gaps):.3f} points; one ulp moves a lone fit by mean {100 * np.mean(spread):.3f}, "
        f"largest {100 * max(spread):.3f}"
    )
    assert max(gaps) <= member_allowed, (max(gaps), member_allowed)
    assert np.mean(gaps) <= mean_allowed, (np.mean(gaps), mean_allowed)


def _one_ulp(payload: FeaturePayload) -> FeaturePayload:
    """The payload with every training feature moved up by one unit in its last place (float32)."""
    x, y = payload.train
    moved = np.nextafter(np.asarray(x, dtype=np.float32), np.float32(np.inf))
    return FeaturePayload(
        train=(moved, y),
        val=payload.val,
        tests=payload.tests,
        num_classes=payload.num_classes,
        class_subsets=payload.class_subsets,
    )


def test_lp_grid_solved_together_equals_each_value_alone(payloads, lp_checks, one_thread):
    """The batched L2 grid: the chosen value solved on its own (from zero, not warm-started) is the
    same optimum, by the same criterion as against sklearn."""
    for key in (("cnn-fmnist", "sklearn-digits"), ("mobilenet_v2", "digits-from-fonts")):
        grid = lp_checks[key]  # the whole grid, one thread, in lp_checks' process
        l2 = grid["l2"]
        alone = lp_at_sklearn_objective(
            payloads[key], resolve_hparams("lp", l2_min=l2, l2_max=l2, l2_steps=1, l2_refine=0)
        )
        assert alone["l2"] == l2 and alone["C"] == grid["C"]
        for row in (grid, alone):
            assert not optimum_check_failures(row), (key, optimum_check_failures(row))
        for name, (ours, _) in grid["accuracy"].items():
            if not _pinned(key[1], name):
                continue
            # only near-tied rows can flip between two solutions of one optimum (see FLIPPED_ROWS)
            assert (
                abs(ours - alone["accuracy"][name][0])
                <= max(FLIPPED_ROWS / grid["test_rows"][name], FLIPPED_SHARE) + 1e-12
            ), (key, name)
