"""MLflow bookkeeping: one run per head fit / pre-training job / spectrum, keyed by config hash.

All writes happen in the calling (driver) process. Ray workers return records; the driver hands
them to ``Tracker``. That is deliberate: SQLite answers "database is locked" to concurrent writers
and an MLflow setup inside each worker silently falls back to a local store, so a single writer is
the only arrangement that is both correct and fast. Reads (``completed_keys``, ``runs_frame``)
may happen anywhere.

Each run carries the tags ``nmlbench.kind`` ("fit" | "pretrain" | "spectrum") and ``nmlbench.key``
(the job's config hash). A key holds at most one run: re-logging a finished key is a no-op that
returns the existing run id, and failed attempts of a key are deleted when the key finishes.

Writes use ``MlflowClient`` directly (``create_run`` + one ``log_batch`` + ``set_terminated``)
rather than the fluent ``mlflow.start_run`` API: no active-run global state, and about three
store calls per fit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.errors import ConfigError
from benchmark.hashing import config_hash

KIND_TAG = "nmlbench.kind"
KEY_TAG = "nmlbench.key"
ERROR_TAG = "error"
FINISHED, FAILED = "FINISHED", "FAILED"

#: Fit-record params typed back from MLflow's strings (see docs/architecture.md, "Fit record").
FLOAT_PARAMS = ("noise_ratio", "lam", "fraction")
INT_PARAMS = ("pretrain_seed", "head_seed", "depth", "seed")

_MAX_PARAMS_TAGS = 100  # MLflow's per-batch limits
_MAX_METRICS = 1000
_INT_RE = re.compile(r"[+-]?\d+")
_NONE = {"None", "none", "null", "nan", "NaN", ""}


def default_uri(work_dir: str | Path = ".nmlbench") -> str:
    """``sqlite:///<absolute work_dir>/mlflow.db``: absolute, so it does not depend on the cwd."""
    return f"sqlite:///{(Path(work_dir).expanduser().resolve() / 'mlflow.db')}"


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def _param_str(value: Any) -> str:
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


def _typed(text: str | None) -> Any:
    """A param string back to None / int / float / str."""
    if text is None or text in _NONE:
        return None
    if _INT_RE.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclasses.dataclass
class _RunRef:
    run_id: str
    status: str
    kind: str


