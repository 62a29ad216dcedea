"""Helpers shared by several test modules (imported as ``support``: pytest puts tests/ on the path).

Kept out of the test modules themselves so that no test module imports another, which breaks
under a bare ``pytest`` (tests/ is not a package).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

ID_TASKS, OOD_TASKS = ("a", "b"), ("o",)
GRID = {"lp": [(None, None)], "nmtune": [(0.01, 1), (0.01, 2), (0.1, 1), (0.1, 2)]}


def synthetic_runs() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for noise, method, task, ps, (lam, depth) in (
        (n, m, t, s, hp)
        for n in (0.0, 0.1)
        for m in GRID
        for t in ID_TASKS + OOD_TASKS
        for s in (0, 1, 2)
        for hp in GRID[m]
    ):
        val = round(float(rng.uniform(0.5, 0.9)), 4)
        test = round(float(rng.uniform(0.5, 0.9)), 4)
        rows.append({
            "backbone": "net", "noise_ratio": noise, "method": method, "task": task,
            "task_kind": "ood" if task in OOD_TASKS else "id", "pretrain_seed": ps,
            "head_seed": 0, "fraction": 1.0, "lam": lam, "depth": depth,
            "val_accuracy": val, "test_accuracy": test,
            "test_macro_f1": round(test - 0.01, 4),
            "test_sve": round(float(rng.uniform(3, 5)), 4), "test_lsvr": round(float(rng.uniform(0.05, 0.2)), 4),
            "test_sve_raw": 4.0 + noise, "test_lsvr_raw": 0.2 - noise,
        })
    df = pd.DataFrame(rows)
    trap = (df.noise_ratio == 0.0) & (df.method == "nmtune") & (df.task == "a") & (df.pretrain_seed == 0)
    # Best test accuracy, worst validation: must never be chosen.
    df.loc[trap & (df["lam"] == 0.1) & (df.depth == 2), ["val_accuracy", "test_accuracy"]] = [0.10, 0.99]
    # A validation tie between (0.01, 2) and (0.1, 1): the smaller lambda wins.
    df.loc[trap & (df["lam"] == 0.01) & (df.depth == 2), ["val_accuracy", "test_accuracy"]] = [0.95, 0.61]
    df.loc[trap & (df["lam"] == 0.1) & (df.depth == 1), ["val_accuracy", "test_accuracy"]] = [0.95, 0.77]
    return df


def write_imagenet_folder(root, images: np.ndarray, labels: np.ndarray, *, size: int | None = None,
                          quality: int = 90) -> list[str]:
    """Write ``images`` (uint8 [N, H, W] or [N, H, W, 3]) as JPEG files in ImageNet's training
    layout, ``<root>/imagenet/train/<wnid>/<i>.JPEG`` (wnid ``n%08d`` of the label), optionally
    resized to ``size`` pixels a side; returns the wnids (sorted = class order)."""
    from pathlib import Path

    from PIL import Image

    top = Path(root) / "imagenet" / "train"
    wnids = [f"n{c:08d}" for c in range(int(labels.max()) + 1)]
    for w in wnids:
        (top / w).mkdir(parents=True, exist_ok=True)
    for i, (im, y) in enumerate(zip(images, labels)):
        img = Image.fromarray(np.asarray(im, dtype=np.uint8)).convert("RGB")
        if size is not None:
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        img.save(top / wnids[int(y)] / f"{i:07d}.JPEG", quality=quality)
    return wnids


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_port_flags(*, head: bool) -> list[str]:
    """Every listening port of a ``ray start`` node, explicit and free: a second Ray on the
    machine (another test, a developer's session) holds the defaults, e.g. the agent's 52365."""
    flags = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
    if head:
        flags.append(f"--ray-client-server-port={free_port()}")
    return flags


def stop_ray_processes(marks: Sequence[str], temp_dir: str | None = None) -> None:
    """Stop the Ray processes whose command line holds one of ``marks`` (a private temp dir, a
    GCS address), and only those; then remove ``temp_dir``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = []
        ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
        for line in ps.stdout.splitlines():
            pid, _, args = line.strip().partition(" ")
            if any(m in args for m in marks) and int(pid) != os.getpid():
                pids.append(int(pid))
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if not pids:
            break
        time.sleep(3)
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)
