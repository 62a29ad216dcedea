"""Lazy package attributes (PEP 562): names imported from a submodule only when first used.

Packages whose light parts (registries, schemas) must import without torch or Ray expose their
heavy names through this, so ``nmlbench validate`` and the plan never pay for PyTorch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``name`` from ``table[name]`` (a module path) on first use."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
