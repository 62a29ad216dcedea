"""The ``nmlbench`` command line (typer): run, submit, leaderboard, report, sync, datasets, backbones.

Each command is a thin shell over a library function, so everything it does can also be done
from Python. User errors (``NMLBenchError``) print one message naming the problem and the fix and
exit with status 2, without a traceback.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer

from benchmark.cli_board import Fmt, print_leaderboard
from benchmark.errors import ConfigError, NMLBenchError, PublishFailed

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="nml-bench: label noise in pre-training, frozen features, LP / MLP / NMTune heads.",
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUITE = "quick"


def resolve_suite_path(suite: str | None) -> Path:
    """A path, or the name of a file in suites/ (``quick`` -> suites/quick.yaml)."""
    name = suite or DEFAULT_SUITE
    p = Path(name)
    if p.is_file():
        return p.resolve()
    for root in (Path.cwd() / "suites", REPO_ROOT / "suites"):
        for cand in (root / name, root / f"{name}.yaml"):
            if cand.is_file():
                return cand.resolve()
    known = sorted(
        {q.stem for r in (Path.cwd() / "suites", REPO_ROOT / "suites") if r.is_dir() for q in r.glob("*.yaml")}
    )
    raise ConfigError(
        f"suite {name!r} not found: no such file, and no suites/{name}.yaml. "
        f"Known suites: {', '.join(known) or '(none)'}; or give a path to a YAML file."
    )


def _load(suite: str | None):
    from benchmark.config import load_suite

    return load_suite(resolve_suite_path(suite))


def _fail(exc: BaseException) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _tracking(suite_obj, tracking_uri: str | None, work_dir: str | None) -> tuple[str, str]:
    """The MLflow URI and experiment a command reads: the suite's, after the command-line overrides.

    A ``user:password@`` in the URI moves to MLflow's credential variables (``store.credentials_from_uri``):
    the URI is printed, put on job command lines and written into summaries and reports.
    """
    from benchmark.tracking.store import credentials_from_uri

    suite_obj = suite_obj.override(work_dir=work_dir)
    return credentials_from_uri(tracking_uri or str(suite_obj.tracking.uri)), str(suite_obj.tracking.experiment)


# ---------------------------------------------------------------------------------------------
@app.command()
def run(
    suite: Annotated[str | None, typer.Argument(help="suite file or name in suites/ (default: quick)")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start local Ray)")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: sqlite in the work dir)")
    ] = None,
    data_root: Annotated[str | None, typer.Option(help="root of real data sets (ImageNet, DomainNet, ...)")] = None,
    work_dir: Annotated[str | None, typer.Option(help="caches and checkpoints (default: the suite's work_dir)")] = None,
) -> None:
    """Run a suite (resumes: only missing pre-trainings and head fits run), then print the leaderboard."""
    from benchmark.runner import run_suite

    try:
        s = _load(suite)
        uri, _ = _tracking(s, tracking_uri, work_dir)  # credentials out of the URI before it is printed
        t0 = time.perf_counter()
        summary = run_suite(s, address=address, tracking_uri=uri, data_root=data_root, work_dir=work_dir)
    except NMLBenchError as exc:
        _fail(exc)
    secs = summary.seconds
    typer.echo(
        f"\nsuite {summary.suite!r} done in {time.perf_counter() - t0:.0f} s "
        f"(pre-training {secs.get('pretrain', 0):.0f} s, features {secs.get('features', 0):.0f} s, "
        f"heads {secs.get('heads', 0):.0f} s, publish {secs.get('publish', 0):.0f} s, "
        f"other {secs.get('other', 0):.0f} s); "
        f"fits: {summary.fits_run} run, {summary.fits_skipped} reused, {summary.fits_failed} failed"
    )
    print_leaderboard(summary.tracking_uri, summary.experiment, suite=summary.suite)
    typer.echo(f"\nMLflow store: {summary.tracking_uri} (experiment {summary.experiment!r})")
    if summary.records_pending:
        typer.secho(
            f"{summary.records_pending} record(s) wait in the journal: MLflow did not answer; "
            f"run `nmlbench sync {summary.suite}` when it is back",
            fg=typer.colors.YELLOW,
        )
    typer.echo(f"work dir (features, checkpoints): {summary.work_dir}")
    if summary.pretrain_failed or summary.fits_failed:
        typer.secho("some jobs failed (see above); re-run the same command to retry only those", fg=typer.colors.YELLOW)
        raise typer.Exit(1)


@app.command()
def validate(suite: Annotated[str, typer.Argument(help="suite file or name")]) -> None:
    """Check a suite file without running anything."""
    try:
        s = _load(suite)
    except NMLBenchError as exc:
        _fail(exc)
    from benchmark.plan import pretrain_jobs
    from benchmark.plan_status import render_imports, suite_imports

    typer.echo(f"{suite}: valid; {len(pretrain_jobs(s))} pre-training jobs, {len(s.backbones)} frozen backbones")
    typer.echo("\n".join(render_imports(suite_imports(s))))


@app.command()
def plan(
    suite: Annotated[str | None, typer.Argument(help="suite file or name (default: quick)")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
    data_root: Annotated[str | None, typer.Option(help="root of real data sets")] = None,
    work_dir: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the stages as JSON")] = False,
) -> None:
    """Print a suite's plan: jobs per stage, what is already done, and the work left. Starts no Ray."""
    import json

    from benchmark.config import check_data_available
    from benchmark.plan import make_plan
    from benchmark.plan_status import plan_status, render_imports, render_status, status_dict, suite_imports

    try:
        s = _load(suite).override(work_dir=work_dir, data_root=data_root)
        check_data_available(s)
        the_plan = make_plan(s)
        uri, exp = _tracking(s, tracking_uri, None)
        stages = _read_status(plan_status, the_plan, uri, exp)
    except NMLBenchError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(status_dict(stages), indent=2))
    else:
        typer.echo(render_status(the_plan, stages, uri) + "\n".join(render_imports(suite_imports(s))))