class Tracker:
    """Writes fit, pre-training and spectrum runs to one MLflow experiment; reads them back.

    ``uri`` is any MLflow tracking URI: ``sqlite:///abs/path.db`` (the default, created with its
    folder) or ``http://host:port`` of an ``mlflow server``. ``tags`` are added to every run
    (e.g. ``{"suite": "quick"}``). Use from the driver process only (see the module docstring).
    """

    def __init__(self, uri: str | None = None, experiment: str = "nmlbench",
                 tags: Mapping[str, str] | None = None) -> None:
        import os

        # Defaults only (an explicit user setting wins): a sweep logs thousands of runs, and
        # MLflow would print a URL line and a progress bar for each one.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow import MlflowClient

        self.uri = uri or default_uri()
        self.experiment = experiment
        self.default_tags = {k: str(v) for k, v in (tags or {}).items()}
        db = _sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._ensure_experiment(experiment, db)
        self._index: dict[str, list[_RunRef]] | None = None

    # -- setup -----------------------------------------------------------------------------
    def _ensure_experiment(self, name: str, db: Path | None) -> str:
        """Create the experiment once; an existing (or concurrently created) one is reused."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        # Next to a local database, artifacts go beside it instead of into ./mlruns of the cwd.
        location = (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    # -- index of keys -> runs (one scan, then kept up to date by this writer) -------------
    def _search(self, filter_string: str = "") -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=5000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _scan(self) -> dict[str, list[_RunRef]]:
        index: dict[str, list[_RunRef]] = {}
        for run in self._search():
            key = run.data.tags.get(KEY_TAG)
            if key is not None:
                index.setdefault(key, []).append(
                    _RunRef(run.info.run_id, run.info.status, run.data.tags.get(KIND_TAG, ""))
                )
        self._index = index
        return index

    def _refs(self, key: str) -> list[_RunRef]:
        index = self._index if self._index is not None else self._scan()
        return index.setdefault(key, [])

    def _finished(self, key: str) -> _RunRef | None:
        return next((r for r in self._refs(key) if r.status == FINISHED), None)

    def _replace(self, key: str, new: _RunRef, drop: Iterable[_RunRef]) -> None:
        for ref in drop:
            self.client.delete_run(ref.run_id)
        dropped = {r.run_id for r in drop}
        self._index[key] = [r for r in self._refs(key) if r.run_id not in dropped] + [new]

    # -- writing -----------------------------------------------------------------------------
    def _write(self, kind: str, key: str, params: Mapping[str, Any], metrics: Mapping[str, Any],
               tags: Mapping[str, Any], artifacts: Mapping[str, Any], status: str,
               run_name: str | None, steps: Iterable[tuple[str, float, int]] = ()) -> str:
        from mlflow.entities import Metric, Param

        all_tags = {**self.default_tags, **{k: str(v) for k, v in tags.items()}, KIND_TAG: kind, KEY_TAG: key}
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name or key)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        ps = [Param(str(k), _param_str(v)) for k, v in params.items()]
        ms = [Metric(str(k), float(v), now, 0) for k, v in metrics.items() if v is not None]
        ms += [Metric(k, float(v), now, int(step)) for k, v, step in steps]
        try:
            # One call for the usual fit (< 100 params, < 1000 metrics); chunked past the limits.
            p_chunks = list(_chunks(ps, _MAX_PARAMS_TAGS)) or [[]]
            m_chunks = list(_chunks(ms, _MAX_METRICS)) or [[]]
            for i in range(max(len(p_chunks), len(m_chunks))):
                self.client.log_batch(
                    run_id,
                    metrics=m_chunks[i] if i < len(m_chunks) else [],
                    params=p_chunks[i] if i < len(p_chunks) else [],
                    tags=[],
                )
            self._log_artifacts(run_id, artifacts)
        except Exception:
            self.client.set_terminated(run_id, FAILED)
            raise
        self.client.set_terminated(run_id, status)
        return run_id

    def _log_artifacts(self, run_id: str, artifacts: Mapping[str, Any]) -> None:
        if not artifacts:
            return
        with tempfile.TemporaryDirectory(prefix="nmlbench-artifacts-") as tmp:
            for name, value in artifacts.items():
                if isinstance(value, Mapping):
                    fname = name if name.endswith(".json") else f"{name}.json"
                    path = Path(tmp) / fname
                    path.write_text(json.dumps(value, indent=1, sort_keys=True, default=str))
                elif isinstance(value, np.ndarray):
                    fname = name if name.endswith(".npy") else f"{name}.npy"
                    path = Path(tmp) / fname
                    np.save(path, value)
                elif isinstance(value, (str, Path)):
                    src = Path(value)
                    if not src.is_file():
                        raise ConfigError(f"artifact {name!r}: file {src} does not exist")
                    path = src if src.name == name else Path(tmp) / name
                    if path != src:
                        shutil.copyfile(src, path)
                else:
                    raise ConfigError(
                        f"artifact {name!r} has type {type(value).__name__}; "
                        "give a dict (JSON), a numpy array (.npy) or a file path"
                    )
                self.client.log_artifact(run_id, str(path))

    def _finish_key(self, kind: str, key: str, params: Mapping[str, Any], metrics: Mapping[str, Any],
                    tags: Mapping[str, Any], artifacts: Mapping[str, Any], run_name: str | None,
                    overwrite: bool, steps: Iterable[tuple[str, float, int]] = ()) -> str:
        done = self._finished(key)
        if done is not None and not overwrite:
            return done.run_id
        run_id = self._write(kind, key, params, metrics, tags, artifacts, FINISHED, run_name, steps)
        # The finished run replaces every earlier attempt of the key (failed ones, or the
        # previous result when overwriting): one run per key in the experiment.
        self._replace(key, _RunRef(run_id, FINISHED, kind), list(self._refs(key)))
        return run_id

    def log_fit(self, record: Mapping[str, Any], *, overwrite: bool = False) -> str:
        """Log one head fit ``{"key", "params", "metrics", "tags", "artifacts"}``; return the run id.

        A record with an ``"error"`` entry (a fit that raised in a worker) is logged as a failure.
        A key that already finished is not logged again (its run id is returned) unless
        ``overwrite``.
        """
        key = record["key"]
        params, tags = record.get("params", {}), record.get("tags", {})
        if record.get("error"):
            text = str(record["error"])
            if record.get("traceback"):
                text += "\n" + str(record["traceback"])
            return self.log_failure(key, params, text, tags=tags)
        p = params
        name = "/".join(str(p[k]) for k in ("backbone", "task", "method") if k in p) or None
        return self._finish_key("fit", key, params, record.get("metrics", {}), tags,
                                record.get("artifacts", {}), name, overwrite)

    def log_failure(self, key: str, params: Mapping[str, Any], error_text: str, *, kind: str = "fit",
                    tags: Mapping[str, Any] | None = None) -> str:
        """Record a failed attempt (status FAILED, tag ``error``); earlier failures of the key go.

        The key stays out of ``completed_keys`` so the next run retries it.
        """
        text = error_text if len(error_text) <= 7900 else error_text[:3900] + "\n...\n" + error_text[-3900:]
        old = [r for r in self._refs(key) if r.status != FINISHED]
        run_id = self._write(kind, key, params, {}, {**(tags or {}), ERROR_TAG: text}, {}, FAILED, None)
        self._replace(key, _RunRef(run_id, FAILED, kind), old)
        return run_id

    def log_pretrain(self, job: Any, result: Any, *, overwrite: bool = False) -> str:
        """Log a pre-training job (``PretrainJob``) and its result; return the run id.

        ``result`` is a mapping or dataclass. Recognised entries: ``history`` / ``metrics`` /
        ``epochs`` (a list of per-epoch dicts, or a dict of per-epoch lists; logged with
        ``step`` = epoch), ``noise_path`` / ``noise_file`` (logged as artifact ``noise.npz``),
        ``checkpoint`` / ``checkpoint_path`` (recorded as tag ``checkpoint``: checkpoints stay
        in the work dir, they are too large to copy). Other numeric entries become metrics.
        """
        res = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result)
        res.pop("job", None)
        params = {k: v for k, v in dataclasses.asdict(job).items()}
        params["name"] = job.name
        if res.get("error"):
            return self.log_failure(job.key, params, str(res["error"]), kind="pretrain")
        steps: list[tuple[str, float, int]] = []
        history = next((res.pop(k) for k in ("history", "metrics", "epochs") if isinstance(res.get(k), (list, dict))), None)
        if isinstance(history, dict):  # {"loss": [..], ...} -> per-epoch rows
            n = max((len(v) for v in history.values() if isinstance(v, list)), default=0)
            history = [{k: v[i] for k, v in history.items() if isinstance(v, list) and i < len(v)} for i in range(n)]
        last: dict[str, float] = {}
        for i, row in enumerate(history or []):
            epoch = int(row.get("epoch", i))
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    steps.append((str(k), float(v), epoch))
                    last[str(k)] = float(v)
        tags: dict[str, str] = {"backbone": job.display or job.name}
        artifacts: dict[str, Any] = {}
        noise = next((res.pop(k) for k in ("noise_path", "noise_file") if res.get(k)), None)
        if noise is not None and Path(noise).is_file():
            artifacts["noise.npz"] = noise
        ckpt = next((res.pop(k) for k in ("checkpoint", "checkpoint_path") if res.get(k)), None)
        if ckpt is not None:
            tags["checkpoint"] = str(ckpt)
        metrics = {k: float(v) for k, v in res.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        # Per-epoch values are logged with their steps; MLflow keeps the latest as the run's value.
        for k in last:
            metrics.pop(k, None)
        return self._finish_key("pretrain", job.key, params, metrics, tags, artifacts, job.name,
                                overwrite, steps)

    def log_spectrum(self, backbone: str | Mapping[str, Any], task: str, values: Any, *,
                     overwrite: bool = False, **params: Any) -> str:
        """Store the singular values of a backbone's features on ``task`` (artifact spectrum.npy).

        ``backbone`` is a display name, or a mapping of backbone params that holds one under
        ``"backbone"`` (e.g. the fit params: noise_ratio, pretrain_seed, ...). All params are
        recorded and keyed, so each (backbone, noise ratio, seed, task) keeps its own spectrum.
        """
        arr = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values, dtype=np.float64)
        base = dict(backbone) if isinstance(backbone, Mapping) else {"backbone": backbone}
        if "backbone" not in base:
            raise ConfigError("log_spectrum: the backbone mapping needs a 'backbone' display name")
        all_params = {**base, **params, "task": task}
        key = config_hash({"kind": "spectrum", **all_params})
        return self._finish_key("spectrum", key, all_params, {}, {}, {"spectrum.npy": arr},
                                f"{base['backbone']}/{task}/spectrum", overwrite)

    # -- reading -----------------------------------------------------------------------------
    def _filter(self, kind: str | None, status: str | None = FINISHED) -> str:
        parts = []
        if status:
            parts.append(f"attributes.status = '{status}'")
        if kind:
            parts.append(f"tags.`{KIND_TAG}` = '{kind}'")
        return " and ".join(parts)

    def completed_keys(self, kind: str | None = None) -> set[str]:
        """Keys whose run finished (optionally of one kind): what a re-run can skip."""
        runs = self._search(self._filter(kind))
        return {r.data.tags[KEY_TAG] for r in runs if KEY_TAG in r.data.tags}

    def runs_frame(self, kind: str = "fit") -> pd.DataFrame:
        """Finished runs of ``kind`` as a DataFrame: run_id, key, params (typed), metrics, tags.

        Params come back as int / float / str (``None`` -> missing); the fit-record params
        ``noise_ratio``, ``lam``, ``fraction`` are always float and the seeds and ``depth``
        nullable integers. Tags whose name clashes with a param or metric get a ``tag.`` prefix.
        """
        rows = []
        for run in self._search(self._filter(kind)):
            d = run.data
            row: dict[str, Any] = {"run_id": run.info.run_id, "key": d.tags.get(KEY_TAG)}
            row.update({k: _typed(v) for k, v in d.params.items()})
            row.update(d.metrics)
            for k, v in d.tags.items():
                if k.startswith("mlflow.") or k in (KEY_TAG, KIND_TAG):
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

    def failures_frame(self, kind: str | None = None) -> pd.DataFrame:
        """Failed runs with their key, params and error text (what to look at after a sweep)."""
        rows = [
            {"run_id": r.info.run_id, "key": r.data.tags.get(KEY_TAG), "kind": r.data.tags.get(KIND_TAG),
             "error": r.data.tags.get(ERROR_TAG, ""), **{k: _typed(v) for k, v in r.data.params.items()}}
            for r in self._search(self._filter(kind, FAILED))
        ]
        return pd.DataFrame(rows, columns=None if rows else ["run_id", "key", "kind", "error"])

    def load_spectra(self, task: str | None = None, **where: Any) -> dict[str, np.ndarray]:
        """Logged spectra as ``{label: singular values}``, optionally filtered.

        ``task`` and ``where`` (e.g. ``pretrain_seed=0``) keep runs whose params equal the given
        values. Labels name the backbone, then the noise ratio and pretrain seed when recorded,
        then the task unless one task was asked for: ``"resnet · noise 10% · s0 / cifar10"``.
        """
        if task is not None:
            where["task"] = task
        out: dict[str, np.ndarray] = {}
        for run in self._search(self._filter("spectrum")):
            p = {k: _typed(v) for k, v in run.data.params.items()}
            if any(p.get(k) != v for k, v in where.items()):
                continue
            label = str(p.get("backbone"))
            if isinstance(p.get("noise_ratio"), (int, float)) and "noise_ratio" not in where:
                label += f" · noise {p['noise_ratio'] * 100:g}%"
            if p.get("pretrain_seed") is not None and "pretrain_seed" not in where and "noise_ratio" in p:
                label += f" · s{p['pretrain_seed']}"
            if "task" not in where:
                label += f" / {p.get('task')}"
            with tempfile.TemporaryDirectory(prefix="nmlbench-spectrum-") as tmp:
                try:
                    local = self.client.download_artifacts(run.info.run_id, "spectrum.npy", tmp)
                except Exception as exc:  # a run whose artifact store is gone: skip, say so
                    warnings.warn(f"spectrum {label} (run {run.info.run_id}) unreadable: {exc}", stacklevel=2)
                    continue
                out[label] = np.load(local)
        return dict(sorted(out.items()))
