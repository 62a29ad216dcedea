"""Shared fixtures: one real MLflow store holding a small published study, built once per session.

The store is written through ``Tracker`` exactly as a sweep writes it (fits, pre-trainings with
per-epoch curves and noise records, spectra), then ``finish()`` publishes the leaderboard runs
and the suite run's artifacts. Tests that only read it share it; tests that change a store
build their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FIT_PARAMS = ["backbone", "noise_ratio", "method", "task", "task_kind", "pretrain_seed", "head_seed", "fraction",
              "lambda", "depth"]


@dataclass
class Study:
    """A published synthetic study in a SQLite MLflow store."""

    uri: str
    experiment: str
    root: Path
    fits: pd.DataFrame       # the fit records as logged (the shape runs_frame returns)


def synthetic_fits() -> pd.DataFrame:
    """80 fits: backbone "net" at 0 % / 10 % noise (ID + OOD tasks) and a frozen "mobilenet" (ID only)."""
    from tests.test_leaderboard import synthetic_runs

    df = synthetic_runs()
    df = df[df.pretrain_seed < 2].reset_index(drop=True)
    frozen = df[(df.noise_ratio == 0.0) & (df.task_kind == "id")].assign(
        backbone="mobilenet", noise_ratio=np.nan, pretrain_seed=0, head_seed=df.pretrain_seed,
        test_accuracy=lambda d: d.test_accuracy - 0.05)  # no ties with "net" when sorting
    return pd.concat([df, frozen], ignore_index=True)


def fit_records(df: pd.DataFrame, suite: str) -> list[dict]:
    out = []
    for i, row in df.reset_index(drop=True).iterrows():
        rec = row.to_dict()
        out.append({"key": f"fit{i:03d}", "params": {k: rec[k] for k in FIT_PARAMS},
                    "metrics": {k: v for k, v in rec.items() if k not in FIT_PARAMS}, "tags": {"suite": suite}})
    return out


def log_pretrainings(tracker, tmp: Path) -> None:
    """Two pre-training runs of "net" (0 % and 10 % noise) with curves and a noise record."""
    from benchmark.jobs import PretrainJob

    for ratio in (0.0, 0.1):
        job = PretrainJob(objective="supervised", corpus="fashion-mnist", arch="test_resnet", noise_ratio=ratio,
                          epochs=3, display="net")
        folder = tmp / job.key
        folder.mkdir(parents=True)
        np.savez(folder / "noise.npz", flipped=np.arange(100) < int(100 * ratio))
        (folder / "noise.json").write_text(json.dumps({"n": 100, "num_flipped": int(100 * ratio), "kind": "symmetric"}))
        history = [{"epoch": e, "loss": 2.0 / (e + 1) + ratio, "train_accuracy": 0.5 + 0.1 * e,
                    "clean_accuracy": 0.55 + 0.1 * e - ratio, "noisy_fit": 0.1 * e * ratio, "true_fit": 0.3 + 0.05 * e}
                   for e in range(3)]
        tracker.log_pretrain(job, {"metrics": history, "noise_path": folder / "noise.npz",
                                   "checkpoint_path": folder / "model.pt", "realised_ratio": ratio, "seconds": 4.0})


def build_study(root: Path, experiment: str = "synth") -> Study:
    from benchmark.tracking import Tracker, journal_path

    uri = f"sqlite:///{root / 'mlflow.db'}"
    df = synthetic_fits()
    tracker = Tracker(uri, experiment, suite=experiment, journal=journal_path(root, experiment))
    log_pretrainings(tracker, root / "pretrain")
    for rec in fit_records(df, experiment):
        tracker.log_fit(rec)
    for ratio in (0.0, 0.1):
        tracker.log_spectrum({"backbone": "net", "noise_ratio": ratio, "pretrain_seed": 0}, "a",
                             np.linspace(2.0, 0.1, 16) ** (1 + 3 * ratio))
    report = tracker.finish()
    assert report.pending == 0 and report.leaderboard_rows == 6
    return Study(uri, experiment, root, df)


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Study:
    """A published study shared by tests that only read it (do not write to it)."""
    return build_study(tmp_path_factory.mktemp("study"))
