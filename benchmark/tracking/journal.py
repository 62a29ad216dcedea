"""The local journal: every record is written here, one JSON line, before it is sent to MLflow.

Why: a tracking server can be down or restart in the middle of a sweep. The journal makes the
work dir, not the server, the first place a finished fit lands, so nothing computed is lost;
``Tracker`` sends what the store lacks when it answers again, and ``nmlbench sync`` does the
same later. Lines are only ever appended (a crash can at worst leave a torn last line, which
``read`` skips); the last line of a key wins.

An entry is a plain dict (see ``tracker.py``: kind, key, status, name, params, metrics,
steps, tags, artifacts, parent). Arrays are stored as base64 ``.npy`` bytes, paths as strings.
"""

from __future__ import annotations

import base64
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

_ARRAY = "__ndarray_npy_b64__"


def encode(obj: Any) -> Any:
    """A JSON-ready copy of ``obj``: numpy scalars -> Python, arrays -> base64 npy, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return {_ARRAY: base64.b64encode(buf.getvalue()).decode("ascii")}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:  # NaN: JSON has none; strict parsers reject it
        return None
    return obj


def decode(obj: Any) -> Any:
    """Inverse of ``encode`` for arrays (paths stay strings)."""
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY}:
            return np.load(io.BytesIO(base64.b64decode(obj[_ARRAY])), allow_pickle=False)
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def journal_path(work_dir: str | Path, experiment: str) -> Path:
    """``<work_dir>/journal/<experiment>.jsonl``: one journal per experiment in a work dir."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment) or "experiment"
    return Path(work_dir).expanduser().resolve() / "journal" / f"{safe}.jsonl"


class Journal:
    """Append-only JSON lines at ``path`` (created with its folder on the first append)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, entry: dict[str, Any]) -> None:
        """Write one entry as one line and flush it to the OS before returning."""
        line = json.dumps(encode(entry), sort_keys=True, separators=(",", ":"), allow_nan=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """All entries in order; a torn or garbled line (a crash mid-write) is skipped with a warning."""
        if not self.path.is_file():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append(decode(json.loads(line)))
                except json.JSONDecodeError:
                    warnings.warn(f"{self.path}:{n}: unreadable journal line skipped (torn write?)", stacklevel=2)
        return out

    def latest(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The last entry of each (kind, key), in the order of their last appearance."""
        last: dict[tuple[str, str], dict[str, Any]] = {}
        for e in self.read():
            ident = (e["kind"], e["key"])
            last.pop(ident, None)
            last[ident] = e
        return last
