"""A head, a noise kind and a metric from an outside package, through a whole suite (issue 24).

``tests/plugins/nmlbench_extra_plugin`` is pip-installed into a temporary directory (offline, as
``test_plugins.py`` installs the backbone plugin) and put on PYTHONPATH, nothing else: no edit to
``benchmark/``. A suite pre-trains a tiny CNN with the plugin's ``opposite`` label noise, fits the
built-in LP beside the plugin's ``cosine`` head, and the plugin's ``balanced_accuracy`` metric is
computed in the Ray workers, recorded with every fit in MLflow, a column of the leaderboard and of
the HTML report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import pip_install_plugin

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SRC = REPO / "tests" / "plugins" / "nmlbench_extra_plugin"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = pip_install_plugin(PLUGIN_SRC, tmp_path_factory.mktemp("extra-plugin"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.slow
def test_outside_head_noise_kind_and_metric_run_through_a_suite(plugin_env, tmp_path: Path) -> None:
    suite = {
        "name": "extension-points",
        "work_dir": str(tmp_path / "work"),
        "pretrain": [
            {
                "name": "cnn",
                "objective": "supervised",
                "corpus": "fashion-mnist",
                "arch": "test_resnet",
                "noise": {"kind": "opposite", "ratios": [0.0, 0.2]},
                "seeds": [0],
                "epochs": 1,
                "batch_size": 64,
                "lr": 0.003,
                "image_size": 32,
                "train_subset": 500,
            }
        ],
        "downstream": {
            "id": ["sklearn-digits"],
            "heads": ["lp", "cosine"],
            "max_train": 400,
            "hparams": {"epochs": 5, "batch_size": 64},
        },
    }
    path = tmp_path / "extension-points.yaml"
    path.write_text(yaml.safe_dump(suite))
    bin_dir = Path(sys.executable).parent
    run = subprocess.run(
        [str(bin_dir / "nmlbench"), "run", str(path)], capture_output=True, text=True, env=plugin_env, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    header = next(line for line in out.splitlines() if line.startswith("Backbone"))
    assert "bal. acc" in header  # the plugin metric's leaderboard column
    rows = [line.split() for line in out.splitlines() if line.startswith("cnn ")]
    assert {(r[1], r[2]) for r in rows} == {("0", "LP"), ("0.2", "LP"), ("0", "Cosine"), ("0.2", "Cosine")}

    # The noise record: exactly 20 % of each class moved half-way round the classes (the plugin
    # is installed in the subprocess only, so the records are read from the work dir's files).
    import numpy as np

    records = sorted((tmp_path / "work" / "pretrain").glob("*/noise.npz"))
    assert len(records) == 2
    flips = {}
    for rec in records:
        with np.load(rec) as z:
            flips[float(z["flipped"].mean())] = (z["clean_labels"], z["noisy_labels"], z["flipped"])
    assert sorted(flips)[0] == 0.0 and sorted(flips)[1] == pytest.approx(0.2, abs=0.01)
    clean, noisy, flipped = flips[sorted(flips)[1]]
    assert np.array_equal(noisy[flipped], (clean[flipped] + 5) % 10)
    assert np.array_equal(noisy[~flipped], clean[~flipped])

    # Every fit record in MLflow carries the metric (computed in the Ray workers from the entry point),
    # and the published leaderboard and the HTML report carry the column.
    from benchmark.tracking import TrackingReader

    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    reader = TrackingReader(uri, "extension-points")
    fits = reader.suite_fits("extension-points")
    assert len(fits) > 0 and set(fits["head"]) == {"lp", "cosine"}
    bal = fits["test_balanced_accuracy"].astype(float)
    acc = fits["test_accuracy"].astype(float)
    assert bal.notna().all() and ((bal > 0.1) & (bal <= 1.0)).all()
    assert (abs(bal - acc) < 0.05).all()  # sklearn-digits' test set is nearly balanced
    report_dir = tmp_path / "report"
    rep = subprocess.run(
        [str(bin_dir / "nmlbench"), "report", str(path), "--out", str(report_dir), "--html"],
        capture_output=True,
        text=True,
        env=plugin_env,
        timeout=600,
    )
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    assert "id_balanced_accuracy" in (report_dir / "leaderboard.csv").read_text().splitlines()[0]
    assert "bal. acc" in (report_dir / "report.html").read_text()
