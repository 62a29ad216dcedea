"""Suite keys renamed so that one concept has one name (issue 24), and how old files still load.

Old suite files keep running: ``renamed_keys`` rewrites a parsed suite to today's names before
the schema sees it, and says so once per old key (a printed notice, like a deprecation
warning), so a study file written before the rename runs unchanged while its author learns the
new name. A file that gives both the old and the new key is an error: which one was meant?

- ``downstream.methods`` -> ``downstream.heads`` (a head is called a head everywhere: suite,
  MLflow params, leaderboard columns).
- ``ratio`` in ``downstream.grid`` / ``downstream.hparams`` (also under a head's own section)
  -> ``width``: the MLP/NMTune hidden width multiplier, which shared its name with the noise
  ratio. Fit keys still hash it as ``ratio`` (``heads.hparams.KEY_ALIASES``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from benchmark.errors import ConfigError
from benchmark.heads.hparams import RENAMED
from benchmark.heads.registry import hparam_names

#: Renamed keys of the ``downstream`` section: old -> new.
DOWNSTREAM_KEYS: Mapping[str, str] = {"methods": "heads"}


def _renamed(section: Mapping[str, Any], table: Mapping[str, str], where: str, notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in section.items():
        new = table.get(k) if isinstance(k, str) else None
        if new is None:
            out[k] = v
            continue
        if new in section:
            raise ConfigError(f"{where}: both {k!r} and {new!r} are given; {k!r} is the old name of {new!r}, keep one")
        out[new] = v
        notes.append(f"{where}.{k} is now {where}.{new}")
    return out


def renamed_keys(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``data`` (a parsed suite) with old keys under today's names, and one note per old key."""
    notes: list[str] = []
    out = dict(data)
    ds = out.get("downstream")
    if not isinstance(ds, Mapping):
        return out, notes
    ds = _renamed(ds, DOWNSTREAM_KEYS, "downstream", notes)
    # An old name that a registered head (a plugin) declares today is that head's, not renamed.
    hparams = {old: new for old, new in RENAMED.items() if old not in hparam_names()}
    for section in ("grid", "hparams"):
        if isinstance(ds.get(section), Mapping):
            sec = _renamed(ds[section], hparams, f"downstream.{section}", notes)
            for name, own in list(sec.items()):  # a head's own section: hparams: {mlp: {ratio: 2}}
                if isinstance(own, Mapping):
                    sec[name] = _renamed(own, hparams, f"downstream.{section}.{name}", notes)
            ds[section] = sec
    out["downstream"] = ds
    return out, notes


def apply_renames(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``renamed_keys``, printing each note to stderr (the old file still runs)."""
    out, notes = renamed_keys(data)
    for note in notes:
        print(f"[nmlbench] {source}: {note} (the old name still works; rename it in the file)", file=sys.stderr)
    return out
