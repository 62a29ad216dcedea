"""Records -> journal entries: what each kind of run (fit, failure, pre-training, spectrum) holds.

An *entry* is the one shape the journal stores and the writer sends: kind, key, status, name,
params, metrics, per-epoch steps, tags, artifacts, parent, overwrite. Building it is kept apart
from delivering it (``tracker.py``) because it is pure: the same record always gives the same
entry, whatever the state of the store, which is what makes delivery idempotent by key and digest.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import ConfigError
from benchmark.hashing import config_hash
from benchmark.tracking import layout
from benchmark.tracking.store import EPOCH_TAG, ERROR_TAG, FAILED, FINISHED

# An MLflow tag holds at most 8,000 characters: a longer traceback keeps its head and its tail.
_MAX_ERROR = 7900


def parent_spec(suite: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run a record hangs under: its (backbone, noise ratio) group, else the suite's run."""
    return layout.group_spec(suite, params) or layout.suite_spec(suite)


def fit_entry(suite: str, record: Mapping[str, Any], *, overwrite: bool = False) -> dict[str, Any]:
    """One head fit ``{"key", "params", "metrics", "tags", "artifacts", "curves"}``; a record with
    an ``"error"`` (a fit that raised in a worker) becomes a failure entry."""
    params, tags = dict(record.get("params", {})), dict(record.get("tags", {}))
    if record.get("error"):
        text = str(record["error"])
        if record.get("traceback"):
            text += "\n" + str(record["traceback"])
        return failure_entry(suite, record["key"], params, text, tags=tags)
    # Training curves (per epoch, or per L2 value / L-BFGS iteration for lp) become step metrics.
    steps = [
        (f"curve.{name}", float(v), i)
        for name, values in (record.get("curves") or {}).items()
        for i, v in enumerate(values)
    ]
    return {
        "kind": "fit",
        "key": record["key"],
        "status": FINISHED,
        "name": layout.fit_name(params),
        "params": params,
        "metrics": dict(record.get("metrics", {})),
        "steps": steps,
        "tags": tags,
        "artifacts": dict(record.get("artifacts", {})),
        "parent": parent_spec(suite, params),
        "overwrite": overwrite,
    }


