"""What makes a data-parallel pre-training auditable: each rank's shard of an epoch, and the
digests and records every rank reports beside its metrics.

Apart from the training loop (``worker.py``) because these are the checks, not the training:
shards of one epoch are disjoint and cover the corpus (:func:`index_digest` adds over them),
replicas stay in step under DDP (:func:`param_digest` is equal on all ranks), and the records
name each rank's node and peak memory.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from benchmark.pretrain.recipe import unwrap

_MASK64 = (1 << 64) - 1


def epoch_shard(n: int, world: int, rank: int, seed: int, epoch: int) -> torch.Tensor:
    """Sample indices that ``rank`` trains on in ``epoch`` (int64, in training order).

    The first ``n - n % world`` items of a permutation seeded by (seed, epoch), every
    ``world``-th from ``rank``: equal shards keep the DDP steps of all ranks aligned, and the
    same seed gives every rank the same permutation without any communication.
    """
    n_total = n - n % world
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    return torch.randperm(n_total, generator=g)[rank::world]


def index_digest(indices: Any) -> int:
    """Order-free 64-bit digest of a set of sample indices, additive over disjoint sets.

    The sum (mod 2**64) of a splitmix64 hash of each index. Shards that are disjoint and cover
    ``range(n)`` have digests that add up to ``index_digest(range(n))``; an overlap or a gap
    breaks the sum except with probability about 2**-64.
    """
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    x = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return int(x.sum(dtype=np.uint64))


def param_digest(model: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of a model's parameters, in ``named_parameters`` order.

    Buffers are left out: BatchNorm running statistics are updated by each rank's own forward
    pass, so they legitimately differ across ranks after a step; parameters must not.
    """
    h = hashlib.sha256()
    for name, p in unwrap(model).named_parameters():
        h.update(name.encode())
        h.update(p.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _as_int64(value: int) -> int:
    """A 64-bit unsigned value as the signed int64 with the same bits (for a torch tensor)."""
    return value - (1 << 64) if value >= (1 << 63) else value


def _node_words() -> list[int]:
    import ray

    raw = bytes.fromhex(ray.get_runtime_context().get_node_id())[:32].ljust(32, b"\0")
    return [int(v) for v in np.frombuffer(raw, dtype=np.int64)]


def rank_records(
    shard: torch.Tensor, model: torch.nn.Module, device: torch.device, world: int, loader_mb: int
) -> list[dict[str, Any]]:
    """Per rank: images in its shard, the shard's index digest, its parameter digest, its Ray
    node and its peak memory (its own and its largest loader process', MiB)."""
    from benchmark.pretrain.inputs import peak_rss_mb

    local = torch.tensor(
        [
            shard.numel(),
            _as_int64(index_digest(shard)),
            _as_int64(int(param_digest(model), 16)),
            peak_rss_mb(),
            loader_mb,
            *_node_words(),
        ],
        dtype=torch.int64,
        device=device,
    )
    parts = [local]
    if world > 1:
        import torch.distributed as dist

        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
    out = []
    for r, p in enumerate(parts):
        v = p.tolist()
        node = np.asarray(v[5:9], dtype=np.int64).tobytes().rstrip(b"\0").hex()
        out.append(
            {
                "rank": r,
                "images": int(v[0]),
                "index_digest": f"{v[1] & _MASK64:016x}",
                "param_digest": f"{v[2] & _MASK64:016x}",
                "peak_rss_mb": int(v[3]),
                "loader_peak_rss_mb": int(v[4]),
                "node": node,
            }
        )
    return out
