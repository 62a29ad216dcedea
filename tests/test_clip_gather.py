"""CLIP's cross-worker gather: two gloo ranks, each with half of a batch, train exactly as one
process with the whole batch would.

``recipe.clip_step`` gathers both towers' features over the workers (with gradients), so each
rank's InfoNCE contrasts its images with every caption of the global batch. DDP then averages
the ranks' parameter gradients. The reference is the same step in one process over the global
batch: the mean of the ranks' losses, the averaged gradients and the summed retrieval counts
must equal it. Without the gather each rank would contrast only its own half (a different loss),
and a gather without gradients would drop the other ranks' terms from the gradient.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmark.pretrain.recipe import CLIP_SUMS, clip_step

BATCH, DIM, EMBED = 8, 6, 4


def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(BATCH, DIM, generator=g), torch.randn(BATCH, DIM, generator=g)
    w_img, w_txt = torch.randn(DIM, EMBED, generator=g), torch.randn(DIM, EMBED, generator=g)
    mismatched = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0])
    return images, texts, w_img, w_txt, mismatched


def _step(images, texts, w_img, w_txt, mismatched, rank: int, world: int):
    """One CLIP step of a linear two-tower model; returns loss, (grad w_img, grad w_txt), sums."""
    w_img, w_txt = w_img.clone().requires_grad_(), w_txt.clone().requires_grad_()
    img = torch.nn.functional.normalize(images @ w_img, dim=1)
    txt = torch.nn.functional.normalize(texts @ w_txt, dim=1)
    loss, sums = clip_step((img, txt, torch.tensor(5.0)), mismatched, rank, world)
    loss.backward()
    return loss.detach(), (w_img.grad, w_txt.grad), sums


def _rank(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        images, texts, w_img, w_txt, mismatched = _problem()
        rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        loss, grads, sums = _step(images[rows], texts[rows], w_img, w_txt, mismatched[rows], rank, world)
        for g in grads:  # what DDP does with parameter gradients
            dist.all_reduce(g)
            g /= world
        dist.all_reduce(loss)
        dist.all_reduce(sums)
        if rank == 0:
            queue.put((float(loss / world), [g.tolist() for g in grads], sums.tolist()))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_with_gather_equal_one_process_on_the_global_batch() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    loss2, grads2, sums2 = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    loss1, grads1, sums1 = _step(*_problem(), rank=0, world=1)
    # Both sides add the same 2 x BATCH float32 terms (a logsumexp per image and per caption, a
    # product per row in a gradient entry) in another grouping (per half, then the all-reduce):
    # round-off <= (number of terms) x eps32 of the magnitude, x 4 for the exp/normalise chain.
    # Measured: 1 ulp on the loss (2.4e-7), 3e-8 on the gradients.
    eps = torch.finfo(torch.float32).eps
    assert abs(loss2 - float(loss1)) <= 4 * 2 * BATCH * eps * abs(float(loss1))
    for a, b in zip(grads2, grads1):
        tol = 4 * 2 * BATCH * eps * float(b.abs().max())
        assert torch.allclose(torch.tensor(a), b, rtol=0, atol=tol), "averaged gradients differ from one process's"
    summed = dict(zip(CLIP_SUMS, sums2))
    single = dict(zip(CLIP_SUMS, sums1.tolist()))
    for k in ("n", "correct", "matched", "mismatched", "matched_rank", "mismatched_rank"):
        assert abs(summed[k] - single[k]) < 1e-9, k  # counts are exact; rank sums: a few float64 additions (1e-16)
    assert summed["n"] == BATCH and summed["mismatched"] == 2
    # Without the gather a rank contrasts its own half only: a different (smaller) loss.
    halves = [
        _step(*(t[r * 4 : (r + 1) * 4] if t.shape[0] == BATCH else t for t in _problem()), rank=0, world=1)[0]
        for r in range(2)
    ]
    assert abs(float(sum(halves)) / 2 - float(loss1)) > 1e-3  # 1.36: far beyond the round-off bound above
