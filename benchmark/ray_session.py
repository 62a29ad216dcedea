"""The one way nml-bench connects to Ray: every stage, test and benchmark starts Ray through here.

Where Ray runs, in order of precedence:
1. an explicit ``address`` (``--address``, or ``ray.address`` in the suite): a running cluster,
   e.g. ``auto``, ``127.0.0.1:6379`` or ``ray://head:10001``;
2. ``RAY_ADDRESS`` in the environment (set by Ray Jobs for a submitted suite);
3. otherwise a private local instance (``address="local"``). A bare ``ray.init()`` would attach
   to whatever head ``ray start`` left registered under /tmp/ray, possibly a dead one, so it is
   never used.

Worker output stays in Ray's log files unless ``NMLBENCH_RAY_LOGS=1``: the driver prints its own
progress, and Ray Train's per-checkpoint chatter would drown it.

A private local instance is one machine that this process owns: no node of it can be preempted
while the others go on, so Ray Train's preemption watcher (one more actor process per trainer,
2.4-2.5 s of CPU each on a 2-core Zen 5, for a pre-training stage that starts two) is switched
off there (:data:`LOCAL_ENV`; a value the user exports wins). On a cluster it stays on. Nor does
a private instance start workers ahead of demand (:data:`LOCAL_SYSTEM_CONFIG`).

A private instance that does not come up in time is started again (:func:`start_with_retries`):
Ray 2.60 gives a new node a fixed 30 s to register with its GCS (``ray/_private/node.py``, not
configurable), and on a loaded 2-core machine (a test run beside a long study, another Ray
starting at the same moment) registration has been measured to miss it; the next attempt, with
the first one's processes gone, comes up. After the last attempt the error says what to do.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

LOGS_ENV = "NMLBENCH_RAY_LOGS"
#: Environment defaults for a private local instance, read by Ray Train's controller.
LOCAL_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
#: Raylet settings for a private local instance: no worker processes started ahead of demand.
#: Ray starts one per CPU for the first driver; in a suite that pre-trains none was ever used
#: (Ray Train's actors carry their own runtime environment, so they get workers of their own,
#: and the first tasks come after the idle ones were stopped), and each cost a Python start and
#: ``import ray`` (~1 s of CPU) just while Ray and the first trainers start. A suite of frozen
#: backbones starts its first extraction ~0.5 s later instead.
LOCAL_SYSTEM_CONFIG = {"prestart_worker_first_driver": False}
_lock = threading.Lock()
#: How often a private local instance is started before giving up (see the module docstring).
START_ATTEMPTS = 3
#: The message of Ray's startup timeout (``ray/_private/node.py``).
STARTUP_TIMEOUT = "timed out during startup"


def start_with_retries(
    start: Callable[[], Any], stop: Callable[[], Any], attempts: int = START_ATTEMPTS, wait_s: float = 5.0
) -> Any:
    """``start()``; when it fails with Ray's startup timeout, ``stop()`` and try again (``attempts`` in all).

    Any other error is raised at once. The last timeout becomes a ``RuntimeError`` naming the
    cause and the fix.
    """
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as exc:
            if STARTUP_TIMEOUT not in str(exc):
                raise
            stop()
            if attempt == attempts:
                raise RuntimeError(
                    f"a local Ray instance did not start in {attempts} attempts: its node did not "
                    "register within Ray's fixed 30 s each time (the machine is overloaded, or "
                    "another Ray is starting at the same moment). Let the other Ray work finish, "
                    "or start a cluster once with `ray start --head` and pass --address auto."
                ) from exc
            logging.getLogger(__name__).warning(
                "Ray's local node did not register in time (attempt %d of %d); starting it again", attempt, attempts
            )
            time.sleep(wait_s)
    raise AssertionError("unreachable")


def init_ray(address: str | None = None, *, num_cpus: int | None = None, **kwargs: Any) -> bool:
    """Connect to (or start) Ray once per process; return True if this call started it.

    ``num_cpus`` and other ``ray.init`` keywords apply only to a private local instance (a
    cluster has its own resources). Safe to call from several threads: the first call wins.
    """
    import ray

    with _lock:
        if ray.is_initialized():
            return False
        kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": os.environ.get(LOGS_ENV, "0") == "1"}
        if address:
            ray.init(address=address, **kw)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init(**kw)
        else:
            for name, value in LOCAL_ENV.items():
                os.environ.setdefault(name, value)
            local = {"include_dashboard": False, "_system_config": dict(LOCAL_SYSTEM_CONFIG), **kwargs}
            if num_cpus is not None:
                local["num_cpus"] = int(num_cpus)
            start_with_retries(lambda: ray.init(address="local", **kw, **local), ray.shutdown)
        return True


def cluster_resources() -> dict[str, float]:
    """CPUs and GPUs of the connected cluster (``init_ray`` first)."""
    import ray

    res = ray.cluster_resources()
    return {"CPU": float(res.get("CPU", 0.0)), "GPU": float(res.get("GPU", 0.0))}
