"""Starting a private local Ray instance again when its node misses Ray's registration deadline.

Ray 2.60 gives a new node a fixed 30 s to register with its GCS; on a loaded 2-core machine it has
missed it (a suite started beside a test run). ``start_with_retries`` is exercised here with a
start function that fails the way Ray does; the first test pins the message to the installed Ray,
so an upgrade that rewords it is caught here rather than by an unretried timeout on a busy machine.
"""

from __future__ import annotations

import inspect

import pytest

from benchmark.ray_session import START_ATTEMPTS, STARTUP_TIMEOUT, start_with_retries


def test_the_retried_message_is_the_one_the_installed_ray_raises() -> None:
    from ray._private import node

    assert STARTUP_TIMEOUT in inspect.getsource(node)


class _Starts:
    """A start function that fails with Ray's startup timeout ``failures`` times, then returns 'up'."""

    def __init__(
        self, failures: int, error: str = f"The current node {STARTUP_TIMEOUT}. This could happen ..."
    ) -> None:
        self.failures, self.error, self.calls, self.stops = failures, error, 0, 0

    def start(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise Exception(self.error)  # Ray raises a bare Exception here
        return "up"

    def stop(self) -> None:
        self.stops += 1


def test_a_start_that_times_out_is_stopped_and_tried_again() -> None:
    s = _Starts(failures=START_ATTEMPTS - 1)
    assert start_with_retries(s.start, s.stop, wait_s=0) == "up"
    assert (s.calls, s.stops) == (START_ATTEMPTS, START_ATTEMPTS - 1)


def test_the_last_timeout_names_the_cause_and_the_fix() -> None:
    s = _Starts(failures=START_ATTEMPTS)
    with pytest.raises(RuntimeError, match=r"did not start in 3 attempts.*overloaded.*ray start --head") as err:
        start_with_retries(s.start, s.stop, wait_s=0)
    assert STARTUP_TIMEOUT in str(err.value.__cause__)
    assert (s.calls, s.stops) == (START_ATTEMPTS, START_ATTEMPTS)


def test_any_other_start_error_is_raised_at_once() -> None:
    s = _Starts(failures=1, error="port 6379 is in use")
    with pytest.raises(Exception, match="port 6379"):
        start_with_retries(s.start, s.stop, wait_s=0)
    assert (s.calls, s.stops) == (1, 0)
