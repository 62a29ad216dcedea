"""A third-party backbone family, really pip-installed, is found through its entry point.

``tests/plugins/nmlbench_toy_plugin`` is a separate distribution. It is installed with pip into
a temporary directory (offline: no index, no build isolation, setuptools from the venv) and a
fresh interpreter with that directory on PYTHONPATH must list and build it. A second, broken
distribution (its module does not exist, and it tries to shadow ``timm``) must only warn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import pip_install_plugin

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SRC = REPO / "tests" / "plugins" / "nmlbench_toy_plugin"

_SCRIPT = """
import json, warnings, torch
from PIL import Image
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from benchmark.backbones import create_backbone, list_backbones, format_backbones_table
    families = list_backbones()
    table = format_backbones_table()
bb = create_backbone({"family": "toy", "dim": 16, "image_size": 8, "seed": 3})
imgs = [Image.new("RGB", (28, 28), (v, v, v)) for v in (0, 128, 255)]
x = torch.stack([bb.transform(im) for im in imgs])
f = bb.encode(x)
try:
    create_backbone({"family": "broken"})
    unknown = None
except Exception as e:
    unknown = f"{type(e).__name__}: {e}"
print(json.dumps({"families": families, "table": table, "warnings": [str(w.message) for w in caught],
                  "input_shape": list(x.shape), "shape": list(f.shape), "dtype": str(f.dtype),
                  "identity": bb.identity, "feature_dim": bb.feature_dim,
                  "distinct_rows": len({tuple(r) for r in f.tolist()}), "unknown": unknown}))
"""


def _broken_distribution(site: Path) -> None:
    """A dist-info whose entry points point at a missing module and at a built-in name."""
    info = site / "broken_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[nmlbench.backbones]\nbroken = nmlbench_module_that_does_not_exist:factory\n"
        "timm = nmlbench_toy_plugin:create_toy_backbone\n"
    )


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = pip_install_plugin(PLUGIN_SRC, tmp_path_factory.mktemp("plugin"), timeout=120)
    assert (site / "nmlbench_toy_plugin" / "__init__.py").is_file()
    _broken_distribution(site)
    return site


def test_installed_plugin_is_listed_and_builds(plugin_site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(REPO)])}
    res = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])

    assert "toy" in out["families"]
    assert out["families"]["toy"].startswith("toy: fixed random projection")
    assert "[plugin: nmlbench-toy-plugin]" in out["families"]["toy"]
    assert "toy" in out["table"] and "plugin" in out["table"]
    assert out["input_shape"] == [3, 3, 8, 8]
    assert out["shape"] == [3, 16] and out["dtype"] == "torch.float32" and out["feature_dim"] == 16
    assert out["identity"] == "toy:proj16:img8:seed3" and out["distinct_rows"] == 3

    # the broken distribution warns by name and breaks nothing else
    assert "broken" not in out["families"]
    assert any("broken-toy" in w and "failed to load" in w for w in out["warnings"]), out["warnings"]
    assert any("shadow" in w and "timm" in w for w in out["warnings"]), out["warnings"]
    assert out["families"]["timm"].startswith("any timm architecture")
    assert out["unknown"].startswith("UnknownNameError") and "toy" in out["unknown"]


@pytest.mark.slow
def test_installed_plugin_is_used_by_a_suite_through_the_cli(plugin_site: Path, tmp_path: Path) -> None:
    """The newcomer's path: pip-installed plugin -> `nmlbench backbones` -> a suite that names it."""
    import yaml

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(REPO)])}
    env.pop("RAY_ADDRESS", None)
    nmlbench = str(Path(sys.executable).parent / "nmlbench")
    listed = subprocess.run([nmlbench, "backbones"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0 and "toy" in listed.stdout, listed.stdout + listed.stderr

    suite = {
        "name": "plugin-suite",
        "work_dir": str(tmp_path / "work"),
        "backbones": [{"family": "toy", "name": "toy-proj", "dim": 32, "image_size": 8, "seed": 1}],
        "downstream": {"id": ["sklearn-digits"], "heads": ["lp"], "max_train": 400},
    }
    path = tmp_path / "plugin-suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    run = subprocess.run([nmlbench, "run", str(path)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    row = next(line for line in run.stdout.splitlines() if line.startswith("toy-proj"))
    id_acc = float(row.split()[3])  # backbone, noise ("–": frozen), method, ID accuracy (%)
    # A random projection of 8x8 pixels is far above chance (10 %): ~88 % (LP on 400 rows, 359 test
    # rows, computed by hand); 30 % is a bound no round-off or near-tie in the L2 choice reaches.
    assert id_acc > 30.0
    from benchmark.config import load_suite
    from benchmark.tracking import Tracker

    s = load_suite(path, check_names=False)  # the toy family is registered in the subprocess only
    fits = Tracker(s.tracking.uri, s.tracking.experiment).runs_frame("fit")
    assert len(fits) == 1 and fits["backbone"][0] == "toy-proj"
    assert id_acc == round(100 * fits["test_accuracy"][0], 2)  # the printed number is the recorded fit's
