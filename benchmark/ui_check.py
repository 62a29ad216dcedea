"""Check in a real browser what a person sees: the MLflow leaderboard view and the HTML report.

    python -m benchmark.ui_check SUITE [--tracking-uri URI] [--work-dir DIR] [--out results/ui]

starts ``mlflow server`` on a free 127.0.0.1 port over the suite's store, opens the experiment's
leaderboard view (runs of kind ``leaderboard``, best ID accuracy first), its study view (the run
tree, expanded) and the suite's HTML report in headless Chromium, checks that every leaderboard
row is shown in the right order, that the tree shows its groups and runs, and that no page logged
an error, saves screenshots, and stops the server it started.
Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmark.browser import Chromium, Visit
from benchmark.errors import NMLBenchError

#: Console errors the stock MLflow UI logs by itself. 3.17 asks the auth plugin's
#: ``users/current`` endpoint on every page; without ``--app-name basic-auth`` that is a 404.
MLFLOW_UI_NOISE = ("/ajax-api/2.0/mlflow/users/current",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over ``backend_uri`` (a context manager; stops what it started)."""

    def __init__(
        self,
        backend_uri: str,
        artifacts: str | Path | None = None,
        port: int | None = None,
        log: str | Path | None = None,
        timeout_s: float = 180.0,
        *,
        app_name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        # app_name: e.g. "basic-auth" (MLflow's authentication; env then carries its settings)
        self.backend_uri, self.port, self.timeout_s = backend_uri, port or free_port(), timeout_s
        self.app_name, self.env = app_name, dict(env or {})
        self.artifacts = Path(artifacts) if artifacts else Path(tempfile.mkdtemp(prefix="nmlbench-artifacts-"))
        self.log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [
            str(exe) if exe.is_file() else "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ] + (["--app-name", self.app_name] if self.app_name else [])
        # GenAI job execution (a huey consumer) is not needed to browse runs; it slows start-up.
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise NMLBenchError(
                    f"mlflow server on port {self.port} did not answer /health "
                    f"within {self.timeout_s:.0f} s; its log ends:\n{tail}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server's process group (only what ``start`` launched)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        self.proc = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclasses.dataclass
class Check:
    """One page's verdict: what was expected, what was seen, errors the page logged."""

    page: str
    ok: bool
    problems: list[str]
    errors: list[str]
    ignored: list[str]
    visit: Visit


def _split_errors(errors: list[str]) -> tuple[list[str], list[str]]:
    noise = [e for e in errors if any(n in e for n in MLFLOW_UI_NOISE)]
    return [e for e in errors if e not in noise], noise


_CLOSE_ASSISTANT = (
    "(() => { const b = document.querySelector("
    "'[data-component-id=\"mlflow.assistant.chat_panel.close\"]'); if (b) b.click(); return true; })()"
)


def check_leaderboard_view(
    browser: Chromium,
    base_url: str,
    reader: Any,
    suite: str | None = None,
    screenshot: str | Path | None = None,
    timeout_s: float = 90.0,
) -> Check:
    """Open the leaderboard view; every leaderboard run must be listed, best ``id_acc`` first."""
    from benchmark.tracking.store import run_filter, search_all

    runs = search_all(
        reader.client,
        reader.experiment_id,
        run_filter("leaderboard") + (f" and tags.`suite` = '{suite}'" if suite else ""),
    )
    runs.sort(key=lambda r: -r.data.metrics.get("id_acc", float("-inf")))
    names = [r.info.run_name for r in runs]
    wait = " && ".join(
        ["document.body.innerText.includes('matching runs')"]
        + [f"document.body.innerText.includes({n!r})" for n in names]
    )
    order = (
        "(() => { const seen = []; document.querySelectorAll('.ag-row[row-id]').forEach(r => {"
        " const i = +r.getAttribute('row-index'), id = r.getAttribute('row-id');"
        " if (!seen.some(s => s[1] === id)) seen.push([i, id]); });"
        " return seen.sort((a, b) => a[0] - b[0]).map(s => s[1]); })()"
    )
    visit = browser.visit(
        reader.leaderboard_url(base_url),
        wait_for=wait,
        extract=order,
        timeout_s=timeout_s,
        settle_s=2.0,
        before_screenshot=_CLOSE_ASSISTANT,
    )
    problems = []
    if not runs:
        problems.append("the store holds no leaderboard runs")
    missing = [n for n in names if n not in visit.text]
    if missing:
        problems.append(f"rows not shown: {missing}")
    if visit.value != [r.info.run_id for r in runs]:
        problems.append(f"rows not in id_acc order: shown {visit.value}, expected {[r.info.run_id for r in runs]}")
    errors, ignored = _split_errors(visit.errors)
    problems += [f"page error: {e}" for e in errors]
    if screenshot:
        visit.save_screenshot(screenshot)
    return Check("mlflow leaderboard view", not problems, problems, errors, ignored, visit)


# Click the expander of the rows whose run ids are given, once each (the suite run, then one group
# as it appears). Only these: a study of hundreds of fits, all expanded, pushes the groups out of
# the grid's rendered window (it draws only the rows in view).
_EXPAND = """(() => {{ window.__nmlOpened = window.__nmlOpened || {{}};
  const want = {ids};
  document.querySelectorAll('.ag-row[row-id]').forEach(row => {{
    const id = row.getAttribute('row-id'), b = row.querySelector('[data-component-id*="runnamecellrenderer"]');
    if (b && want.includes(id) && !window.__nmlOpened[id]) {{ window.__nmlOpened[id] = 1; b.click(); }} }});
  return true; }})()"""


def check_study_view(
    browser: Chromium,
    base_url: str,
    reader: Any,
    suite: str,
    screenshot: str | Path | None = None,
    timeout_s: float = 90.0,
) -> Check:
    """Open the study view twice: with the suite run expanded, every backbone x noise ratio group
    must show; with one group expanded too (the first, by name, that holds a pre-training run),
    its runs must show. The screenshot is of the second."""
    from benchmark.tracking.layout import STUDY_VIEW, leaderboard_path
    from benchmark.tracking.store import run_filter, search_all

    suite_runs = search_all(reader.client, reader.experiment_id, run_filter("suite") + f" and tags.`suite` = '{suite}'")
    group_runs = sorted(
        search_all(reader.client, reader.experiment_id, run_filter("group") + f" and tags.`suite` = '{suite}'"),
        key=lambda r: r.info.run_name,
    )
    groups = [r.info.run_name for r in group_runs]
    pretrained = {
        r.data.tags.get("mlflow.parentRunId")
        for r in search_all(reader.client, reader.experiment_id, run_filter("pretrain"))
    }
    opened = next((r for r in group_runs if r.info.run_id in pretrained), group_runs[0] if group_runs else None)
    children = (
        sorted(
            r.info.run_name
            for r in search_all(
                reader.client, reader.experiment_id, f"tags.`mlflow.parentRunId` = '{opened.info.run_id}'"
            )
        )
        if opened
        else []
    )
    suite_ids = [r.info.run_id for r in suite_runs]
    url = base_url.rstrip("/") + "/" + leaderboard_path(str(reader.experiment_id), STUDY_VIEW)
    expanders = "document.querySelectorAll('.ag-row [data-component-id*=\"runnamecellrenderer\"]').length"
    shows = lambda names: " && ".join(f"document.body.innerText.includes({n!r})" for n in names)  # noqa: E731
    tree = browser.visit(
        url,
        wait_for=f"{_EXPAND.format(ids=json.dumps(suite_ids))} && {shows([suite, *groups])}",
        extract=expanders,
        timeout_s=timeout_s,
        settle_s=1.0,
        before_screenshot=_CLOSE_ASSISTANT,
    )
    problems = [f"not shown: {n}" for n in [suite, *groups] if n not in tree.text]
    if (tree.value or 0) < 1 + len(groups):  # the suite run and every group can be expanded: a tree
        problems.append(f"runs are not nested: {tree.value} expandable rows for 1 suite + {len(groups)} groups")
    if not suite_runs:
        problems.append(f"the store holds no suite run for {suite!r}")
    if opened is None:
        problems.append("the store holds no group runs")
        visit = tree
    else:
        ids = json.dumps(suite_ids + [opened.info.run_id])
        any_child = f"{json.dumps(children)}.some(n => document.body.innerText.includes(n))"
        visit = browser.visit(
            url,
            wait_for=f"{_EXPAND.format(ids=ids)} && {any_child}",
            extract=expanders,
            timeout_s=timeout_s,
            settle_s=2.0,
            before_screenshot=_CLOSE_ASSISTANT,
        )
        if not children:
            problems.append(f"group {opened.info.run_name!r} has no runs under it")
        elif not any(n in visit.text for n in children):
            problems.append(f"group {opened.info.run_name!r} expanded shows none of its {len(children)} runs")
    errors, ignored = _split_errors(tree.errors + visit.errors if visit is not tree else tree.errors)
    problems += [f"page error: {e}" for e in errors]
    if screenshot:
        visit.save_screenshot(screenshot)
    return Check("mlflow study view", not problems, problems, errors, ignored, visit)


# Table size, figures decoded, external resources; then click "ID acc" twice (ascending, then
# descending: the page is left sorted best-first) and read the first value after each click.
_REPORT_STATE = """(() => {
  const t = document.querySelector('#leaderboard');
  const COL = t ? [...t.tHead.rows[0].children].findIndex(h => h.textContent.startsWith('ID acc')) : -1;
  const imgs = [...document.images];
  const first = () => t.tBodies[0].rows[0].children[COL].dataset.v;
  const out = {rows: t ? t.tBodies[0].rows.length : 0, images: imgs.length,
               decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
               external: [...document.querySelectorAll('script[src],link[href],img[src]')]
                 .map(e => e.getAttribute('src') || e.getAttribute('href')).filter(u => !u.startsWith('data:'))};
  if (t && COL >= 0) { const th = t.tHead.rows[0].children[COL];
    th.click(); out.asc = first(); th.click(); out.desc = first();
           out.values = [...t.tBodies[0].rows].map(r => r.children[COL].dataset.v).filter(v => v !== ''); }
  return out; })()"""


def check_html_report(
    browser: Chromium, path: str | Path, screenshot: str | Path | None = None, expected_rows: int | None = None
) -> Check:
    """Open the report file: table present and sortable by a click, every figure decoded, no errors."""
    visit = browser.visit(
        Path(path).resolve().as_uri(),
        wait_for="document.readyState === 'complete'",
        extract=_REPORT_STATE,
        timeout_s=60.0,
        settle_s=0.5,
    )
    state, problems = visit.value or {}, []
    if expected_rows is not None and state.get("rows") != expected_rows:
        problems.append(f"leaderboard has {state.get('rows')} rows, expected {expected_rows}")
    if not state.get("images") or state.get("decoded") != state.get("images"):
        problems.append(f"figures decoded: {state.get('decoded')} of {state.get('images')}")
    if state.get("external"):
        problems.append(f"the page loads external resources: {state['external']}")
    vals = [float(v) for v in state.get("values", [])]
    if vals and (float(state.get("asc", "nan")) != min(vals) or float(state.get("desc", "nan")) != max(vals)):
        problems.append(
            f"clicking 'ID acc' did not sort the rows: first after asc {state.get('asc')}, "
            f"after desc {state.get('desc')}, range {min(vals)}..{max(vals)}"
        )
    errors, ignored = _split_errors(visit.errors)
    problems += [f"page error: {e}" for e in errors]
    if screenshot:
        visit.save_screenshot(screenshot)
    return Check("html report", not problems, problems, errors, ignored, visit)


def run_checks(uri: str, experiment: str, suite: str, out: Path, work: Path) -> list[Check]:
    """Serve the store (a SQLite store gets its own ``mlflow server``; an HTTP URI is used as is),
    check the leaderboard and study views and a freshly written HTML report; screenshots to ``out``."""
    from benchmark.report_html import write_html_report
    from benchmark.tracking import TrackingReader
    from benchmark.tracking.store import sqlite_path

    reader = TrackingReader(uri, experiment)
    html = write_html_report(reader, suite, work / "report.html")
    rows = len(reader.leaderboard_frame(suite))
    checks = []
    with Chromium(width=1600, height=1000) as browser:
        server = (
            MlflowServer(uri, artifacts=work / "artifacts", log=work / "mlflow-server.log")
            if sqlite_path(uri) is not None
            else None
        )
        try:
            base = server.start().url if server is not None else uri
            checks.append(check_leaderboard_view(browser, base, reader, suite, out / f"mlflow-leaderboard-{suite}.png"))
            checks.append(check_study_view(browser, base, reader, suite, out / f"mlflow-study-{suite}.png"))
        finally:
            if server is not None:
                server.stop()
        checks.append(check_html_report(browser, html, out / f"report-{suite}.png", expected_rows=rows or None))
    return checks


def main(argv: list[str] | None = None) -> int:
    from benchmark.cli import _load, _tracking

    ap = argparse.ArgumentParser(prog="python -m benchmark.ui_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("suite", help="suite file or name in suites/")
    ap.add_argument("--tracking-uri"), ap.add_argument("--work-dir")
    ap.add_argument("--out", default="results/ui", help="folder for the screenshots")
    args = ap.parse_args(argv)
    try:
        s = _load(args.suite)
        uri, exp = _tracking(s, args.tracking_uri, args.work_dir)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="nmlbench-ui-check-") as tmp:
            checks = run_checks(uri, exp, s.name, out, Path(tmp))
    except NMLBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.page}: {c.visit.url}")
        for p in c.problems:
            print(f"     {p}")
        if c.ignored:
            print(f"     ({len(c.ignored)} known MLflow UI console errors ignored: {c.ignored[0]})")
    print(f"screenshots in {out}: " + ", ".join(sorted(p.name for p in out.glob(f"*-{s.name}.png"))))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