def failure_entry(
    suite: str,
    key: str,
    params: Mapping[str, Any],
    error_text: str,
    *,
    kind: str = "fit",
    tags: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A failed attempt (status FAILED, tag ``error``): the key stays out of the completed ones."""
    half = _MAX_ERROR // 2 - 50
    text = error_text if len(error_text) <= _MAX_ERROR else error_text[:half] + "\n...\n" + error_text[-half:]
    params = dict(params)
    name = layout.fit_name(params) if kind == "fit" else layout.pretrain_name(params) if kind == "pretrain" else key
    return {
        "kind": kind,
        "key": key,
        "status": FAILED,
        "name": name,
        "params": params,
        "tags": {**(tags or {}), ERROR_TAG: text},
        "parent": parent_spec(suite, params),
    }


def pretrain_entry(
    suite: str, job: Any, result: Any, *, overwrite: bool = False, backbone: str | None = None
) -> dict[str, Any]:
    """A pre-training job (``PretrainJob``) and its result (a mapping or dataclass).

    Recognised entries of ``result``: ``history`` / ``metrics`` / ``epochs`` (a list of
    per-epoch dicts, or a dict of per-epoch lists; logged with ``step`` = epoch), ``noise_path``
    / ``noise_file`` (artifact ``noise.npz``; its sibling ``noise.json`` is logged too and gives
    the metrics ``noise_n`` / ``noise_changed``), ``checkpoint`` / ``checkpoint_path`` (tag
    ``checkpoint``: checkpoints stay in the work dir). Other numeric entries become metrics.
    ``backbone`` is the display name the fits of this model carry (default
    ``job.backbone_name``): it places the run in the same backbone x noise ratio group as those fits.
    """
    is_record = dataclasses.is_dataclass(result) and not isinstance(result, type)
    res = dataclasses.asdict(result) if is_record else dict(result)
    res.pop("job", None)
    params = dataclasses.asdict(job)
    params["name"] = job.name
    group = {
        "backbone": backbone or job.backbone_name,
        "noise_ratio": job.noise_ratio,
        "objective": job.objective,
        "noise_kind": job.noise_kind,
    }
    if res.get("error"):
        return {
            "kind": "pretrain",
            "key": job.key,
            "status": FAILED,
            "name": layout.pretrain_name(params),
            "params": params,
            "tags": {ERROR_TAG: str(res["error"])},
            "parent": parent_spec(suite, group),
        }
    steps, last = epoch_steps(
        next((res.pop(k) for k in ("history", "metrics", "epochs") if isinstance(res.get(k), (list, dict))), None)
    )
    tags: dict[str, str] = {"backbone": group["backbone"], EPOCH_TAG: ",".join(sorted(last))}
    artifacts: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    noise = next((res.pop(k) for k in ("noise_path", "noise_file") if res.get(k)), None)
    if noise is not None and Path(noise).is_file():
        artifacts["noise.npz"] = str(noise)
        summary = Path(noise).with_suffix(".json")
        if summary.is_file():
            artifacts["noise.json"] = str(summary)
            info = json.loads(summary.read_text())
            metrics["noise_n"] = info.get("n")
            metrics["noise_changed"] = info.get("num_flipped", info.get("num_mismatched"))
    ckpt = next((res.pop(k) for k in ("checkpoint", "checkpoint_path") if res.get(k)), None)
    if ckpt is not None:
        tags["checkpoint"] = str(ckpt)
    metrics.update({k: float(v) for k, v in res.items() if _finite_number(v)})
    # Per-epoch values are logged with their steps; MLflow keeps the latest as the run's value.
    for k in last:
        metrics.pop(k, None)
    return {
        "kind": "pretrain",
        "key": job.key,
        "status": FINISHED,
        "name": layout.pretrain_name(params),
        "params": params,
        "metrics": metrics,
        "steps": steps,
        "tags": tags,
        "artifacts": artifacts,
        "parent": parent_spec(suite, group),
        "overwrite": overwrite,
    }


def spectrum_entry(
    suite: str,
    backbone: str | Mapping[str, Any],
    task: str,
    values: Any,
    *,
    overwrite: bool = False,
    **params: Any,
) -> dict[str, Any]:
    """The singular values of a backbone's features on ``task`` (artifact spectrum.npy), keyed by
    every param, so each (backbone, noise ratio, seed, task) keeps its own spectrum."""
    arr = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values, dtype=np.float64)
    base = dict(backbone) if isinstance(backbone, Mapping) else {"backbone": backbone}
    if "backbone" not in base:
        raise ConfigError("log_spectrum: the backbone mapping needs a 'backbone' display name")
    all_params = {**base, **params, "task": task}
    return {
        "kind": "spectrum",
        "key": config_hash({"kind": "spectrum", **all_params}),
        "status": FINISHED,
        "name": layout.spectrum_name(all_params),
        "params": all_params,
        "artifacts": {"spectrum.npy": arr},
        "parent": parent_spec(suite, all_params),
        "overwrite": overwrite,
    }


def epoch_steps(history: Any) -> tuple[list[tuple[str, float, int]], dict[str, float]]:
    """Per-epoch rows (a list of dicts, or a dict of lists) -> (name, value, epoch) steps and last values."""
    if isinstance(history, dict):  # {"loss": [..], ...} -> per-epoch rows
        n = max((len(v) for v in history.values() if isinstance(v, list)), default=0)
        history = [{k: v[i] for k, v in history.items() if isinstance(v, list) and i < len(v)} for i in range(n)]
    steps: list[tuple[str, float, int]] = []
    last: dict[str, float] = {}
    for i, row in enumerate(history or []):
        epoch = int(row.get("epoch", i))
        for k, v in row.items():
            if k != "epoch" and _finite_number(v):
                steps.append((str(k), float(v), epoch))
                last[str(k)] = float(v)
    return steps, last


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
