"""A reduced dress rehearsal of the paper suites: suites/paper-rehearsal.yaml, cut down, through
``nmlbench run`` on a miniature data root written in tmp (``write_rehearsal_root``).

The cut keeps what makes it the paper's code path: the same corpus names (ImageNet folders,
YFCC15M webdataset shards), two Ray Train workers per job streaming their shards with the
real-corpus recipe, downstream tasks read through the real loaders (a CIFAR pickle set, DTD's
folders and split files, the ImageNet variants group). It drops noise levels, epochs, tasks and
grid points, so one run costs two trainers and a few dozen head fits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def reduced_rehearsal(work: Path) -> dict:
    """suites/paper-rehearsal.yaml with one noise level per block, 2 epochs, 3 tasks, 3 heads."""
    suite = yaml.safe_load((REPO / "suites" / "paper-rehearsal.yaml").read_text())
    sup, clip = suite["pretrain"]
    sup["noise"]["ratios"], clip["noise"]["ratios"] = [0.3], [0.3]
    for block in (sup, clip):
        block["epochs"] = 2
    suite["downstream"].update(
        id=["cifar10", "dtd"],
        ood=["imagenet-variants"],
        heads=["lp", "mlp", "nmtune"],
        grid={"lam": [0.1], "depth": [1]},
        hparams={"preset": "paper", "epochs": 5, "batch_size": 32},
    )
    suite.update(name="paper-rehearsal-reduced", work_dir=str(work), tracking={"experiment": "paper-rehearsal-reduced"})
    return suite


def test_reduced_paper_rehearsal_trains_records_and_fits(tmp_path: Path) -> None:
    from benchmark.data.rehearsal import write_rehearsal_root
    from benchmark.tracking import Tracker

    root = tmp_path / "data"
    written = write_rehearsal_root(root, per_class=6)
    assert {"imagenet", "yfcc15m", "cifar10", "dtd", "imagenet-a"} <= set(written)
    work = tmp_path / "work"
    suite = reduced_rehearsal(work)
    path = tmp_path / "rehearsal.yaml"
    path.write_text(yaml.safe_dump(suite))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "nmlbench"),
            "run",
            str(path),
            "--data-root",
            str(root),
            "--tracking-uri",
            uri,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1400,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]

    summary = json.loads(max((work / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert summary["pretrain_total"] == 2 and summary["pretrain_failed"] == []
    # 2 backbones x 3 tasks x (lp + mlp + nmtune), all run, none failed
    assert summary["fits_total"] == 18 == summary["fits_run"] and summary["fits_failed"] == 0

    dones = [json.loads(p.read_text()) for p in sorted((work / "pretrain").glob("*/done.json"))]
    by_objective = {d["job"]["objective"]: d for d in dones}
    assert set(by_objective) == {"supervised", "clip"}
    for d in dones:
        m = d["metrics"]
        assert [e["epoch"] for e in m] == [0, 1]
        assert all(e["workers"] == 2 and e["input"] == "stream" for e in m)
        assert all(np.isfinite(e["loss"]) for e in m)
    sup, clip = by_objective["supervised"], by_objective["clip"]
    # The miniature ImageNet has 10 classes x 6 images: 30 % of each class's labels flipped.
    with np.load(work / "pretrain" / sup["key"] / "noise.npz") as rec:
        assert len(rec["flipped"]) == 60 and int(rec["flipped"].sum()) == 20  # round(0.3 * 6) = 2 of each class
        assert (rec["noisy_labels"][rec["flipped"]] != rec["clean_labels"][rec["flipped"]]).all()
    assert {"noisy_fit", "true_fit", "unflipped_accuracy"} <= set(sup["metrics"][-1])
    # YFCC15M is unlabelled: captions come from its shards and 30 % of the pairs are swapped.
    with np.load(work / "pretrain" / clip["key"] / "noise.npz") as rec:
        n = len(rec["mismatched"])
        assert n == len(rec["caption_source"]) == 240 and int(rec["mismatched"].sum()) == round(0.3 * n)
        assert (rec["clean_labels"] == -1).all() and "captions" not in rec.files
    assert clip["noise"]["captions"] == "corpus"
    assert {"matched_rank", "mismatched_rank"} <= set(clip["metrics"][-1])

    tracker = Tracker(uri, "paper-rehearsal-reduced")
    fits = tracker.runs_frame("fit")
    assert len(fits) == 18 and set(fits["task"]) == {"cifar10", "dtd", "imagenet-variants"}
    assert fits["test_accuracy"].astype(float).between(0, 1).all()
    assert len(tracker.runs_frame("pretrain")) == 2
