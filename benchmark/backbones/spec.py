"""Validation of backbone spec dicts, shared by the built-in families.

A spec is plain data (it comes from a suite YAML file), so typos must fail loudly before any
model is built: an unknown key, a missing ``arch`` or a checkpoint path that does not exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError
from benchmark.hashing import config_hash

SPEC_KEYS: frozenset[str] = frozenset(
    {
        "family",
        "arch",
        "checkpoint",
        "weights",
        "image_size",
        "target",
        "seed",
        "kwargs",
        "name",
        "version",
        "input",
    }
)


def check_spec(
    spec: Any, family: str, *, allowed: set[str] | frozenset[str] = SPEC_KEYS, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Return ``spec`` as a dict after checking its keys for ``family``; raise ConfigError."""
    if not isinstance(spec, dict):
        raise ConfigError(f"backbone spec must be a mapping, got {type(spec).__name__}: {spec!r}")
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ConfigError(
            f"backbone spec for family {family!r} has unknown key(s) {unknown}; allowed keys: {sorted(allowed)}"
        )
    missing = [k for k in required if spec.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"backbone spec for family {family!r} needs {missing}; got {spec!r}")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"backbone spec 'kwargs' must be a mapping, got {kwargs!r}")
    image_size = spec.get("image_size")
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise ConfigError(f"backbone spec 'image_size' must be a positive integer, got {image_size!r}")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"backbone spec 'seed' must be an integer, got {seed!r}")
    return dict(spec)


def existing_file(path: Any, what: str) -> Path:
    """A checkpoint path that must exist; the error names it and what it should be."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"{what} {str(p)!r} does not exist or is not a file; give the path of a "
            f"saved weights file (absolute, or relative to the working directory)"
        )
    return p


def kwargs_tag(kwargs: dict[str, Any]) -> str:
    """Identity suffix for constructor kwargs (empty when there are none)."""
    return f":kw-{config_hash(kwargs, 8)}" if kwargs else ""
