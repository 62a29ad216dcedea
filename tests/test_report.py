"""Report: tables equal ``leaderboard()``; every figure is a real PNG with content (``support.check_figure``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from support import check_figure, synthetic_runs

from benchmark.leaderboard import leaderboard
from benchmark.leaderboard_text import render
from benchmark.report import make_report

FIGURES = ("id_ood_vs_noise.png", "sve_vs_id.png", "lsvr_vs_ood.png", "spectra.png")


def test_report_writes_tables_matching_leaderboard_and_valid_figures(tmp_path):
    df = synthetic_runs()
    frozen = df[df.noise_ratio == 0.0].assign(backbone="mobilenet", noise_ratio=np.nan)
    df = pd.concat([df, frozen], ignore_index=True)
    spectra = {
        f"noise {r:g}": np.sort(np.random.default_rng(i).random(32))[::-1] ** (1 + r)
        for i, r in enumerate((0.0, 0.1, 0.3))
    }
    paths = make_report(df, tmp_path / "out", "synthetic", spectra=spectra)
    assert set(paths) == {"leaderboard.md", "leaderboard.csv", "claims.md", *FIGURES}
    assert "# Claims of the paper" in paths["claims.md"].read_text()
    lb = leaderboard(df)
    csv = pd.read_csv(paths["leaderboard.csv"])
    pd.testing.assert_frame_equal(
        csv.drop(columns=["noise_ratio"]), lb.drop(columns=["noise_ratio"]), check_dtype=False, rtol=1e-12
    )
    np.testing.assert_array_equal(csv.noise_ratio.isna(), lb.noise_ratio.isna())
    md = paths["leaderboard.md"].read_text()
    assert md.startswith("# Leaderboard: synthetic") and "never used for selection" in md
    assert render(lb, "markdown") in md
    # 2 backbones -> two panel columns: the accuracy figure is wider than a single-panel one.
    wide = check_figure(paths["id_ood_vs_noise.png"])
    single = check_figure(paths["sve_vs_id.png"])
    assert wide.shape[1] > single.shape[1]
    check_figure(paths["lsvr_vs_ood.png"])
    check_figure(paths["spectra.png"])


def test_report_without_spectra_or_runs_still_writes_every_file(tmp_path):
    paths = make_report(pd.DataFrame(), tmp_path, "empty")
    for name in FIGURES:
        check_figure(paths[name], data=False)  # a placeholder that says why, not a blank or broken file
    assert "Backbone" in paths["leaderboard.md"].read_text()


def test_report_from_mlflow_equals_report_from_the_frame(tmp_path):
    """Runs written through the Tracker and read back give the same leaderboard (typing survives)."""
    from benchmark.reporting.folder import make_report_from_tracking
    from benchmark.tracking import Tracker

    df = synthetic_runs()
    df = df[df.pretrain_seed < 2].reset_index(drop=True)  # 60 runs: enough for selection + intervals
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "synthetic")
    params = [
        "backbone",
        "noise_ratio",
        "head",
        "task",
        "task_kind",
        "pretrain_seed",
        "head_seed",
        "fraction",
        "lam",
        "depth",
    ]
    for i, row in df.iterrows():
        rec = row.to_dict()
        tracker.log_fit(
            {
                "key": f"fit{i:03d}",
                "params": {k: rec[k] for k in params},
                "metrics": {k: v for k, v in rec.items() if k not in params},
            }
        )
    for ratio in (0.0, 0.1):
        tracker.log_spectrum(
            {"backbone": "net", "noise_ratio": ratio, "pretrain_seed": 0},
            "a",
            np.linspace(2.0, 0.1, 16) ** (1 + 3 * ratio),
        )
    suite_file = tmp_path / "synthetic.yaml"
    suite_file.write_text("name: synthetic\n")
    written = make_report_from_tracking(
        uri, "synthetic", tmp_path / "report", "synthetic", html=True, suite_file=suite_file
    )
    assert sorted(p.name for p in written) == sorted(
        ["leaderboard.md", "leaderboard.csv", "claims.md", "report.html", "provenance.json", *FIGURES]
    )
    _check_provenance(tmp_path / "report", suite_file, uri, len(df))
    page = (tmp_path / "report" / "report.html").read_text()
    table = page.split('id="leaderboard">')[1].split("</table>")[0]
    assert table.count("<tr>") == len(leaderboard(df)) + 1  # header + one row per leaderboard row
    assert page.count('src="data:image/png;base64,') == len(FIGURES) and 'src="http' not in page
    csv = pd.read_csv(tmp_path / "report" / "leaderboard.csv")
    pd.testing.assert_frame_equal(csv, leaderboard(df), check_dtype=False, rtol=1e-12)
    assert set(Tracker(uri, "synthetic").load_spectra("a", pretrain_seed=0)) == {"net · noise 0%", "net · noise 10%"}
    check_figure(tmp_path / "report" / "spectra.png")


def test_pretrain_curves_draw_each_group_as_its_seeds_mean_with_a_band(tmp_path, monkeypatch) -> None:
    """Seeds of one backbone x noise group are one line (their mean) and a min-max band."""
    from types import SimpleNamespace

    import matplotlib.axes

    from benchmark.report import plot_pretrain_curves

    def rec(group: str, seed: int, fit: list[float]) -> SimpleNamespace:
        return SimpleNamespace(
            name=f"{group}-{seed}",
            group=group,
            params={"seed": seed},
            curves={"noisy_fit": list(enumerate(fit)), "global_batch": [(0, 128.0), (1, 128.0)]},
        )

    records = [
        rec("net @ 30%", 0, [0.1, 0.5, 0.9]),
        rec("net @ 30%", 1, [0.1, 0.3, 0.7]),
        rec("net @ 10%", 0, [0.0, 0.2, 0.4]),
    ]
    lines, bands = [], []
    plot, fill = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "plot",
        lambda ax, x, y, **kw: lines.append((kw["label"], list(y))) or plot(ax, x, y, **kw),
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "fill_between",
        lambda ax, x, lo, hi, **kw: bands.append((list(lo), list(hi))) or fill(ax, x, lo, hi, **kw),
    )
    check_figure(plot_pretrain_curves(records, tmp_path / "curves.png"))
    # one panel (bookkeeping such as global_batch is not drawn), one line per group, in percent
    assert lines == [("net @ 30% (2 seeds)", [10.0, 40.0, 80.0]), ("net @ 10%", [0.0, 20.0, 40.0])]
    assert bands == [([10.0, 30.0, 70.0], [10.0, 50.0, 90.0])]


def test_html_report_names_the_interval_units_shows_ranks_and_flags() -> None:
    """The HTML leaderboard says what its intervals are over, marks rows built on flagged fits and
    shows each head's mean rank with its bootstrap interval (the same numbers as the text board)."""
    from benchmark.report_html import render_html

    df = synthetic_runs()
    df["near_chance"] = np.where((df["head"] == "nmtune") & (df.noise_ratio == 0.1) & (df.pretrain_seed == 2), 1.0, 0.0)
    lb = leaderboard(df)
    page = render_html("synthetic", lb, {}, "# Claims\n", [])
    header = page.split('id="leaderboard">')[1].split("</thead>")[0]
    assert "ID acc (%) ± 95 % CI over pre-training seeds" in header
    chosen = lb[(lb["head"] == "nmtune") & (lb.noise_ratio == 0.1)].iloc[0]
    assert chosen.flagged > 0 and f"NMTune ⚠{int(chosen.flagged)}" in page
    ranks = page.split('id="ranks">')[1].split("</table>")[0]
    lp = lb[lb["head"] == "lp"].iloc[0]
    assert f"{lp.id_rank:.2f} [{lp.id_rank_low:.2f}, {lp.id_rank_high:.2f}]" in ranks
    assert ranks.count("<tr>") == 3  # header + LP + NMTune


