"""Bit-for-bit torch numerics within one machine: what a resumed pre-training run and a second
extraction of the same features need in order to equal the first run, not merely come close.

Why: every job is keyed by a hash of its config, so a resume from a checkpoint, an idempotent
re-run or a cache refill under the same key must give the same bits. Three things decide that:

- **Threads.** Torch's CPU kernels split reductions by thread, so the thread count is part of the
  arithmetic; callers pass the count their resources give and it is set here, every time.
- **Kernels.** ``torch.use_deterministic_algorithms(True)``: cuDNN and cuBLAS use reproducible
  algorithms (cuBLAS needs a fixed workspace, ``CUBLAS_WORKSPACE_CONFIG``, set before its first
  call). Ops that have no deterministic kernel warn instead of failing (``warn_only``): on the
  CPU torch lists only ``index_copy``, which none of the suite's models use; on CUDA some
  backward passes (adaptive average pooling, ...) have none. A long pre-training run should not
  die for that; the warning names the op whose bits may differ between runs.
- **Random draws.** Callers seed from the job (and epoch / rank), never from process state.

Bits still differ between CPU types (AVX2 vs AVX-512 kernels sum in other orders): nothing
compares them across machines; tests that do compare numbers across machines use tolerances.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

#: cuBLAS's reproducible workspace setting (PyTorch's reproducibility notes); read at its first call.
CUBLAS_WORKSPACE = ":4096:8"


def deterministic_torch(threads: int) -> None:
    """Fix this process's torch thread count and switch on deterministic algorithms for good
    (a process that does one job: a Ray Train worker), on the CPU and on CUDA alike."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def deterministic_section(threads: int) -> Iterator[None]:
    """:func:`deterministic_torch` for a block, then the thread count and algorithm settings as
    they were: a Ray worker process runs other tasks (head fits) after this one."""
    import torch

    before = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    deterministic_torch(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        torch.backends.cudnn.benchmark = before[3]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 63-bit seed for the global torch RNG from (job seed, epoch, rank): a run resumed at
    ``epoch`` draws (dropout masks, ...) exactly what the uninterrupted run drew there."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1, np.uint64)[0] >> 1)
