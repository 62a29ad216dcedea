"""``make gpu-check`` on a machine without a GPU, and how it judges a GPU run's output."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    torch.cuda.is_available() or shutil.which("nvidia-smi") is not None,
    reason="this machine has a GPU: `make gpu-check` runs for real",
)
def test_without_a_gpu_it_says_so_and_exits_cleanly_writing_nothing(tmp_path):
    make = subprocess.run(
        ["make", "--no-print-directory", "gpu-check"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert make.returncode == 0 and "no NVIDIA GPU" in make.stdout, make.stdout + make.stderr
    out = tmp_path / "gpu.json"
    script = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert script.returncode == 0 and "no CUDA GPU" in script.stdout, script.stdout + script.stderr
    assert not out.exists()


def test_a_pipeline_run_passes_only_when_every_job_took_every_gpu_branch():
    check = _gpu_check().check_pipeline
    gpu_line = (
        "[nmlbench] resnet-gpu-n0-s0: device cuda:0, autocast bfloat16, channels-last, pinned stream input, "
        "process group nccl"
    )
    cpu_line = "[nmlbench] resnet-gpu-n30-s0: device cpu, autocast off, contiguous, stream input, process group gloo"
    ok, evidence = check(f"{gpu_line}\n{gpu_line.replace('n0', 'n30')}\nleaderboard\n", gpu=True)
    assert ok and not evidence["branches_missing"] and len(evidence["compute_lines"]) == 2
    ok, evidence = check(f"{gpu_line}\n{cpu_line}\nleaderboard\n", gpu=True)
    assert not ok
    assert set(evidence["branches_missing"]["resnet-gpu-n30-s0"]) == {
        "device cuda",
        "bfloat16",
        "channels-last",
        "pinned",
        "process group nccl",
    }
    assert not check(f"{gpu_line}\n", gpu=True)[0]  # the run never reached its leaderboard
    assert not check("leaderboard\n", gpu=True)[0]  # no job said what it ran on