def _check_provenance(folder, suite_file, uri: str, fits: int) -> None:
    """provenance.json names the commit, the suite file's hash, this machine and today's date."""
    import hashlib
    import subprocess
    from datetime import datetime, timezone
    from pathlib import Path

    from benchmark.provenance import read_provenance

    prov = read_provenance(folder)
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert prov["commit"] == head and isinstance(prov["dirty"], bool)
    assert prov["suite_sha256"] == hashlib.sha256(suite_file.read_bytes()).hexdigest()
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
    assert prov["machine"]["cpu_model"] == model and prov["machine"]["cores"] >= 1
    assert isinstance(prov["machine"]["cpu_family"], int)
    assert abs((datetime.now(timezone.utc) - datetime.fromisoformat(prov["date"])).total_seconds()) < 3600
    assert prov["tracking_uri"] == uri and prov["fits"] == fits
    assert prov["fit_code"] == {"unrecorded": fits}  # logged here by hand, not by a suite run: no commit stamp


def test_provenance_drops_credentials_from_the_store_uri(tmp_path) -> None:
    from benchmark.provenance import read_provenance, write_provenance

    write_provenance(
        tmp_path, suite="s", suite_file=None, tracking_uri="http://alice:secret@127.0.0.1:5000", experiment="s", fits=3
    )
    prov = read_provenance(tmp_path)
    assert (
        prov["tracking_uri"] == "http://127.0.0.1:5000" and "secret" not in (tmp_path / "provenance.json").read_text()
    )
    assert prov["suite_sha256"] is None
