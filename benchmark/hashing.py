"""Stable config hashes: every job (pre-training, feature extraction, head fit) is keyed by one.

Re-running a suite computes only the keys that are missing, so the hash must be independent of
dict order, of float formatting and of the Python process (no ``hash()``, which is salted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _canonical(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):  # pydantic models
        return _canonical(obj.model_dump(mode="json"))
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _canonical(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        # repr round-trips floats exactly; 0.1 and 0.10000000000000001 hash alike.
        return float(repr(float(obj))) if np.isfinite(obj) else str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def canonical_json(obj: Any) -> str:
    """JSON text that is identical for equal configs."""
    return json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"))


def config_hash(obj: Any, length: int = 16) -> str:
    """First ``length`` hex digits of the sha256 of the config's canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def array_digest(array: np.ndarray, length: int = 16) -> str:
    """Digest of an array's contents (dtype and shape included), e.g. subset indices."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:length]
