"""What the reader and the writer share: tag names, param typing, store errors, run search.

Kept free of any state: the reader (``reader.py``) and the writer (``writer.py``, ``tracker.py``)
build on these helpers, so a run's params are encoded in one place and decoded in one place.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np
import pandas as pd

from benchmark.errors import NMLBenchError

KIND_TAG = "nmlbench.kind"  # fit | pretrain | spectrum | leaderboard | group | suite
KEY_TAG = "nmlbench.key"  # the record's config hash: one run per key
CODE_TAG = "nmlbench.code"  # the commit that made a fit (provenance.code_tag); the frame's ``code``
DIGEST_TAG = "nmlbench.digest"  # hash of the record's content: a re-send of the same record is a no-op
ROW_TAG = "nmlbench.row"  # leaderboard rows: position in leaderboard order
#: Leaderboard metrics are stored rounded: the UI prints floats raw, and 6 decimals keep its table
#: readable while staying far below any difference the intervals can resolve.
METRIC_DECIMALS = 6
EPOCH_TAG = "nmlbench.epoch_metrics"  # pre-training runs: names of the per-epoch metrics
SUITE_TAG = "suite"
ERROR_TAG = "error"
PARENT_TAG = "mlflow.parentRunId"
FINISHED, FAILED = "FINISHED", "FAILED"
#: Kinds that structure the record rather than being one: not counted as completed work.
STRUCTURE_KINDS = ("suite", "group", "leaderboard")

#: The installed MLflow's (3.x) experiment-kind tag and its value for model training.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"

#: Fit-record params typed back from MLflow's strings (see docs/architecture.md, "Fit record").
FLOAT_PARAMS = ("noise_ratio", "lam", "fraction")
INT_PARAMS = ("pretrain_seed", "head_seed", "depth", "seed")

#: Param and metric names that stores written before the one-name-per-concept renames (issue 24)
#: hold, mapped to today's names on read (``new_names``), so an old store reads like a new one.
#: By run kind (``None``: every kind); a name is only mapped where today's name is absent.
#: ``ratio`` is the MLP width multiplier only in a fit run (elsewhere it named the noise ratio,
#: which runs log as ``noise_ratio``); ``world_size`` was a pre-training epoch metric.
OLD_PARAM_NAMES: dict[str | None, dict[str, str]] = {
    None: {"method": "head", "world_size": "workers"},
    "fit": {"ratio": "width"},
}

MAX_PARAMS_TAGS = 100  # MLflow's per-batch limits
MAX_METRICS = 1000
_INT_RE = re.compile(r"[+-]?\d+")
_NONE = {"None", "none", "null", "nan", "NaN", ""}

#: HTTP client defaults while a writer runs: MLflow's own (7 retries, backoff 2, 120 s timeout)
#: can hold one request for minutes when the server is down; the Tracker retries on its own
#: schedule instead (see ``tracker.py``). An explicit user setting wins.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


#: MLflow's own environment variables for a tracking server's credentials (HTTP basic auth of
#: ``mlflow server --app-name basic-auth``, or a bearer token). nml-bench reads no other source,
#: never logs them, and ``nmlbench submit`` hands them to the job as environment variables.
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
CREDENTIALS_HINT = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server, "
    "or MLFLOW_TRACKING_TOKEN for a token"
)


def credentials_from_uri(uri: str) -> str:
    """``uri`` without a ``user:password@`` part; the credentials move to MLflow's environment variables.

    Why: the URI is printed, written into the run summary and the report, and passed on job
    command lines; a password inside it would land in all of them. MLflow reads the environment
    variables on every request, so moving them changes nothing about how the server is reached.
    An explicit environment variable wins over the URI's part.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    if user:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
    if password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
    return urlunsplit(parts._replace(netloc=host))


def credential_env() -> dict[str, str]:
    """The MLflow credentials set in this process's environment (for a job's ``env_vars``)."""
    return {k: os.environ[k] for k in CREDENTIAL_ENV if os.environ.get(k)}


def auth_status(exc: BaseException) -> int | None:
    """401 or 403 when the tracking server refused the credentials somewhere in ``exc``'s chain, else None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        status = getattr(e, "get_http_status_code", None)
        if callable(status):
            try:
                if int(status()) in (401, 403):
                    return int(status())
            except (TypeError, ValueError):
                pass
        code = getattr(getattr(e, "response", None), "status_code", None)
        if code in (401, 403):
            return int(code)
        e = e.__cause__ or e.__context__
    return None


def auth_refused(exc: BaseException) -> bool:
    """Did the tracking server refuse the credentials (HTTP 401 / 403)?"""
    return auth_status(exc) is not None


class NothingTracked(NMLBenchError):
    """The store or the experiment does not exist: nothing has been run for this suite yet."""


class TrackingUnavailable(NMLBenchError):
    """The tracking server did not answer."""


def default_uri(work_dir: str | Path = ".nmlbench") -> str:
    """``sqlite:///<absolute work_dir>/mlflow.db``: absolute, so it does not depend on the cwd."""
    return f"sqlite:///{(Path(work_dir).expanduser().resolve() / 'mlflow.db')}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    return None


def quiet_mlflow(http: bool = False) -> None:
    """Environment defaults for a process that talks to MLflow (an explicit setting wins).

    A sweep logs thousands of runs; MLflow would print a URL line and a progress bar for each.
    """
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if http:
        for k, v in HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)


