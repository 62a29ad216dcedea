"""Measurement 5: where the quick suite's wall time goes.

``nmlbench run quick`` runs once (rounds=1, about 6-8 minutes) in a fresh work dir, so nothing
is reused. ``suite_profile.breakdown`` then splits the wall time by phase and, inside each
phase, into useful work (training steps, feature extraction, head fits, each summed and divided
by the concurrency) and overhead. The headline is the overhead share: everything that is not
useful work (publishing the leaderboard included), with a target of at most 15 %. Afterwards the
pieces of the "other" phase (imports, Ray start, MLflow store creation, planning) are timed one by
one in a fresh interpreter (each alone: the run opens the store while Ray starts).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import benchutil
import suite_profile

WORK_DIR = Path(os.environ.get("NMLBENCH_BENCH_QUICK_DIR", "/tmp/bench-quick"))
CONCURRENCY = 2  # the quick suite's ray.max_concurrent_trials (= CPUs here)
TARGET = 0.15


def _nmlbench() -> str:
    exe = Path(sys.executable).with_name("nmlbench")
    return str(exe) if exe.exists() else shutil.which("nmlbench") or "nmlbench"


#: The fixed steps that ``run_suite`` counts as "other", in its order, in a fresh interpreter
#: (so first imports are paid where the real run pays them). Prints seconds per step as JSON.
_OTHER_PHASE_SCRIPT = r"""
import json, sys, tempfile, time
t = {}
def step(name, fn):
    t0 = time.perf_counter(); out = fn(); t[name] = time.perf_counter() - t0; return out
step("import_ray_and_benchmark", lambda: __import__("benchmark.runner") and __import__("ray"))
from benchmark.config import check_data_available, load_suite
from benchmark.plan import make_plan
from benchmark.ray_session import init_ray
suite = step("load_suite", lambda: load_suite(sys.argv[1]))
step("check_data_available", lambda: check_data_available(suite))
d = tempfile.mkdtemp(prefix="bench-other-")
def tracker():
    from benchmark.tracking import Tracker
    return Tracker(f"sqlite:///{d}/mlflow.db", "quick")
tr = step("mlflow_import_and_new_sqlite_store", tracker)
step("ray_init", init_ray)
step("make_plan", lambda: make_plan(suite))
step("completed_keys", lambda: tr.completed_keys("fit"))
import ray; ray.shutdown()
print(json.dumps(t))
"""


def _other_phase_profile() -> dict[str, float]:
    """Seconds of each fixed step of ``run_suite``'s "other" phase (see the script above)."""
    proc = subprocess.run(
        [sys.executable, "-c", _OTHER_PHASE_SCRIPT, str(benchutil.REPO_ROOT / "suites" / "quick.yaml")],
        cwd=benchutil.REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_quick_suite_breakdown(benchmark):
    if WORK_DIR.exists():
        shutil.rmtree(WORK_DIR)
    WORK_DIR.mkdir(parents=True)
    log = WORK_DIR.parent / f"{WORK_DIR.name}.log"
    wall: list[float] = []

    def run_quick() -> None:
        t0 = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.run(
                [_nmlbench(), "run", "quick", "--work-dir", str(WORK_DIR)],
                cwd=benchutil.REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wall.append(time.perf_counter() - t0)
        assert proc.returncode == 0, f"nmlbench run quick failed; see {log}"

    benchmark.pedantic(run_quick, rounds=1, iterations=1)
    b = suite_profile.breakdown(WORK_DIR, CONCURRENCY, wall_seconds=wall[0])

    # Correctness: a complete fresh run (nothing reused, every fit ran).
    run = suite_profile.latest_run(WORK_DIR)
    assert run["pretrain_reused"] == 0 and not run["pretrain_failed"]
    assert run["fits_skipped"] == 0 and run["fits_failed"] == 0 and run["fits_run"] == run["fits_total"] > 0
    assert b["pretrain"]["jobs"] == run["pretrain_total"]

    b["other_phase_profile"] = _other_phase_profile()
    benchutil.record(
        benchmark,
        "quick_suite_breakdown",
        ratio=b["overhead_share"],
        target=TARGET,
        higher_is_better=False,
        times_s={"cli_wall": wall, **b.pop("phase_seconds")},
        what="share of the quick suite's wall time that is not training steps, feature extraction "
        "or head fits (summed / concurrency)",
        phase_other_share=b["phase_share"]["other"],
        **b,
    )
