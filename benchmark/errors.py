"""Errors that say what went wrong and how to fix it.

Every user-facing failure (bad suite file, unknown name, missing data, corrupt cache, diverging
fit) raises a subclass of ``NMLBenchError``; the CLI prints its message without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class NMLBenchError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(NMLBenchError, ValueError):
    """A suite file or argument is invalid; nothing has run."""


class UnknownNameError(NMLBenchError, KeyError):
    """A registry lookup failed; the message lists what exists."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "") -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
        msg = f"unknown {kind} {name!r}; known {plural}: {', '.join(self.known) or '(none)'}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class DatasetUnavailable(NMLBenchError, FileNotFoundError):
    """A data set's files are absent; the message names the path and the expected layout."""


class CorruptCacheError(NMLBenchError):
    """A cache file failed its integrity check."""


class TrainingDiverged(NMLBenchError, FloatingPointError):
    """A loss became NaN or infinite; the message names the step and the hyper-parameters."""


class PublishFailed(NMLBenchError):
    """Publishing the leaderboard failed on something other than an outage (a bug, not the input);
    the fit records are safe in the store, and the message says how to read the board meanwhile."""
