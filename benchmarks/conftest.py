"""Fixtures of the performance benchmarks (``make bench``): fixed thread counts and a local Ray.

Every comparison runs its two sides with the same number of threads (one, unless a test says
otherwise) so that a ratio compares designs, not how many cores each side happened to grab on
a shared machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """torch and every BLAS (numpy's and scipy's OpenBLAS) limited to one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A private two-CPU Ray instance, started before any timing and shut down after the module."""
    import ray

    from benchmark.ray_session import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()
