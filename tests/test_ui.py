"""Checked in a real browser: headless Chromium over a real ``mlflow server`` and the HTML report.

The shared published study is served by ``mlflow server`` on a free 127.0.0.1 port; the
experiment's leaderboard view must list every leaderboard run, best ID accuracy first, the study
view must show the run tree once expanded, and the pages must log no error of their own (the stock MLflow
3.17 UI's ``users/current`` 404 aside). The
HTML report must show the table, sort it on a header click, decode every inlined figure, load
nothing from outside and log no error. Screenshots land in pytest's tmp folder.
"""

from __future__ import annotations

import pytest

from benchmark.browser import Chromium
from benchmark.report_html import write_html_report
from benchmark.tracking import TrackingReader
from benchmark.ui_check import MlflowServer, check_html_report, check_leaderboard_view, check_study_view

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    with Chromium(width=1600, height=1000) as b:
        yield b


def test_mlflow_ui_shows_the_leaderboard_and_the_run_tree(study, browser, tmp_path):
    reader = TrackingReader(study.uri, study.experiment)
    with MlflowServer(study.uri, artifacts=tmp_path / "artifacts", log=tmp_path / "server.log") as server:
        board = check_leaderboard_view(browser, server.url, reader, study.experiment, tmp_path / "leaderboard.png")
        tree = check_study_view(browser, server.url, reader, study.experiment, tmp_path / "study.png")
    assert board.ok, board.problems
    assert "LP · mobilenet (frozen)" in board.visit.text and "NMTune · net @ 10%" in board.visit.text
    assert "id_acc" in board.visit.text and "Model training" in board.visit.text
    assert (tmp_path / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tree.ok, tree.problems
    for name in ("net @ 0%", "net @ 10%", "mobilenet (frozen)", "pretrain p0 · fashion-mnist"):
        assert name in tree.visit.text, name


def test_html_report_renders_sorts_and_is_self_contained(study, browser, tmp_path):
    reader = TrackingReader(study.uri, study.experiment)
    page = write_html_report(reader, study.experiment, tmp_path / "report.html")
    check = check_html_report(browser, page, tmp_path / "report.png", expected_rows=6)
    assert check.ok, check.problems
    state = check.visit.value
    assert state["images"] == state["decoded"] == 5  # the 4 study figures and the pre-training curves
    text = check.visit.text
    for needle in (
        "Leaderboard",
        "Claims",
        "noise records",
        "How the numbers were chosen",
        "no grid ×6",
        "fashion-mnist",
        "flipped samples fitted",
    ):
        assert needle in text, needle
