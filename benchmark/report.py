"""A study's report: the leaderboard as Markdown and CSV, and the four figures of the paper's story.

- ``id_ood_vs_noise.png``: ID and OOD accuracy against pre-training noise ratio, a line per head
  (LP / MLP / NMTune) with 95 % error bars, one column of panels per backbone (claims 1, 2, 4).
- ``sve_vs_id.png`` / ``lsvr_vs_ood.png``: the spectral metric of the *frozen* features against
  downstream accuracy, points labelled by noise ratio (claim 3).
- ``spectra.png``: normalised singular value spectra, one line per label (e.g. per noise ratio).
- ``pretrain_curves.png`` (HTML report): per-epoch pre-training metrics, one line per job.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never through
pyplot, so making a report changes no global plotting state and needs no display.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from benchmark.claims import claims_markdown
from benchmark.comparisons import MIN_HEADS, comparisons_markdown, distinct_heads
from benchmark.heads import head_label, head_order, plot_style
from benchmark.leaderboard import leaderboard
from benchmark.leaderboard_text import render

SELECTION_NOTE = (
    "Head hyper-parameters (the suite's grid: NMTune's lam, the MLP depth ...) are chosen per task and seed "
    "on a validation split carved "
    "from the downstream training data; the test set is never used for selection. Accuracy and "
    "macro-F1 are means over tasks (%), then over units of replication with a 95 % Student-t interval "
    "(± half-width, none when n = 1): the unit is the pre-training seed (head seeds averaged inside it, a "
    "deterministic head such as the LP counted once); a frozen backbone's unit is the head seed. SVE is of "
    "head features on ID tasks, LSVR on OOD tasks; 'raw' columns are of the frozen features. Under the "
    "table: each head's mean rank over the (backbone, noise ratio) cells with a bootstrap interval."
)


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (4.2, 3.3)) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def _empty(path: Path, message: str) -> Path:
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()
    fig.savefig(path, dpi=110)
    return path


def _full_data(lb: pd.DataFrame) -> pd.DataFrame:
    """Figures show the full-data rows when the leaderboard also holds few-shot fractions."""
    if "fraction" in lb.columns:
        return lb[lb["fraction"] == lb["fraction"].max()]
    return lb


def _heads(df: pd.DataFrame) -> list[str]:
    return sorted(df["head"].dropna().unique(), key=head_order)


def _lines(part: pd.DataFrame) -> list[tuple[str, float, pd.DataFrame]]:
    """(head, downstream label-noise ratio, its rows by pre-training noise): one line each; the
    label-noise ratio is 0.0 on boards without that axis."""
    out = []
    for head in _heads(part):
        rows = part[part["head"] == head]
        ratios = rows["label_noise_ratio"] if "label_noise_ratio" in rows.columns else pd.Series(0.0, rows.index)
        for ratio in sorted(ratios.fillna(0.0).unique()):
            out.append((head, float(ratio), rows[ratios.fillna(0.0) == ratio].sort_values("noise_ratio")))
    return out


def plot_accuracy_vs_noise(lb: pd.DataFrame, path: Path) -> Path:
    """Rows ID / OOD, one column per backbone, a line per head with 95 % error bars."""
    lb = _full_data(lb)
    backbones = list(dict.fromkeys(lb["backbone"]))
    if not backbones:
        return _empty(path, "no fit runs yet")
    fig, axes = _figure(len(backbones), 2)
    for j, backbone in enumerate(backbones):
        part = lb[lb["backbone"] == backbone]
        unknown = part["noise_ratio"].isna().all()
        for i, (col, label) in enumerate((("id_acc", "ID accuracy (%)"), ("ood_acc", "OOD accuracy (%)"))):
            ax = axes[i, j]
            for head, label_noise, rows in _lines(part):
                x = np.zeros(len(rows)) if unknown else rows["noise_ratio"].to_numpy(float) * 100
                y = rows[col].to_numpy(float) * 100
                err = np.nan_to_num(rows[f"{col}_ci"].to_numpy(float) * 100)
                color, marker = plot_style(head)
                style = "-" if not label_noise else "--"
                label = head_label(head) + (f" · labels {label_noise * 100:g}% noisy" if label_noise else "")
                ax.errorbar(x, y, yerr=err, color=color, marker=marker, ls=style, capsize=3, label=label)
            ax.set_ylabel(label)
            if unknown:  # a frozen third-party backbone: one point per head, no noise axis
                ax.set_xticks([0.0], ["as released"])
                ax.set_xlim(-1.0, 1.0)
                ax.set_xlabel("pre-training noise: unknown")
            else:
                ax.set_xlabel("pre-training noise ratio (%)")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(str(backbone))
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def plot_spectral_vs_accuracy(lb: pd.DataFrame, path: Path, metric: str, acc: str, xlabel: str, ylabel: str) -> Path:
    """Frozen-feature spectral metric (x) against head accuracy (y), labelled by noise ratio."""
    lb = _full_data(lb)
    data = lb.dropna(subset=[metric, acc])
    if data.empty:
        return _empty(path, f"no runs with both {metric} and {acc}")
    fig, axes = _figure(size=(5.2, 4.0))
    ax = axes[0, 0]
    colors = {b: f"C{k % 10}" for k, b in enumerate(dict.fromkeys(data["backbone"]))}
    for (backbone, head), part in data.groupby(["backbone", "head"], sort=False):
        _, marker = plot_style(head)
        ax.scatter(
            part[metric],
            part[acc] * 100,
            color=colors[backbone],
            marker=marker,
            label=f"{backbone} · {head_label(head)}",
        )
        for _, r in part.iterrows():
            if pd.notna(r["noise_ratio"]):
                ax.annotate(
                    f"{r['noise_ratio'] * 100:g}%",
                    (r[metric], r[acc] * 100),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def plot_spectra(spectra: Mapping[str, np.ndarray] | None, path: Path) -> Path:
    """Normalised singular values ``s_i / sum_j s_j`` against rank, log scale, one line per label."""
    if not spectra:
        return _empty(path, "no spectra logged\n(Tracker.log_spectrum)")
    fig, axes = _figure(size=(5.2, 4.0))
    ax = axes[0, 0]
    for label, values in spectra.items():
        s = np.sort(np.asarray(values, dtype=np.float64).ravel())[::-1]
        if s.sum() <= 0:
            continue
        ax.plot(np.arange(1, len(s) + 1), s / s.sum(), label=str(label))
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("rank i")
    ax.set_ylabel(r"normalised singular value $s_i / \sum_j s_j$")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def make_report(
    df: pd.DataFrame,
    out_dir: str | Path,
    suite_name: str,
    spectra: Mapping[str, np.ndarray] | None = None,
    *,
    board: pd.DataFrame | None = None,
    claims: str | None = None,
) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.csv, claims.md and the four figures; return their paths by name.

    With at least ``MIN_HEADS`` distinct heads (a contenders suite) also ``comparisons.md``:
    each head against the LP and the best head per cell, paired (``benchmark.comparisons``).

    ``df`` is the fit-runs frame (``TrackingReader.suite_fits``); ``spectra`` is optional
    ``{label: singular values}`` (``TrackingReader.load_spectra``). ``board`` (``leaderboard(df)``)
    and ``claims`` (``claims_markdown(df, suite_name)``) are reused when the caller has them.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lb = leaderboard(df) if board is None else board
    paths = {
        "leaderboard.md": out / "leaderboard.md",
        "leaderboard.csv": out / "leaderboard.csv",
    }
    paths["leaderboard.md"].write_text(f"# Leaderboard: {suite_name}\n\n{SELECTION_NOTE}\n\n{render(lb, 'markdown')}")
    paths["leaderboard.csv"].write_text(render(lb, "csv"))
    paths["id_ood_vs_noise.png"] = plot_accuracy_vs_noise(lb, out / "id_ood_vs_noise.png")
    paths["sve_vs_id.png"] = plot_spectral_vs_accuracy(
        lb, out / "sve_vs_id.png", "sve_raw", "id_acc", "SVE of frozen features (ID tasks)", "ID accuracy (%)"
    )
    paths["lsvr_vs_ood.png"] = plot_spectral_vs_accuracy(
        lb, out / "lsvr_vs_ood.png", "lsvr_raw", "ood_acc", "LSVR of frozen features (OOD tasks)", "OOD accuracy (%)"
    )
    paths["spectra.png"] = plot_spectra(spectra, out / "spectra.png")
    paths["claims.md"] = out / "claims.md"
    paths["claims.md"].write_text(claims_markdown(df, suite_name) if claims is None else claims)
    if len(distinct_heads(df)) >= MIN_HEADS:
        paths["comparisons.md"] = out / "comparisons.md"
        paths["comparisons.md"].write_text(comparisons_markdown(df, suite_name))
    return paths


def spectra_for(reader: Any, fits: pd.DataFrame, spectra_task: str | None = None) -> dict[str, np.ndarray]:
    """The spectra the report shows: one task (default: the first ID task by name that has
    spectra), pre-training seed 0 when recorded, one line per backbone and noise ratio."""
    if spectra_task is None and "task_kind" in fits.columns:
        id_tasks = sorted(fits.loc[fits["task_kind"] == "id", "task"].dropna().unique())
        spectra_task = id_tasks[0] if id_tasks else None
    if spectra_task is None:
        return {}
    return reader.load_spectra(spectra_task, pretrain_seed=0) or reader.load_spectra(spectra_task)


#: Axis labels of per-epoch pre-training metrics; others are shown under their own name.
CURVE_LABELS = {
    "loss": "training loss",
    "train_accuracy": "accuracy on the noisy training labels (%)",
    "clean_accuracy": "accuracy on the true labels (%)",
    "noisy_fit": "flipped samples fitted to their noisy label (%)",
    "true_fit": "flipped samples fitted to their true label (%)",
    "unflipped_accuracy": "accuracy on the samples whose label was kept (%)",
    "matched_rank": "rank of the paired caption (0 first, 0.5 chance)",
    "mismatched_rank": "rank of the swapped caption (falls as it is memorised)",
    "lr": "learning rate",
    "images_per_s": "training throughput (images / s)",
    "seconds": "epoch wall time (s)",
}
#: Per-epoch bookkeeping that is not a curve worth a panel.
CURVE_SKIP = {
    "workers",
    "resumed_from_epoch",
    "epoch",
    "batch_per_worker",
    "global_batch",
    "grad_accum",
    "steps_per_epoch",
}


def _is_fraction(metric: str) -> bool:
    return metric.endswith(("accuracy", "_fit", "_acc"))


def curve_metrics(records: list[Any]) -> list[str]:
    """The per-epoch metrics worth a panel, learning curves first (``CURVE_LABELS`` order)."""
    return sorted(
        {m for r in records for m, pts in r.curves.items() if pts and m not in CURVE_SKIP},
        key=lambda m: (list(CURVE_LABELS).index(m) if m in CURVE_LABELS else 99, m),
    )


def plot_pretrain_curves(records: list[Any], path: Path) -> Path:
    """One panel per per-epoch metric the pre-training runs carry, one line per group.

    ``records`` are ``tracking.PretrainRecord`` (name, group, curves {metric: [(epoch, value)]}).
    Runs of one group (backbone x noise ratio) are its seeds: drawn as their mean with the
    min-max band, so the memorisation curves of a study with many seeds stay readable.
    Accuracies and fitted fractions are drawn in percent.
    """
    metrics = curve_metrics(records)
    if not metrics:
        return _empty(path, "no per-epoch pre-training metrics logged")
    groups: dict[str, list[Any]] = {}
    for r in records:
        groups.setdefault(r.group or r.name, []).append(r)
    colours = {label: f"C{i % 10}" for i, label in enumerate(groups)}  # one colour per group in every panel
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = _figure(ncols, nrows, size=(4.4, 3.2))
    for i, metric in enumerate(metrics):
        ax = axes[i // ncols, i % ncols]
        scale = 100.0 if _is_fraction(metric) else 1.0
        for label, runs in groups.items():
            series = [dict(r.curves.get(metric) or []) for r in runs]
            series = [s for s in series if s]
            if not series:
                continue
            epochs = sorted(set().union(*series))
            vals = np.array([[s.get(e, np.nan) for e in epochs] for s in series]) * scale
            mean = np.nanmean(vals, axis=0)
            (line,) = ax.plot(
                epochs,
                mean,
                marker="o",
                markersize=3,
                color=colours[label],
                label=f"{label} ({len(series)} seeds)" if len(series) > 1 else label,
            )
            if len(series) > 1:
                ax.fill_between(
                    epochs, np.nanmin(vals, axis=0), np.nanmax(vals, axis=0), color=line.get_color(), alpha=0.15
                )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(CURVE_LABELS.get(metric, metric + (" (%)" if scale == 100 else "")))
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    for j in range(len(metrics), nrows * ncols):
        axes[j // ncols, j % ncols].set_axis_off()
    fig.savefig(path, dpi=110)
    return path
