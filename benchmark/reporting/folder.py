"""A suite's report folder, read from MLflow (read-only): ``nmlbench report``."""

from __future__ import annotations

from pathlib import Path

from benchmark.provenance import FILE_NAME, write_provenance
from benchmark.report import make_report, plot_pretrain_curves, spectra_for
from benchmark.report_html import write_html_report
from benchmark.tracking import TrackingReader


def make_report_from_tracking(
    uri: str,
    experiment: str,
    out_dir: str | Path,
    suite_name: str,
    *,
    spectra_task: str | None = None,
    html: bool = False,
    suite_file: str | Path | None = None,
) -> list[Path]:
    """Read a suite's runs from MLflow (read-only) and write the report; return the paths.

    ``html`` also writes ``report.html``: one self-contained file (see ``report_html``). Every
    folder gets ``provenance.json`` (``benchmark.provenance``: commit, ``suite_file``'s sha256,
    machine, date).
    """
    reader = TrackingReader(uri, experiment)
    df = reader.suite_fits(suite_name)
    paths = make_report(df, out_dir, suite_name, spectra=spectra_for(reader, df, spectra_task))
    pretrains = reader.pretrain_records()
    if pretrains:  # memorisation and learning curves of the suite's own pre-training
        paths["pretrain_curves.png"] = plot_pretrain_curves(pretrains, Path(out_dir) / "pretrain_curves.png")
    if html:
        paths["report.html"] = write_html_report(
            reader,
            suite_name,
            Path(out_dir) / "report.html",
            fits=df,
            figures=paths,
            pretrains=pretrains,
            claims=paths["claims.md"].read_text(),
            comparisons=paths["comparisons.md"].read_text() if "comparisons.md" in paths else "",
        )
    code = df["code"].fillna("unrecorded") if "code" in df else None
    paths[FILE_NAME] = write_provenance(
        out_dir,
        suite=suite_name,
        suite_file=suite_file,
        tracking_uri=uri,
        experiment=experiment,
        fits=len(df),
        fit_code=(
            {str(k): int(v) for k, v in code.value_counts().items()} if code is not None else {"unrecorded": len(df)}
        ),
    )
    return list(paths.values())
