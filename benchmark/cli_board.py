"""What ``nmlbench leaderboard`` and the end of ``nmlbench run`` print: the published board, or one
computed from the fit runs with a note saying how to publish it, and where to see it in MLflow.

Apart from cli.py (the commands) because it is the one piece of the command line with its own
logic: which table to trust when the store and the published board disagree.
"""

from __future__ import annotations

from enum import Enum

import typer


class Fmt(str, Enum):
    """The formats a leaderboard prints in."""

    table = "table"
    csv = "csv"
    markdown = "markdown"


def print_leaderboard(
    uri: str, experiment: str, fmt: Fmt = Fmt.table, suite: str | None = None, strict: bool = False
) -> None:
    """Print the published leaderboard runs (read-only: nothing is created in the store).

    Before the leaderboard is published in full (a run interrupted before its end, a publication
    that failed part-way, or a store written by an older nml-bench) it is computed from the fit
    runs, and a note says how to publish it.
    A store that does not answer or refuses the credentials is reported; ``strict`` raises it
    (``nmlbench leaderboard`` exits 2), else it is a note (the end of ``nmlbench run``).
    """
    from benchmark.leaderboard import columns, leaderboard
    from benchmark.leaderboard_text import render
    from benchmark.tracking import NothingTracked, TrackingReader, TrackingUnavailable

    try:
        reader = TrackingReader(uri, experiment)
        board = reader.leaderboard_frame(suite, columns=columns())
        note = ""
        fits = reader.suite_fits(suite) if suite else reader.runs_frame("fit")
    except (NothingTracked, TrackingUnavailable) as exc:
        if strict and isinstance(exc, TrackingUnavailable):
            raise
        typer.echo(str(exc))
        return
    if fits.empty and board.empty:
        typer.echo(f"no finished head fits in experiment {experiment!r} at {uri}")
        return
    again = f"`nmlbench sync {suite or experiment}`"
    published = reader.published_fits(suite) if suite is not None else None
    if board.empty or (suite is not None and published is None and not fits.empty):
        # no board, or the rows of a publication that stopped part-way (it marks the suite run last)
        board = leaderboard(fits)
        note = f"(computed from the fit runs: the leaderboard runs are not all published; {again} publishes them)"
    elif published is not None and published != len(fits):
        note = (
            f"(the published leaderboard summarises {published} fits, the store now holds {len(fits)}; "
            f"{again} refreshes it)"
        )
    keys = [c for c in ("backbone", "noise_ratio", "label_noise_ratio", "head", "fraction") if c in board.columns]
    typer.echo(render(board[keys + list(columns())], fmt.value))
    if note:
        typer.echo(note, err=True)
    if fmt is Fmt.table:
        from benchmark.tracking.layout import leaderboard_path

        where = (
            reader.leaderboard_url(uri)
            if uri.startswith(("http://", "https://"))
            else f"`mlflow ui --backend-store-uri {uri}`, then http://127.0.0.1:5000/"
            f"{leaderboard_path(str(reader.experiment_id))}"
        )
        typer.echo(f"leaderboard in the MLflow UI: {where}")
