"""Shared helpers of the performance benchmarks: machine description, ratio records, timing.

Why ratios: the machine is shared, so an absolute time says little; both sides of every
comparison are measured in the same run, back to back (interleaved where the cost allows),
and only their ratio is compared with a target. Speed targets are recorded (verdict ``met``),
never asserted: a missed target is a finding for ``results/performance.md``, not a test failure.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where records go; ``NMLBENCH_BENCH_DIR`` redirects them (``make gpu-check`` keeps its GPU runs apart).
RESULTS_DIR = Path(os.environ.get("NMLBENCH_BENCH_DIR") or REPO_ROOT / "results" / "bench")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` where absent)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: a ratio from a GPU box is not one from a laptop."""
    import numpy
    import torch

    cuda = torch.cuda.is_available()
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (no GPU)",
        "torch_threads": torch.get_num_threads(),
        # Other work on a shared machine inflates both sides of a ratio, not the ratio itself.
        "load_average_1_5_15": [round(v, 2) for v in load],
    }


_SCALING_SCRIPT = r"""
import time, torch
torch.set_num_threads(1)
from benchmark.probe import fit_and_evaluate
g = torch.Generator().manual_seed(0)
x = torch.randn(1600, 96, generator=g); y = torch.randint(0, 10, (1600,), generator=g)
fit_and_evaluate("nmtune", x, y, x[:400], y[:400], epochs=1, device="cpu")  # warm-up
t = time.perf_counter()
for _ in range(REPEATS):
    fit_and_evaluate("nmtune", x, y, x[:400], y[:400], epochs=15, batch_size=128, device="cpu")
print(time.perf_counter() - t)
"""


def parallel_scaling(repeats: int = 3) -> dict[str, float]:
    """Throughput of two concurrent single-threaded CPU workers relative to one.

    On a dedicated 2-core machine this is about 2; on a shared one it can fall to or below 1,
    and then no amount of concurrency (Tune trials, overlapped pre-training jobs) can pay off.
    The workload is the sweep's own (NMTune head fits), each in a fresh interpreter.
    """
    import subprocess
    import sys

    script = _SCALING_SCRIPT.replace("REPEATS", str(int(repeats)))

    def launch() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)

    def seconds(p: subprocess.Popen) -> float:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError("parallel-scaling probe failed")
        return float(out.strip().splitlines()[-1])

    solo = seconds(launch())
    pair = [launch(), launch()]
    pair_s = max(seconds(p) for p in pair)
    return {"solo_seconds": solo, "pair_seconds": pair_s, "aggregate_speedup_of_two": 2 * solo / pair_s}


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


class Stopwatch:
    """Collects wall times of named sides: ``with sw("baseline"): ...``."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    @contextmanager
    def __call__(self, side: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times.setdefault(side, []).append(time.perf_counter() - t0)

    def timed(self, side: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self(side):
            return fn(*args, **kwargs)

    def median(self, side: str) -> float:
        return median(self.times[side])


def verdict(ratio: float, target: float, higher_is_better: bool = True) -> bool:
    return ratio >= target if higher_is_better else ratio <= target


def record(
    benchmark: Any,
    name: str,
    *,
    ratio: float,
    target: float,
    higher_is_better: bool = True,
    times_s: dict[str, Any],
    what: str,
    **details: Any,
) -> dict[str, Any]:
    """Write ``results/bench/<name>.json`` and copy the headline into ``benchmark.extra_info``.

    ``ratio`` is the headline number compared with ``target`` (``>=`` when
    ``higher_is_better``, else ``<=``); ``details`` holds secondary ratios, correctness checks
    and parameters.
    """
    met = verdict(ratio, target, higher_is_better)
    out = {
        "name": name,
        "what": what,
        "ratio": round(float(ratio), 4),
        "target": f"{'>=' if higher_is_better else '<='} {target}",
        "met": bool(met),
        "times_s": _rounded(times_s),
        **_rounded(details),
        "machine": machine_info(),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    if benchmark is not None:
        benchmark.extra_info.update({"ratio": out["ratio"], "target": out["target"], "met": out["met"], "what": what})
        for k, v in details.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                benchmark.extra_info[k] = v
    return out


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.6g}")  # six significant digits: keeps 1e-9 errors visible
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj
