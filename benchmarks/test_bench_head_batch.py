"""Measurement 6: the head fits of one pair trained as batches vs one at a time.

The quick suite's head grid on one (backbone, task) pair: the fits its plan makes for a pair
(``benchmark.plan.make_plan``), trained on the same prepared features three ways, one thread each:
- batched: ``probe.fit_many`` with every fit of the pair (what a sweep trial does: fits sharing an
  architecture and schedule are one stacked computation, the LP's L2 grid one L-BFGS solve);
- one at a time through the same API (``fit_many`` with one fit per call);
- one at a time with the reference trainer (``probe.train_head``, one ``nn.Module`` and one
  ``torch.optim.AdamW`` per head: the design before batching) for the gradient-trained heads.
Features: timm ``test_resnet`` (random init, 96-d) on MNIST-5k, the plan's 1,600 / 400 rows, as
the features stage extracts them. Rounds interleave the sides. Correctness: every fit's test and
validation accuracy equal across the sides: on average within half a point, each within 3
points (rounding carried through 30 epochs; the recorded gaps say how close).

The arithmetic ceiling: batching removes per-operation overhead, never arithmetic. The record
counts the matrix-product FLOPs of the gradient fits (forward, and twice that backward), times
the same amount of work as one large stacked product on this thread (the machine's
``bmm`` rate), and reports the highest ratio any batching could reach on this grid: one at a time
divided by (LP time + the products at that rate). When that ceiling is below the target, the
target cannot be met on this machine by batching alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import time

import numpy as np
import pytest
import torch

import benchutil
from benchmark.config import load_suite, validate_suite
from benchmark.extraction import extract_payload
from benchmark.plan import make_plan
from benchmark.probe import FitRequest, evaluate_head, fit_many, train_head
from benchmark.sweep import prepare_payload

QUICK = Path(__file__).resolve().parents[1] / "suites" / "quick.yaml"
BACKBONE = {"family": "timm", "arch": "test_resnet", "seed": 0, "image_size": 32}
ROUNDS = 2
TARGET = 5.0  # batched fits/s over one-at-a-time fits/s, at least


@pytest.fixture(scope="module")
def pair_inputs():
    quick = load_suite(QUICK, check_names=False)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as root:
        suite = validate_suite({"name": "bench-batch", "work_dir": root, "backbones": [BACKBONE],
                                "downstream": {**quick.downstream.model_dump(), "id": ["mnist-5k"], "ood": []},
                                "selection": quick.selection.model_dump()})
        [pair] = make_plan(suite).pairs
        payload = extract_payload(pair, root, None, normalize=True)
    return pair, payload


def _matmul_flops(hparams, dim: int, classes: int, n_train: int) -> float:
    """FLOPs of the linear layers of one gradient fit: 2 per multiply-add, forward + 2x backward."""
    hidden = int(round(hparams.ratio * dim))
    macs_per_row = dim * hidden + (hparams.depth - 1) * hidden * hidden + hidden * dim + dim * classes
    return 3 * 2 * macs_per_row * n_train * hparams.epochs


def _bmm_rate(members: int, rows: int, dim: int, hidden: int, repeats: int = 20) -> float:
    """FLOP/s of one stacked product of the heads' own shape, (G, rows, dim) @ (G, dim, hidden)."""
    a, b = torch.randn(members, rows, dim), torch.randn(members, dim, hidden)
    torch.bmm(a, b)
    t = time.perf_counter()
    for _ in range(repeats):
        torch.bmm(a, b)
    return repeats * 2 * members * rows * dim * hidden / (time.perf_counter() - t)


