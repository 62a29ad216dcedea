"""The layers hold: import-linter's contracts (``.importlinter``) pass, and would catch a breach.

Contracts: the science core (noise, spectrum, metrics, heads, probe) imports neither Ray nor
MLflow; tracking imports no reporting; nothing imports a layer above its own (the order is in
``.importlinter`` and docs/architecture.md, "Layers"). Alone: ``.venv/bin/lint-imports``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(where: Path) -> subprocess.CompletedProcess:
    # lint-imports reads .importlinter and finds `benchmark` in the working directory; no cache
    # folder is written into the checkout.
    return subprocess.run([str(LINT), "--no-cache"], cwd=where, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Contracts: 3 kept, 0 broken." in res.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    """Tracking importing the report (what ``tracking/publish.py`` did) fails two contracts."""
    shutil.copytree(ROOT / "benchmark", tmp_path / "benchmark", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    layout = tmp_path / "benchmark" / "tracking" / "layout.py"
    layout.write_text(layout.read_text() + "\n\ndef _upward():\n    from benchmark.report import make_report\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert "Tracking imports no reporting BROKEN" in res.stdout and "Nothing imports upward BROKEN" in res.stdout
    assert "benchmark.tracking is not allowed to import benchmark.report" in res.stdout
    assert "benchmark.tracking.layout -> benchmark.report" in res.stdout
