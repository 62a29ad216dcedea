"""Read a study back from MLflow without writing anything.

``TrackingReader`` is what ``nmlbench leaderboard`` and ``nmlbench report`` use: it never creates
a database file, an experiment or a run, and never restores a deleted experiment. A store that
does not exist yet, or an experiment that is missing, raises ``NothingTracked`` with a message
naming the URI (nothing has been run yet); a server that does not answer raises
``TrackingUnavailable``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from benchmark.metrics import board_metric_columns
from benchmark.tracking.layout import leaderboard_url, suite_spec
from benchmark.tracking.store import (
    EPOCH_TAG,
    ERROR_TAG,
    FAILED,
    KEY_TAG,
    KIND_TAG,
    ROW_TAG,
    STRUCTURE_KINDS,
    SUITE_TAG,
    NothingTracked,
    TrackingUnavailable,
    auth_refused,
    brief,
    credentials_from_uri,
    is_transient,
    make_client,
    new_names,
    run_filter,
    runs_to_frame,
    search_all,
    sqlite_path,
    typed_params,
)

#: Columns a leaderboard row carries besides its metrics (group and selection).
LEADERBOARD_KEYS = ("backbone", "noise_ratio", "label_noise_ratio", "head", "fraction")
SELECTION_PARAMS = ("selected", "fits", "selections", "tasks")
#: Pre-training metrics that are one number per job, not a per-epoch curve.
_SCALAR_PRETRAIN = {"realised_ratio", "seconds", "noise_n", "noise_changed"}


@dataclasses.dataclass
class PretrainRecord:
    """A pre-training run as the report shows it: its noise record and its per-epoch curves."""

    name: str
    group: str
    params: dict[str, Any]
    metrics: dict[str, float]
    curves: dict[str, list[tuple[int, float]]]


class TrackingReader:
    """Read-only view of one experiment (see the module doc); ``uri`` as for ``Tracker``."""

    def __init__(self, uri: str, experiment: str) -> None:
        uri = credentials_from_uri(uri)  # a password never sits in a printed URI
        self.uri, self.experiment = uri, experiment
        db = sqlite_path(uri)
        if db is not None and not db.is_file():
            raise NothingTracked(
                f"no MLflow store at {uri} (the file {db} does not exist): nothing has been run yet "
                "for this suite. Run it first (`nmlbench run SUITE`), or pass the --tracking-uri it logged to."
            )
        # SQLite is opened read-only: MLflow would otherwise create or migrate tables (and race a
        # sweep that is creating the same file); a store that is not complete yet fails instead.
        # The driver is named (sqlite+pysqlite): for a plain sqlite:/// URI MLflow makes the
        # "parent folders" of the path, here the relative `file:/<dirs>`, in the working directory.
        try:
            self.client = make_client(
                f"sqlite+pysqlite:///file:{quote(str(db))}?mode=ro&uri=true" if db is not None else uri
            )
            exp = self.client.get_experiment_by_name(experiment)
        except Exception as exc:
            if auth_refused(exc):
                raise TrackingUnavailable(f"MLflow at {uri} refused the credentials ({brief(exc)})") from exc
            if is_transient(exc):
                raise TrackingUnavailable(
                    f"MLflow at {uri} did not answer ({brief(exc)}); start the tracking "
                    "server or pass another --tracking-uri"
                ) from exc
            if "readonly database" in str(exc):
                raise NothingTracked(
                    f"the MLflow store at {uri} is not complete (empty, or a run that just "
                    "started is still creating it); nothing to read yet"
                ) from exc
            raise
        if exp is None:
            raise NothingTracked(
                f"no experiment {experiment!r} in the MLflow store at {uri}: nothing has been "
                "run yet for this suite (`nmlbench run SUITE` creates it)."
            )
        if exp.lifecycle_stage == "deleted":
            raise NothingTracked(
                f"experiment {experiment!r} at {uri} was deleted; restore it with "
                f"`mlflow experiments restore --experiment-id {exp.experiment_id}` "
                "(with MLFLOW_TRACKING_URI set to the store) or re-run the suite."
            )
        self.experiment_id: str | None = exp.experiment_id

    # -- plumbing ----------------------------------------------------------------------------
    def _search(self, filter_string: str = "") -> list[Any]:
        if self.experiment_id is None:
            raise TrackingUnavailable(f"MLflow at {self.uri} has not answered yet; nothing can be read from it")
        return search_all(self.client, self.experiment_id, filter_string)

    def leaderboard_url(self, base_url: str) -> str:
        """The leaderboard view of this experiment on an MLflow UI at ``base_url``."""
        return leaderboard_url(base_url, str(self.experiment_id))

    # -- records -----------------------------------------------------------------------------
    def completed_keys(self, kind: str | None = None) -> set[str]:
        """Keys whose run finished (optionally of one kind; by default fits, pre-trainings and
        spectra, not the suite / group / leaderboard runs): what a re-run can skip."""
        runs = self._search(run_filter(kind))
        return {
            r.data.tags[KEY_TAG]
            for r in runs
            if KEY_TAG in r.data.tags and (kind is not None or r.data.tags.get(KIND_TAG) not in STRUCTURE_KINDS)
        }

    def runs_frame(self, kind: str = "fit") -> pd.DataFrame:
        """Finished runs of ``kind`` as a DataFrame (see ``store.runs_to_frame``)."""
        return runs_to_frame(self._search(run_filter(kind)))

    def suite_fits(self, suite: str) -> pd.DataFrame:
        """Finished fit runs of ``suite`` (and those that carry no suite tag): what a suite's
        leaderboard, claims and report summarise."""
        fits = self.runs_frame("fit")
        if SUITE_TAG in fits.columns:
            fits = fits[fits[SUITE_TAG].isna() | (fits[SUITE_TAG] == suite)].reset_index(drop=True)
        return fits

    def failures_frame(self, kind: str | None = None) -> pd.DataFrame:
        """Failed runs with their key, params and error text (what to look at after a sweep)."""
        rows = [
            {
                "run_id": r.info.run_id,
                "key": r.data.tags.get(KEY_TAG),
                "kind": r.data.tags.get(KIND_TAG),
                "error": r.data.tags.get(ERROR_TAG, ""),
                **typed_params(r.data.params, r.data.tags.get(KIND_TAG)),
            }
            for r in self._search(run_filter(kind, FAILED))
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
        for run in self._search(run_filter("spectrum")):
            p = typed_params(run.data.params, "spectrum")
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

    # -- the leaderboard as runs -------------------------------------------------------------
    def leaderboard_frame(
        self, suite: str | None = None, *, columns: Sequence[str] | None = None, selection: bool = False
    ) -> pd.DataFrame:
        """The published leaderboard (runs of kind ``leaderboard``) in leaderboard order.

        Columns: backbone, noise_ratio, head, ``fraction`` when the rows hold several, then the
        metric ``columns`` (the reporting layer passes ``benchmark.leaderboard.columns()``; by
        default the metric registry's columns, then every other metric the runs hold, by name).
        ``selection`` adds the params that say what validation chose (selected, fits, selections,
        tasks). Empty when nothing was published (see ``reporting.publish``, ``nmlbench sync``).
        """
        filt = run_filter("leaderboard")
        if suite is not None:
            filt += f" and tags.`{SUITE_TAG}` = '{suite}'"
        runs = self._search(filt)
        if columns is None:
            known = board_metric_columns()
            columns = [*known, *sorted({m for r in runs for m in r.data.metrics} - set(known))]
        rows = []
        for run in runs:
            p = typed_params(run.data.params, "leaderboard")
            row: dict[str, Any] = {k: p.get(k) for k in LEADERBOARD_KEYS}
            row.update({m: run.data.metrics.get(m, math.nan) for m in columns})
            if selection:
                row.update({k: p.get(k) for k in SELECTION_PARAMS})
            row["_row"] = int(run.data.tags.get(ROW_TAG, 10**9))
            rows.append(row)
        extra = list(SELECTION_PARAMS) if selection else []
        if not rows:
            return pd.DataFrame(columns=["backbone", "noise_ratio", "head", *columns, *extra])
        df = pd.DataFrame(rows).sort_values("_row", kind="stable").drop(columns="_row").reset_index(drop=True)
        df["noise_ratio"] = pd.to_numeric(df["noise_ratio"], errors="coerce").astype("float64")
        df["fraction"] = pd.to_numeric(df["fraction"], errors="coerce").astype("float64")
        if "n" in df.columns:
            df["n"] = df["n"].fillna(0).astype(int)
        if df["fraction"].nunique(dropna=False) <= 1:
            df = df.drop(columns="fraction")
        # Downstream label noise is a column only when some row has it (old boards: clean labels).
        label_noise = pd.to_numeric(df["label_noise_ratio"], errors="coerce").astype("float64").fillna(0.0)
        if (label_noise > 0).any():
            df["label_noise_ratio"] = label_noise
        else:
            df = df.drop(columns="label_noise_ratio")
        return df

    def published_fits(self, suite: str) -> int | None:
        """How many finished fits the published leaderboard of ``suite`` summarised (None: unpublished)."""
        runs = self._search(f"tags.`{KEY_TAG}` = '{suite_spec(suite)['key']}'")
        value = next((r.data.metrics.get("fits") for r in runs if r.info.status == "FINISHED"), None)
        return None if value is None else int(value)

    # -- pre-training ------------------------------------------------------------------------
    def pretrain_records(self) -> list[PretrainRecord]:
        """Finished pre-training runs with their noise record (params + metrics) and epoch curves."""
        groups = {r.info.run_id: r.info.run_name for r in self._search(run_filter("group"))}
        out = []
        for run in self._search(run_filter("pretrain")):
            d = run.data
            named = d.tags.get(EPOCH_TAG)
            epoch_keys = (
                [k for k in named.split(",") if k]
                if named is not None
                else [k for k in d.metrics if k not in _SCALAR_PRETRAIN]
            )
            curves = {}
            for k in epoch_keys:
                hist = self.client.get_metric_history(run.info.run_id, k)
                curves[k] = sorted((int(m.step), float(m.value)) for m in hist)
            curves = new_names(curves, "pretrain")
            params = typed_params(d.params, "pretrain")
            out.append(
                PretrainRecord(
                    name=str(params.get("name") or run.info.run_name),
                    group=groups.get(d.tags.get("mlflow.parentRunId", ""), ""),
                    params=params,
                    metrics=new_names(d.metrics, "pretrain"),
                    curves=curves,
                )
            )
        return sorted(out, key=lambda r: r.name)
