"""``make gpu-check``: run every CUDA branch of the pipeline once, on one GPU, in under 8 minutes.

The CPU machines that build and test this project have no GPU, so these branches never run in
``make test``; this script is what a session (or a user) with a GPU runs to exercise them:

1. ``pipeline``: ``nmlbench run suites/gpu-check.yaml`` on a fresh miniature data root
   (``nmlbench rehearsal-root``): pre-training under Ray Train on one GPU worker (NCCL process
   group, bf16 autocast, channels-last, a streaming DataLoader with pinned memory), features
   extracted on the GPU, the heads fitted on it. Each pre-training job prints the branches it took
   (``worker._compute_line``); the step passes only when every job names ``cuda``, ``bfloat16``,
   ``channels-last``, ``pinned`` and ``nccl``, and the run ends with its leaderboard.
2. ``head_batch``: ``benchmarks/test_bench_head_batch.py`` on the GPU: the quick suite's head
   grid for one pair, batched vs one at a time, with the speed-up (its record, copied here).
3. ``quick``: the default suite end to end with the GPU visible to Ray.

Writes ``results/bench/gpu.json`` (machine, each step's outcome, seconds and evidence) and exits
non-zero when a step failed. Without a CUDA GPU it says so and exits 0 at once, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "bench" / "gpu.json"
#: Seconds each step may take: together under the 8 minutes the check is promised in.
BUDGET = {"pipeline": 170, "head_batch": 110, "quick": 190}
#: What every pre-training job's compute line must name on a GPU.
GPU_BRANCHES = ("device cuda", "bfloat16", "channels-last", "pinned", "process group nccl")


def cuda_device() -> str | None:
    """The first CUDA device's name, or None (torch missing or no GPU)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _run(name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> dict[str, Any]:
    """Run one step's command under its time budget; keep its output in ``log_dir``."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=BUDGET[name])
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        rc = 124
    seconds = time.perf_counter() - t0
    (log_dir / f"{name}.log").write_text(out)
    print(f"== {name}: exit {rc} after {seconds:.0f} s (log {log_dir / (name + '.log')})", flush=True)
    return {"exit": rc, "seconds": round(seconds, 1), "output": out}


def check_pipeline(out: str, gpu: bool) -> tuple[bool, dict[str, Any]]:
    """Every job's compute line names the GPU branches (on a GPU), and the leaderboard printed."""
    lines = re.findall(r"\[nmlbench\] (\S+): (device .*)", out)
    missing = {job: [b for b in GPU_BRANCHES if b not in line] for job, line in lines} if gpu else {}
    ok = bool(lines) and not any(missing.values()) and "leaderboard" in out.lower()
    return ok, {
        "compute_lines": [f"{job}: {line}" for job, line in lines],
        "branches_missing": {k: v for k, v in missing.items() if v},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="pipeline,head_batch,quick", help="comma-separated steps")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    device = cuda_device()
    if device is None:
        print(
            "gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing run. "
            "The CUDA paths stay untested here: run `make gpu-check` on a machine with one GPU."
        )
        return 0
    bindir = Path(sys.executable).parent
    nmlbench = str(bindir / "nmlbench") if (bindir / "nmlbench").exists() else shutil.which("nmlbench") or "nmlbench"
    work = Path(tempfile.mkdtemp(prefix="nmlbench-gpu-check-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NMLBENCH_BENCH_DIR": str(work / "bench")}
    steps = [s for s in args.steps.split(",") if s]
    report: dict[str, Any] = {
        "device": device,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "steps": {},
    }
    sys.path.insert(0, str(Path(__file__).parent))
    from benchutil import machine_info

    report["machine"] = machine_info()
    uri = f"sqlite:///{work / 'mlflow.db'}"
    if "pipeline" in steps:
        root = work / "root"
        subprocess.run([nmlbench, "rehearsal-root", str(root)], cwd=REPO, env=env, check=True, capture_output=True)
        r = _run(
            "pipeline",
            [
                nmlbench,
                "run",
                "suites/gpu-check.yaml",
                "--data-root",
                str(root),
                "--work-dir",
                str(work / "pipeline"),
                "--tracking-uri",
                uri,
            ],
            env,
            work,
        )
        ok, evidence = check_pipeline(r["output"], gpu=True)
        report["steps"]["pipeline"] = {"ok": ok and r["exit"] == 0, "seconds": r["seconds"], **evidence}
    if "head_batch" in steps:
        r = _run(
            "head_batch",
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-s",
                "benchmarks/test_bench_head_batch.py",
            ],
            env,
            work,
        )
        rec_file = work / "bench" / "head_fits_batched_vs_one_at_a_time.json"
        rec = json.loads(rec_file.read_text()) if rec_file.is_file() else {}
        report["steps"]["head_batch"] = {
            "ok": r["exit"] == 0 and bool(rec),
            "seconds": r["seconds"],
            "ratio": rec.get("ratio"),
            "record": rec,
        }
    if "quick" in steps:
        r = _run(
            "quick", [nmlbench, "run", "quick", "--work-dir", str(work / "quick"), "--tracking-uri", uri], env, work
        )
        ok, evidence = check_pipeline(r["output"], gpu=False)  # the quick suite pre-trains on CPU workers
        report["steps"]["quick"] = {"ok": ok and r["exit"] == 0, "seconds": r["seconds"], **evidence}
    report["ok"] = all(s["ok"] for s in report["steps"].values())
    report["seconds"] = round(sum(s["seconds"] for s in report["steps"].values()), 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(
        json.dumps(
            {k: {kk: vv for kk, vv in v.items() if kk != "record"} for k, v in report["steps"].items()}, indent=1
        )
    )
    print(
        f"gpu-check: {'passed' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s -> {args.out}; "
        f"logs in {work}"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
