"""Turn one journal entry into one MLflow run, idempotently: the store holds each key once.

Rules, applied against an index of the experiment's runs by key (one scan, then kept current):
- a FINISHED entry whose key already has a FINISHED run is skipped, unless the entry asks to
  ``overwrite`` and its content digest differs (leaderboard rows, re-logged results);
- a FAILED entry never replaces a finished run, and is skipped if the same failure is there;
- otherwise a new run is written (``create_run`` + ``log_batch`` + artifacts + ``set_terminated``,
  the last call, so a FINISHED run is always complete) and every other run of the key is deleted
  (failed attempts, an older result, or a half-written run left by a server that died mid-way).
Parents (suite and group runs, see ``layout.py``) are found or created by key the same way,
so an entry sent after an outage still lands in its place in the tree.

Writes use ``MlflowClient`` directly rather than the fluent ``mlflow.start_run``: no active-run
global state, and about three store calls per fit.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import ConfigError
from benchmark.tracking.store import (
    DIGEST_TAG,
    FAILED,
    FINISHED,
    KEY_TAG,
    KIND_TAG,
    MAX_METRICS,
    MAX_PARAMS_TAGS,
    PARENT_TAG,
    chunks,
    param_str,
    search_all,
)


@dataclasses.dataclass
class RunRef:
    run_id: str
    status: str
    kind: str
    digest: str


class RunWriter:
    """Writes entries into one experiment; ``reset()`` forgets the index (after an outage)."""

    def __init__(self, client: Any, experiment_id: str, default_tags: Mapping[str, str] | None = None) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.default_tags = dict(default_tags or {})
        self._index: dict[str, list[RunRef]] | None = None

    # -- index -------------------------------------------------------------------------------
    def reset(self) -> None:
        self._index = None

    def refs(self, key: str) -> list[RunRef]:
        if self._index is None:
            index: dict[str, list[RunRef]] = {}
            for run in search_all(self.client, self.experiment_id):
                t = run.data.tags
                if KEY_TAG in t:
                    index.setdefault(t[KEY_TAG], []).append(
                        RunRef(run.info.run_id, run.info.status, t.get(KIND_TAG, ""), t.get(DIGEST_TAG, ""))
                    )
            self._index = index
        return self._index.setdefault(key, [])

    def finished(self, key: str) -> RunRef | None:
        return next((r for r in self.refs(key) if r.status == FINISHED), None)

    def keys(self, kind: str | None = None, status: str | None = FINISHED) -> set[str]:
        self.refs("")
        assert self._index is not None
        return {
            k
            for k, refs in self._index.items()
            if any((kind is None or r.kind == kind) and (status is None or r.status == status) for r in refs)
        }

    # -- writing -----------------------------------------------------------------------------
    def holder(self, entry: Mapping[str, Any]) -> str | None:
        """The run that already holds ``entry`` (nothing left to send), else None."""
        key, digest = entry["key"], entry["digest"]
        done = self.finished(key)
        if entry.get("status", FINISHED) == FAILED:
            if done is not None:
                return done.run_id
            same = next((r for r in self.refs(key) if r.status == FAILED and r.digest == digest), None)
            return same.run_id if same is not None else None
        if done is not None and (not entry.get("overwrite") or done.digest == digest):
            return done.run_id
        return None

    def write(self, entry: Mapping[str, Any]) -> str:
        """Deliver ``entry`` (see module doc); return the run id that now holds its key."""
        held = self.holder(entry)
        if held is not None:
            return held
        key, digest = entry["key"], entry["digest"]
        parent = self.container(entry["parent"]) if entry.get("parent") else None
        run_id = self._create(entry, parent)
        status = entry.get("status", FINISHED)
        old = [r for r in self.refs(key) if status == FINISHED or r.status != FINISHED]
        for ref in old:
            self.client.delete_run(ref.run_id)
        gone = {r.run_id for r in old}
        assert self._index is not None
        self._index[key] = [r for r in self.refs(key) if r.run_id not in gone] + [
            RunRef(run_id, status, entry["kind"], digest)
        ]
        return run_id

    def container(self, spec: Mapping[str, Any]) -> str:
        """The run id of a suite / group run, created (FINISHED, no metrics) if missing."""
        done = self.finished(spec["key"])
        if done is not None:
            return done.run_id
        parent = self.container(spec["parent"]) if spec.get("parent") else None
        entry = {**spec, "status": FINISHED, "digest": ""}
        run_id = self._create(entry, parent)
        self.refs(spec["key"]).append(RunRef(run_id, FINISHED, spec["kind"], ""))
        return run_id

    def _create(self, entry: Mapping[str, Any], parent: str | None) -> str:
        from mlflow.entities import Metric, Param

        tags = {
            **self.default_tags,
            **{k: str(v) for k, v in (entry.get("tags") or {}).items()},
            KIND_TAG: entry["kind"],
            KEY_TAG: entry["key"],
            DIGEST_TAG: entry.get("digest", ""),
        }
        if parent is not None:
            tags[PARENT_TAG] = parent
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=entry.get("name") or entry["key"])
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        ps = [Param(str(k), param_str(v)) for k, v in (entry.get("params") or {}).items()]
        ms = [Metric(str(k), float(v), now, 0) for k, v in (entry.get("metrics") or {}).items() if v is not None]
        ms += [Metric(str(k), float(v), now, int(step)) for k, v, step in entry.get("steps") or ()]
        try:
            # One call for the usual fit (< 100 params, < 1000 metrics); chunked past the limits.
            p_chunks = list(chunks(ps, MAX_PARAMS_TAGS)) or [[]]
            m_chunks = list(chunks(ms, MAX_METRICS)) or [[]]
            for i in range(max(len(p_chunks), len(m_chunks))):
                self.client.log_batch(
                    run_id,
                    metrics=m_chunks[i] if i < len(m_chunks) else [],
                    params=p_chunks[i] if i < len(p_chunks) else [],
                    tags=[],
                )
            log_artifacts(self.client, run_id, entry.get("artifacts") or {})
        except Exception:
            try:
                self.client.set_terminated(run_id, FAILED)
            except Exception:  # the store went away mid-write: the rescan after it returns cleans up
                pass
            raise
        self.client.set_terminated(run_id, entry.get("status", FINISHED))
        return run_id


def log_artifacts(client: Any, run_id: str, artifacts: Mapping[str, Any]) -> None:
    """Attach artifacts: a dict -> ``name.json``, an array -> ``name.npy``, a path -> the file.

    ``name`` may hold folders (``figures/x.png``); the file keeps the last part as its name.
    """
    if not artifacts:
        return
    with tempfile.TemporaryDirectory(prefix="nmlbench-artifacts-") as tmp:
        for name, value in artifacts.items():
            folder, _, base = str(name).rpartition("/")
            if isinstance(value, Mapping):
                path = Path(tmp) / (base if base.endswith(".json") else f"{base}.json")
                path.write_text(json.dumps(value, indent=1, sort_keys=True, default=str))
            elif isinstance(value, np.ndarray):
                path = Path(tmp) / (base if base.endswith(".npy") else f"{base}.npy")
                np.save(path, value)
            elif isinstance(value, (str, Path)):
                src = Path(value)
                if not src.is_file():
                    raise ConfigError(f"artifact {name!r}: file {src} does not exist")
                path = src if src.name == base else Path(tmp) / base
                if path != src:
                    shutil.copyfile(src, path)
            else:
                raise ConfigError(
                    f"artifact {name!r} has type {type(value).__name__}; "
                    "give a dict (JSON), a numpy array (.npy) or a file path"
                )
            client.log_artifact(run_id, str(path), artifact_path=folder or None)


def delete_stale(client: Any, writer: RunWriter, kind: str, keep: Iterable[str], where: Mapping[str, str]) -> int:
    """Delete finished runs of ``kind`` whose tags match ``where`` and whose key is not in ``keep``."""
    keep = set(keep)
    n = 0
    filt = " and ".join([f"tags.`{KIND_TAG}` = '{kind}'"] + [f"tags.`{k}` = '{v}'" for k, v in where.items()])
    for run in search_all(client, writer.experiment_id, filt):
        key = run.data.tags.get(KEY_TAG)
        if key not in keep:
            client.delete_run(run.info.run_id)
            writer.reset()
            n += 1
    return n