def _read_status(plan_status, the_plan, uri: str, exp: str):
    """``plan_status``, with a tracking server that refuses the credentials as a user error."""
    from benchmark.tracking.store import TrackingUnavailable, auth_refused, brief

    try:
        return plan_status(the_plan, uri, exp)
    except Exception as exc:
        if auth_refused(exc):
            raise TrackingUnavailable(f"MLflow at {uri} refused the credentials ({brief(exc)})") from None
        raise


@app.command()
def leaderboard(
    suite: Annotated[str | None, typer.Argument(help="suite file or name (default: quick)")] = None,
    fmt: Annotated[Fmt, typer.Option("--format", help="table, csv or markdown")] = Fmt.table,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
    work_dir: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Rows backbone x noise ratio x head (hyper-parameters picked on validation), mean ± 95 % CI over seeds.

    Reads the suite's leaderboard runs from MLflow; writes nothing.
    """
    try:
        s = _load(suite)
        uri, exp = _tracking(s, tracking_uri, work_dir)
        print_leaderboard(uri, exp, fmt, suite=s.name, strict=True)
    except NMLBenchError as exc:
        _fail(exc)


@app.command()
def report(
    suite: Annotated[str, typer.Argument(help="suite file or name")],
    out: Annotated[Path | None, typer.Option(help="output folder (default: results/<suite>)")] = None,
    html: Annotated[bool, typer.Option("--html", help="also write report.html: one self-contained page")] = False,
    tracking_uri: Annotated[str | None, typer.Option()] = None,
    work_dir: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Regenerate the leaderboard tables and figures of a suite from MLflow (read-only)."""
    from benchmark.reporting.folder import make_report_from_tracking

    try:
        s = _load(suite)
        uri, exp = _tracking(s, tracking_uri, work_dir)
        written = make_report_from_tracking(
            uri, exp, out or Path("results") / s.name, s.name, html=html, suite_file=s.source
        )
    except NMLBenchError as exc:
        _fail(exc)
    for p in written:
        typer.echo(f"wrote {p}")


@app.command()
def sync(
    suite: Annotated[str, typer.Argument(help="suite file or name")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
    work_dir: Annotated[str | None, typer.Option(help="work dir holding the journal")] = None,
    wait: Annotated[float, typer.Option(help="seconds to keep retrying a server that does not answer")] = 30.0,
) -> None:
    """Send MLflow the records its journal holds and the store lacks (after an outage), then publish the
    leaderboard runs."""
    from benchmark.reporting import finish_and_publish
    from benchmark.tracking import Tracker, journal_path

    try:
        s = _load(suite)
        uri, exp = _tracking(s, tracking_uri, work_dir)
        path = journal_path(Path(work_dir or s.work_dir), exp)
        tracker = Tracker(uri, exp, suite=s.name, journal=path, echo=typer.echo)
        queued = len(tracker.pending)
        try:
            done = finish_and_publish(tracker, wait_s=wait, strict=True)
        except NMLBenchError:
            raise
        except Exception as exc:  # a bug in publishing, not in the user's input: keep its traceback
            traceback.print_exc()
            raise PublishFailed(
                f"publishing the leaderboard of {s.name!r} failed ({type(exc).__name__}: {exc}). The fit "
                f"records are safe in MLflow at {uri}, and `nmlbench leaderboard {suite}` computes the board "
                "from them meanwhile. This is a bug in nml-bench: please report it with the traceback above."
            ) from exc
    except NMLBenchError as exc:
        _fail(exc)
    typer.echo(
        f"journal {path}: {queued - done.pending} records delivered, {done.pending} still pending; "
        f"leaderboard: {done.leaderboard_rows if done.leaderboard_rows is not None else 'not'} rows published "
        f"to {uri} (experiment {exp!r})"
    )
    if done.pending:
        raise typer.Exit(1)


@app.command()
def datasets(data_root: Annotated[str | None, typer.Option(help="root of real data sets")] = None) -> None:
    """List data sets: size, classes, and whether each is available here (and how to get it)."""
    from benchmark.data import format_datasets_table, list_datasets

    typer.echo(format_datasets_table(list_datasets(data_root)))


@app.command("rehearsal-root")
def rehearsal_root(
    root: Annotated[Path, typer.Argument(help="folder to write (new, empty, or an earlier rehearsal root)")],
    per_class: Annotated[int, typer.Option(help="training images per class")] = 6,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a miniature data root in the real on-disk layouts (ImageNet, the 14 ID sets, DomainNet,
    ImageNet variants, image-text shards and tables) from the embedded data, for rehearsing the
    paper suites on CPU: `nmlbench run paper-rehearsal --data-root DIR`."""
    from benchmark.data.rehearsal import not_reproducible, write_rehearsal_root

    try:
        written = write_rehearsal_root(root, per_class=per_class, seed=seed)
    except NMLBenchError as exc:
        _fail(exc)
    typer.echo(f"wrote {len(written)} data sets under {root}")
    for name, why in not_reproducible().items():
        typer.echo(f"  not written: {name} ({why})")


@app.command()
def backbones() -> None:
    """List backbone families, built-in and installed plugins (entry points 'nmlbench.backbones')."""
    from benchmark.backbones import format_backbones_table

    typer.echo(format_backbones_table())


@app.command()
def submit(
    suite: Annotated[str, typer.Argument(help="suite file or name")],
    address: Annotated[
        str, typer.Option(help="Ray dashboard address, e.g. http://HEAD:8265")
    ] = "http://127.0.0.1:8265",
    wait: Annotated[bool, typer.Option(help="stream the job's logs until it ends")] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow URI the job logs to (default: this machine's sqlite store)")
    ] = None,
    work_dir: Annotated[
        str | None, typer.Option(help="work dir on the cluster (shared storage); default: local absolute path")
    ] = None,
    check: Annotated[
        bool, typer.Option(help="first check that the cluster's `python` can run nml-bench (a probe job)")
    ] = True,
) -> None:
    """Submit a suite as a Ray job: the package and the suite file are shipped as its working dir.

    Ray's token is sent when one is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token);
    MLflow's credentials (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN) go to the job as
    environment variables, never on its command line.
    """
    from benchmark import submit as jobs

    token_source = jobs.use_ray_token_if_present()  # before Ray is imported: it reads the auth mode once
    try:
        s = _load(suite)
        uri, _ = _tracking(s, tracking_uri, work_dir)
        work = str(Path(work_dir or s.work_dir).resolve())
        client = jobs.job_client(address, token_source)
        if check:
            report = jobs.check_cluster_python(client, address=address, token_source=token_source)
            typer.echo(f"cluster Python: {report['python']} ({report['version']}) has nml-bench's dependencies")
        staging = Path(tempfile.mkdtemp(prefix="nmlbench-job-"))
        shutil.copytree(
            REPO_ROOT / "benchmark", staging / "benchmark", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        shutil.copy2(resolve_suite_path(suite), staging / "suite.yaml")
        entry = f"python -m benchmark.cli run suite.yaml --tracking-uri '{uri}' --work-dir '{work}'"
        from benchmark.tracking.store import credential_env

        runtime_env: dict = {"working_dir": str(staging)}
        secrets = credential_env()
        if secrets:
            runtime_env["env_vars"] = secrets
        job_id = jobs.submit_with_retry(client, entry, runtime_env, address=address, token_source=token_source)
    except NMLBenchError as exc:
        _fail(exc)
    passed = f" (MLflow credentials passed as {', '.join(sorted(secrets))})" if secrets else ""
    typer.echo(f"submitted {job_id} to {address}: {entry}{passed}")
    if not wait:
        typer.echo(f"follow with: ray job logs --address {address} -f {job_id}")
        return
    import asyncio

    from ray.job_submission import JobStatus

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(_tail())
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(1)
        status = client.get_job_status(job_id)
    typer.echo(f"job {job_id}: {status.value}")
    if status != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


def main() -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    app()


if __name__ == "__main__":
    main()