def test_batched_head_fits_vs_one_at_a_time(benchmark, one_thread, pair_inputs):
    pair, payload = pair_inputs
    data = prepare_payload(payload)
    requests = [FitRequest(f.hparams, f.head_seed, f.train_rows) for f in pair.fits]
    sw = benchutil.Stopwatch()
    out: dict[str, list] = {}

    def one_at_a_time() -> None:
        with sw("one_at_a_time"):
            out["single"] = [fit_many(data, [r])[0] for r in requests]
        grad = [r for r in requests if r.hparams.method != "lp"]
        with sw("reference_trainer_gradient_heads"):
            out["reference"] = [evaluate_head(train_head(data, r.hparams, seed=r.seed), data) for r in grad]

    def batched() -> None:
        with sw("batched"):
            out["batched"] = fit_many(data, requests)

    benchmark.pedantic(batched, setup=one_at_a_time, rounds=ROUNDS, iterations=1)

    single, batch = out["single"], out["batched"]
    assert len(batch) == len(requests) and not any("error" in r for r in batch + single)
    gaps = [abs(a["eval"][name]["accuracy"] - b["eval"][name]["accuracy"]) for a, b in zip(single, batch)
            for name in a["eval"]]
    grad_batch = [b for r, b in zip(requests, batch) if r.hparams.method != "lp"]
    ref_gaps = [abs(ev[name]["accuracy"] - b["eval"][name]["accuracy"]) for ev, b in zip(out["reference"], grad_batch)
                for name in ev]
    worst, ref_worst = max(gaps), max(ref_gaps)

    t_single, t_batch = sw.median("one_at_a_time"), sw.median("batched")
    n_grad = len(grad_batch)
    t_grad_batch = sum(b["seconds"] for b in grad_batch)
    t_grad_single = sum(s["seconds"] for r, s in zip(requests, single) if r.hparams.method != "lp")
    groups = sorted({b["batch_members"] for b in batch})
    dim, classes = int(payload.train[0].shape[1]), int(data.num_classes)
    grad_reqs = [r for r in requests if r.hparams.method != "lp"]
    flops = sum(_matmul_flops(r.hparams, dim, classes, len(r.rows) if r.rows is not None else len(payload.train[1]))
                for r in grad_reqs)
    h0 = grad_reqs[0].hparams
    rate = _bmm_rate(len(grad_reqs), h0.batch_size, dim, int(round(h0.ratio * dim)))
    t_lp = sum(b["seconds"] for r, b in zip(requests, batch) if r.hparams.method == "lp")
    ceiling = t_single / (t_lp + flops / rate)
    benchutil.record(
        benchmark, "head_fits_batched_vs_one_at_a_time", ratio=t_single / t_batch, target=TARGET,
        times_s=sw.times,
        what=f"{len(requests)} head fits of one quick-suite pair: fits/s batched / fits/s one at a time (fit_many)",
        fits_per_second_batched=len(requests) / t_batch, fits_per_second_one_at_a_time=len(requests) / t_single,
        ratio_gradient_heads_only=t_grad_single / t_grad_batch,
        ratio_vs_reference_trainer_gradient_heads=sw.median("reference_trainer_gradient_heads") / t_grad_batch,
        batch_group_sizes=groups, max_accuracy_gap_batched_vs_single=worst,
        gradient_fit_matmul_gflop=flops / 1e9, bmm_gflop_per_s=rate / 1e9,
        gflop_per_s_batched=flops / 1e9 / t_grad_batch, gflop_per_s_one_at_a_time=flops / 1e9 / t_grad_single,
        lp_seconds=t_lp, ratio_ceiling_arithmetic=ceiling,
        max_accuracy_gap_batched_vs_reference=ref_worst, mean_accuracy_gap_batched_vs_reference=float(np.mean(ref_gaps)),
        mean_accuracy_gap_batched_vs_single=float(np.mean(gaps)),
        params={"fits": len(requests), "gradient_fits": n_grad, "backbone": BACKBONE, "task": "mnist-5k",
                "n_train": int(len(payload.train[1])), "n_val": int(len(payload.val[1])),
                "feature_dim": int(payload.train[0].shape[1]), "rounds": ROUNDS, "threads": 1,
                "hparams": sorted({str(r.hparams.as_dict()) for r in requests})},
    )
    # Equal results, recorded above before judged: the same bounds as tests/test_heads_real_features.py.
    assert worst <= 0.03 and ref_worst <= 0.03
    assert np.mean(gaps) <= 0.005 and np.mean(ref_gaps) <= 0.005