def make_client(uri: str) -> Any:
    from mlflow import MlflowClient

    quiet_mlflow(http=uri.startswith(("http://", "https://")))
    return MlflowClient(tracking_uri=uri)


def is_transient(exc: BaseException) -> bool:
    """Does ``exc`` mean "the store is away for now" (retry later) rather than "bad record"?

    Connection refused / reset, timeouts, 5xx and 429 answers, and a locked SQLite file are
    transient. So is a refusal of the credentials (401 / 403): the store takes no record until
    the user gives the right ones, and until then the journal keeps them, as in an outage
    (``nmlbench sync`` delivers them later). MLflow wraps connection errors in
    ``MlflowException`` without a cause, so the whole context chain is inspected.
    """
    import requests
    import urllib3

    if auth_refused(exc):
        return True

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(
            e, (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
        ):
            return True
        text = str(e)
        if "database is locked" in text or "failed with exception" in text or "Max retries exceeded" in text:
            return True
        status = getattr(e, "get_http_status_code", None)
        if callable(status):
            try:
                if int(status()) in (429, 500, 502, 503, 504):
                    return True
            except (TypeError, ValueError):
                pass
        e = e.__cause__ or e.__context__
    return False


def brief(exc: BaseException) -> str:
    """One short line for an error message (MLflow's connection errors run to several hundred chars)."""
    if auth_refused(exc):
        return f"HTTP {auth_status(exc)}: {CREDENTIALS_HINT}"
    text = " ".join(str(exc).split())
    for marker in ("Connection refused", "Read timed out", "timed out", "Connection reset"):
        if marker in text:
            return f"{type(exc).__name__}: {marker}"
    return text if len(text) <= 160 else text[:157] + "..."


def param_str(value: Any) -> str:
    """MLflow params are strings; floats round-trip through ``repr``, containers through JSON."""
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, sort_keys=True, default=str)
    elif isinstance(value, (float, np.floating)):
        text = repr(float(value))
    elif isinstance(value, np.integer):
        text = str(int(value))
    else:
        text = str(value)
    if len(text) > 6000:
        text = text[:5990] + "...[cut]"
    return text


def typed(text: str | None) -> Any:
    """A param string back to None / int / float / str."""
    if text is None or text in _NONE:
        return None
    if _INT_RE.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def new_names(values: Mapping[str, Any], kind: str | None = None) -> dict[str, Any]:
    """``values`` (a run's params or metrics) under today's names (``OLD_PARAM_NAMES``), same order."""
    table = {**OLD_PARAM_NAMES[None], **OLD_PARAM_NAMES.get(kind, {})} if kind is not None else OLD_PARAM_NAMES[None]
    out: dict[str, Any] = {}
    for k, v in values.items():
        new = table.get(k)
        out[new if new is not None and new not in values else k] = v
    return out


def typed_params(params: Mapping[str, str], kind: str | None = None) -> dict[str, Any]:
    """A run's MLflow params typed (``typed``) and under today's names (``new_names``)."""
    return new_names({k: typed(v) for k, v in params.items()}, kind)


def chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def search_all(client: Any, experiment_id: str, filter_string: str = "") -> list[Any]:
    """Every active run of the experiment matching ``filter_string`` (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def run_filter(kind: str | None, status: str | None = FINISHED) -> str:
    parts = []
    if status:
        parts.append(f"attributes.status = '{status}'")
    if kind:
        parts.append(f"tags.`{KIND_TAG}` = '{kind}'")
    return " and ".join(parts)


def runs_to_frame(runs: Iterable[Any]) -> pd.DataFrame:
    """Runs as a DataFrame: run_id, key, params (typed), metrics, tags.

    Params come back as int / float / str (``None`` -> missing), old names as today's
    (``OLD_PARAM_NAMES``); the fit-record params
    ``noise_ratio``, ``lam``, ``fraction`` are always float and the seeds and
    ``depth`` nullable integers. Tags whose name clashes with a param or metric get a ``tag.``
    prefix; MLflow's own and nmlbench's bookkeeping tags are left out, except the commit that made
    a run (``CODE_TAG``), the column ``code``.
    """
    rows = []
    for run in runs:
        d = run.data
        row: dict[str, Any] = {"run_id": run.info.run_id, "key": d.tags.get(KEY_TAG)}
        if CODE_TAG in d.tags:
            row["code"] = d.tags[CODE_TAG]
        kind = d.tags.get(KIND_TAG)
        row.update(typed_params(d.params, kind))
        row.update(new_names(d.metrics, kind))
        for k, v in d.tags.items():
            if k.startswith(("mlflow.", "nmlbench.")):
                continue
            row[f"tag.{k}" if k in row else k] = v
        rows.append(row)
    df = pd.DataFrame(rows, columns=None if rows else ["run_id", "key"])
    for col in df.columns:
        if col in FLOAT_PARAMS:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        elif col in INT_PARAMS:
            num = pd.to_numeric(df[col], errors="coerce")
            df[col] = num.astype("Int64") if (num.dropna() % 1 == 0).all() else num
        elif df[col].dtype == object:
            vals = df[col].dropna()
            if len(vals) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                df[col] = pd.to_numeric(df[col])
    return df.sort_values("key", kind="stable").reset_index(drop=True) if len(df) else df
