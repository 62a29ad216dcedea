"""Submitting a suite to a Ray cluster as a job: authentication, a check of the cluster's Python, secrets.

Why a module of its own: a job runs on machines this process does not control, so three things
are checked or arranged here before anything is sent, each failing with a message that names
the fix rather than a traceback:
- **Ray's token.** Ray 2.60 heads started with token authentication (every config in
  ``cluster/``) refuse a client without the token. The job client sends it only when
  ``RAY_AUTH_MODE=token``; ``use_ray_token_if_present`` sets that when a token is at hand
  (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), and a refusal becomes
  ``SubmitError`` saying how to get the head's token.
- **The cluster's Python.** The job's entrypoint is ``python -m benchmark.cli``: the ``python``
  on the head's PATH. ``check_cluster_python`` runs a probe job first (no working dir, a few
  seconds) that reports that interpreter and which of the package's dependencies it cannot find,
  so a head started outside the project's environment is reported before the suite is sent.
- **Secrets.** MLflow's credentials reach the job as ``runtime_env`` environment variables
  (``tracking.store.credential_env``), never on the command line that is printed and logged.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from benchmark.errors import NMLBenchError

#: Top-level modules the job imports to run a suite (the package's dependencies, pyproject.toml).
#: The probe looks them up with ``importlib.util.find_spec``: present or not, without importing torch.
REQUIRED_MODULES = (
    "typer",
    "pydantic",
    "yaml",
    "numpy",
    "pandas",
    "scipy",
    "sklearn",
    "torch",
    "torchvision",
    "timm",
    "open_clip",
    "ray",
    "mlflow",
    "matplotlib",
    "PIL",
    "tqdm",
)
PROBE_MARK = "NMLBENCH_PROBE"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

TOKEN_HELP = (
    "The head runs Ray's token authentication (cluster/README.md, 'Authentication'). Give this "
    "machine the head's token: copy it from the head (`ray get-auth-token` there, or its "
    "~/.ray/auth_token; KubeRay: the Secret the operator made) into a file here, then "
    "`export RAY_AUTH_TOKEN_PATH=/path/to/that/file` (or RAY_AUTH_TOKEN=<token>, or put it in "
    "~/.ray/auth_token). Do not turn authentication off: the job server runs any command it is sent."
)


class SubmitError(NMLBenchError):
    """A submission the cluster refused or cannot run; the message names the fix."""


def use_ray_token_if_present() -> str | None:
    """Send Ray's token when one is at hand; return where it comes from (None: no token).

    Must run before Ray is imported: Ray reads ``RAY_AUTH_MODE`` once per process. An explicit
    ``RAY_AUTH_MODE`` is left as the user set it.
    """
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    source = "RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else str(token_file) if token_file.is_file() else None
    if source is not None:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    return source


def _refused(exc: BaseException, address: str, token_source: str | None) -> SubmitError:
    text = " ".join(str(exc).split())
    if "invalid" in text.lower() or "Forbidden" in text:
        why = f"refused the token from {token_source or 'this machine'}: it is not the head's"
    else:
        why = "asks for an authentication token and none was sent"
    return SubmitError(f"the Ray head at {address} {why}. {TOKEN_HELP}")


def job_client(address: str, token_source: str | None) -> Any:
    """A ``JobSubmissionClient`` for ``address``; refusals and an absent head as ``SubmitError``."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        raise _refused(exc, address, token_source) from None
    except ConnectionError as exc:
        raise SubmitError(
            f"no Ray job server answers at {address} ({' '.join(str(exc).split())[:200]}). "
            "Start a head (cluster/start-local-head.sh on this machine; `ray up` or KubeRay "
            "for a cluster, see cluster/README.md) or open the tunnel to it "
            "(`ray dashboard cluster/gpu-cluster.yaml`, `kubectl port-forward ...`)."
        ) from None


def submit_with_retry(
    client: Any, entrypoint: str, runtime_env: dict, *, address: str, token_source: str | None, timeout_s: float = 90.0
) -> str:
    """Submit, waiting for the head's job agent: right after ``ray start`` it is not up yet."""
    from ray.exceptions import AuthenticationError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except AuthenticationError as exc:
            raise _refused(exc, address, token_source) from None
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def probe_entrypoint() -> str:
    """A one-line ``python -c`` that prints the interpreter and the missing modules as JSON."""
    code = (
        "import importlib.util as u, json, sys; "
        f"m = [n for n in {json.dumps(REQUIRED_MODULES)} if u.find_spec(n) is None]; "
        f'print("{PROBE_MARK}", json.dumps(dict(python=sys.executable, version=sys.version.split()[0], missing=m)))'
    )
    return f"python -c {shlex.quote(code)}"


def wait_for_job(client: Any, job_id: str, timeout_s: float) -> str:
    """The job's terminal status (a string), or "TIMEOUT"."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = client.get_job_status(job_id)
        status = str(getattr(answer, "value", answer))
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            return "TIMEOUT"
        time.sleep(0.5)


def check_cluster_python(
    client: Any, *, address: str, token_source: str | None, timeout_s: float = 180.0
) -> dict[str, Any]:
    """Run the probe job; return its report, or raise ``SubmitError`` naming the fix.

    The probe is what the suite's job would meet: the same head, the same PATH, ``python``.
    """
    job_id = submit_with_retry(client, probe_entrypoint(), {}, address=address, token_source=token_source)
    status, logs = "UNKNOWN", ""
    try:
        status = wait_for_job(client, job_id, timeout_s)
        logs = client.get_job_logs(job_id)
    finally:
        try:
            if status in TERMINAL:
                client.delete_job(job_id)
        except Exception:  # the listing keeps a finished probe: harmless
            pass
    fix = (
        "Fix: on a cluster, run the image cluster/Dockerfile builds on every node (cluster/README.md); "
        "on this machine, start the head with cluster/start-local-head.sh, which puts the project's "
        ".venv/bin first on the head's PATH (`ray stop` first). `--no-check` skips this check."
    )
    report = next(
        (json.loads(line.split(PROBE_MARK, 1)[1]) for line in logs.splitlines() if line.startswith(PROBE_MARK)), None
    )
    if status == "TIMEOUT":
        raise SubmitError(
            f"the check of the cluster's Python (job {job_id}) did not end within {timeout_s:.0f} s "
            f"on {address}; is the head overloaded? `--no-check` skips the check."
        )
    if report is None:
        tail = " | ".join(logs.strip().splitlines()[-3:])
        raise SubmitError(
            f"the cluster at {address} cannot run `python` for a job (probe job {status}: {tail}). " + fix
        )
    if report["missing"]:
        raise SubmitError(
            f"the cluster's Python cannot run nml-bench: jobs on {address} run `python` = "
            f"{report['python']} ({report['version']}), which lacks {', '.join(report['missing'])}. " + fix
        )
    return report
