"""End to end through the CLI, with the real things: Ray (a head on 127.0.0.1) and MLflow.

- `nmlbench submit --wait` ships a tiny suite to a Ray head as a job; its rows come back from MLflow.
- A sweep interrupted with Ctrl-C and re-run does only the missing fits; MLflow holds no duplicates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import free_port, stop_ray_processes

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _tiny_suite(tmp: Path, name: str, *, pretrain: bool, fits_per_trial: int = 4) -> Path:
    suite = {
        "name": name,
        "work_dir": str(tmp / "work"),
        "backbones": []
        if pretrain
        else [
            {"family": "timm", "arch": "test_resnet", "image_size": 28, "seed": 0, "name": "test_resnet (random init)"}
        ],
        "downstream": {
            "id": ["sklearn-digits"],
            "ood": ["digits-from-fonts"],
            "heads": ["lp", "mlp", "nmtune"],
            "grid": {"lam": [0.01, 0.1], "depth": [1]},
            "seeds": [0, 1],
            "fractions": [1.0],
            "max_train": 300,
            "hparams": {"epochs": 4, "batch_size": 64, "preset": "paper"},
        },
        "selection": {"split": "val", "val_fraction": 0.2},
        "tracking": {"experiment": name},
        "ray": {"fits_per_trial": fits_per_trial},
    }
    if pretrain:
        suite["pretrain"] = [
            {
                "name": "sup",
                "objective": "supervised",
                "corpus": "fashion-mnist",
                "arch": "test_resnet",
                "noise": {"kind": "symmetric", "ratios": [0.2]},
                "seeds": [0],
                "epochs": 1,
                "batch_size": 64,
                "image_size": 28,
                "train_subset": 512,
            }
        ]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def _stop_head(ray_tmp: str, gcs_port: int) -> None:
    """Stop the processes of the head this test started, and only those."""
    stop_ray_processes((ray_tmp, f"--gcs-address=127.0.0.1:{gcs_port}", f"127.0.0.1:{gcs_port}"), ray_tmp)


def _finished_fits(uri: str, experiment: str):
    from benchmark.tracking import TrackingReader

    return TrackingReader(uri, experiment).runs_frame("fit")


def test_submit_to_a_real_ray_head_and_read_rows_back(tmp_path: Path) -> None:
    suite = _tiny_suite(tmp_path, "submitted", pretrain=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    gcs, dash = free_port(), free_port()
    env = _env()
    # A short private temp dir: Ray's socket paths must stay under 108 bytes, and it lets the
    # test stop exactly this head (``ray stop`` would stop every Ray on the machine).
    ray_tmp = tempfile.mkdtemp(prefix="nmlray", dir="/tmp")
    start = subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            f"--temp-dir={ray_tmp}",
            "--disable-usage-stats",
            # every listening port explicit: a second Ray on the machine (another
            # test, a developer's session) holds the defaults, e.g. the agent's 52365
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        out = subprocess.run(
            [
                str(BIN / "nmlbench"),
                "submit",
                str(suite),
                "--address",
                f"http://127.0.0.1:{dash}",
                "--wait",
                "--tracking-uri",
                uri,
                "--work-dir",
                str(tmp_path / "work"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert out.returncode == 0, (out.stdout[-4000:], out.stderr[-4000:])
        assert "SUCCEEDED" in out.stdout
    finally:
        _stop_head(ray_tmp, gcs)
    frame = _finished_fits(uri, "submitted")
    # 1 pre-trained backbone x 2 tasks x (lp + mlp + 2 nmtune) x 2 seeds
    assert len(frame) == 16
    # One trainer: no slot is free while pre-training goes on, both pairs are extracted after it.
    (summary,) = [json.loads(p.read_text()) for p in (tmp_path / "work" / "runs").glob("*.json")]
    assert (summary["pairs_extracted"], summary["pairs_extracted_early"]) == (2, 0)
    assert set(frame["task"]) == {"sklearn-digits", "digits-from-fonts"}
    assert set(frame["noise_ratio"].astype(float)) == {0.2}
    assert frame["key"].is_unique
    # The job ran the plan of the suite file: every planned fit, on its task's planned rows.
    from benchmark.config import load_suite
    from benchmark.plan import make_plan

    plan = make_plan(load_suite(suite).override(work_dir=tmp_path / "work"))
    assert set(frame["key"]) == {f.key for f in plan.fits}
    rows = {t.name: len(t.train.indices) for t in plan.tasks}
    assert (frame["train_rows"] == frame["task"].map(rows)).all()
    ident = frame[frame["task"] == "sklearn-digits"]
    assert (ident["test_accuracy"] == ident["test.accuracy"]).all()
    ood = frame[frame["task"] == "digits-from-fonts"]  # tested on mnist-5k and sklearn-digits
    # The same float64 mean of two values, recomputed: at most an ulp apart.
    np.testing.assert_allclose(
        ood["test_accuracy"], (ood["mnist-5k.accuracy"] + ood["sklearn-digits.accuracy"]) / 2, rtol=1e-12
    )


def test_features_start_in_the_slot_the_first_trainer_list_frees(tmp_path: Path) -> None:
    """Three pre-trainings on two slots are two trainer lists (two jobs and one): the first list
    to end offers its slot while the other still trains, and the runner extracts its backbones'
    pairs there (2 tasks each); the rest after the stage. Every pair and fit is still there once."""
    path = _tiny_suite(tmp_path, "early", pretrain=True)
    suite = yaml.safe_load(path.read_text())
    suite["pretrain"][0]["noise"]["ratios"] = [0.0, 0.1, 0.2]
    path.write_text(yaml.safe_dump(suite))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        [str(BIN / "nmlbench"), "run", str(path), "--tracking-uri", uri],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    (summary,) = [json.loads(p.read_text()) for p in (tmp_path / "work" / "runs").glob("early-*.json")]
    assert summary["pairs_extracted"] == 3 * 2
    assert summary["pairs_extracted_early"] in (2, 4)  # the pairs of the list that ended first
    assert f"{summary['pairs_extracted_early']} started during pre-training" in out.stdout
    frame = _finished_fits(uri, "early")
    assert len(frame) == 3 * 2 * (1 + 1 + 2) * 2 and frame["key"].is_unique
    assert set(frame["noise_ratio"].astype(float)) == {0.0, 0.1, 0.2}


def test_interrupted_sweep_resumes_only_missing_fits(tmp_path: Path) -> None:
    suite = _tiny_suite(tmp_path, "resumed", pretrain=False, fits_per_trial=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [str(BIN / "nmlbench"), "run", str(suite), "--tracking-uri", uri]
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    from benchmark.tracking import TrackingReader

    tracker = None
    done_at_interrupt = 0
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if tracker is None and (tmp_path / "mlflow.db").exists():
                try:
                    tracker = TrackingReader(uri, "resumed")  # read-only: never races the run creating the store
                except Exception:
                    continue
            if tracker is not None and len(tracker.completed_keys("fit")) >= 3:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the middle of the sweep
                break
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = proc.stdout.read()
    assert tracker is not None, output[-3000:]
    done_at_interrupt = len(TrackingReader(uri, "resumed").completed_keys("fit"))
    total = 2 * (1 + 1 + 2) * 2
    assert 3 <= done_at_interrupt < total, f"the interrupt came too late to test resuming:\n{output[-3000:]}"

    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    runs = sorted((tmp_path / "work" / "runs").glob("resumed-*.json"))
    summary = json.loads(runs[-1].read_text())
    assert summary["fits_total"] == total
    assert summary["fits_skipped"] == done_at_interrupt
    assert summary["fits_run"] == total - done_at_interrupt
    frame = _finished_fits(uri, "resumed")
    assert len(frame) == total
    assert frame["key"].is_unique

    # a third run does nothing at all
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0
    summary = json.loads(sorted((tmp_path / "work" / "runs").glob("resumed-*.json"))[-1].read_text())
    assert summary["fits_run"] == 0 and summary["fits_skipped"] == total
    assert len(_finished_fits(uri, "resumed")) == total
