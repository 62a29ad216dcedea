"""Where a results folder came from: ``provenance.json`` beside the tables and figures.

Why: a committed results folder is read months later, next to code that has moved on (issue 23:
the committed results were made from an earlier tree than the final one, and nothing said so).
Every folder ``nmlbench report`` writes records the commit of the code that wrote it (and whether
the tree had uncommitted changes), the suite file and its sha256, the machine (CPU model, family
and model number, AVX-512, cores: speeds and some float results differ between CPUs), the date,
and which store and experiment it read (credentials removed), and which commits made the fits it
reads (each fit run is stamped with ``code_tag()``, ``tracking.store.CODE_TAG`` when it is recorded).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benchmark.atomic import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
FILE_NAME = "provenance.json"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """The commit of this checkout and whether tracked files differ from it (None: not a git checkout)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def code_tag() -> str:
    """The commit that runs now, as stamped on each fit: ``<sha>``, ``<sha>+dirty``, or ``unknown``.

    Why per fit: a study's fits are made over days and sessions, by whatever tree was checked out
    then; fit keys hash the configuration, not the code, so a report must say which commits made
    the numbers it reads, not only the commit that drew its tables.
    """
    v = code_version()
    if not v["commit"]:
        return "unknown"
    return str(v["commit"]) + ("+dirty" if v["dirty"] else "")


def machine() -> dict[str, Any]:
    """CPU model, family / model number and flags of interest (Linux ``/proc/cpuinfo``), cores, OS."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    flags = info.get("flags", "").split()
    return {
        "cpu_model": info.get("model name") or platform.processor() or None,
        "cpu_family": int(info["cpu family"]) if info.get("cpu family", "").isdigit() else None,
        "cpu_model_number": int(info["model"]) if info.get("model", "").isdigit() else None,
        "avx512": "avx512f" in flags if flags else None,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _without_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def write_provenance(
    out_dir: str | Path,
    *,
    suite: str,
    suite_file: str | Path | None,
    tracking_uri: str,
    experiment: str,
    fits: int,
    fit_code: dict[str, int] | None = None,
    now: datetime | None = None,
) -> Path:
    """Write ``out_dir/provenance.json`` (module doc) and return its path.

    ``fit_code``: commit (``code_tag``) -> how many of the fits read were made by it; fits logged
    before fits were stamped count under ``"unrecorded"``.
    """
    record = {
        "suite": suite,
        "suite_file": str(suite_file) if suite_file else None,
        "suite_sha256": file_sha256(suite_file) if suite_file and Path(suite_file).is_file() else None,
        **code_version(),
        "machine": machine(),
        "date": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "tracking_uri": _without_credentials(tracking_uri),
        "experiment": experiment,
        "fits": int(fits),
        "fit_code": dict(sorted((fit_code or {}).items())),
    }
    path = Path(out_dir) / FILE_NAME
    atomic_write_json(path, record)
    return path


def read_provenance(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / FILE_NAME).read_text())
