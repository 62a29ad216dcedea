"""`nmlbench submit` against real Ray heads on 127.0.0.1, from a shell whose PATH lacks the venv.

- The README's two commands as written (`cluster/start-local-head.sh`, then `.venv/bin/nmlbench
  submit SUITE --address http://127.0.0.1:PORT --wait`) run a suite to SUCCEEDED: the script gives
  jobs the project's interpreter, whatever the calling shell's PATH holds.
- A head started outside the venv: the pre-submit check reports that the cluster's `python`
  lacks the package, names the fix, and sends no suite job.
- Ray's token authentication (on in both heads): a submission without the token, or with a wrong
  one, is refused with a message saying how to get the head's token (exit 2, no traceback).
- MLflow behind `mlflow server --app-name basic-auth`: a job given wrong credentials keeps its
  records in the journal, `nmlbench sync` delivers them once the right ones are given, and
  afterwards neither the password nor Ray's token is in the store, the artifacts, the journal,
  the work dir or the job's logs.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support import free_port, ray_port_flags, stop_ray_processes

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
pytestmark = pytest.mark.slow


def _shell_env(**extra: str) -> dict[str, str]:
    """A new user's shell: the venv is not on PATH, no Ray or MLflow settings exported."""
    venvs = {str(VENV_BIN), str(Path(sys.executable).parent)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_TRACKING_")) and k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p not in venvs)
    env.update(extra)
    return env


def _tiny_suite(tmp: Path, name: str) -> Path:
    """One frozen random-init backbone, one ID task, LP and MLP, one seed: 2 fits."""
    suite = {
        "name": name,
        "work_dir": str(tmp / "work"),
        "backbones": [
            {"family": "timm", "arch": "test_resnet", "image_size": 28, "seed": 0, "name": "test_resnet (random init)"}
        ],
        "downstream": {
            "id": ["sklearn-digits"],
            "ood": [],
            "heads": ["lp", "mlp"],
            "seeds": [0],
            "fractions": [1.0],
            "max_train": 200,
            "hparams": {"epochs": 2, "batch_size": 64},
        },
        "selection": {"split": "val", "val_fraction": 0.2},
        "tracking": {"experiment": name},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@dataclass
class Head:
    gcs: int
    dash: int
    ray_tmp: str
    token: str
    token_file: Path

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dash}"

    def env(self, **extra: str) -> dict[str, str]:
        """A shell that holds this head's token (as a file, the way cluster/README.md hands it over)."""
        return _shell_env(RAY_AUTH_TOKEN_PATH=str(self.token_file), **extra)

    def job(self, *args: str) -> str:
        """``ray job ARGS --address ...`` with the token, in a process of its own: Ray reads its
        authentication mode once per process, and the test process must not change its own."""
        out = subprocess.run(
            [str(VENV_BIN / "ray"), "job", *args, "--address", self.address],
            env=self.env(RAY_AUTH_MODE="token"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout + out.stderr


def _start_head(tmp: Path, *, script: bool) -> Head:
    token = secrets.token_hex(32)
    token_file = tmp / "ray_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    gcs, dash = free_port(), free_port()
    # A short private temp dir (socket paths stay under 108 bytes) that also lets the test stop
    # exactly this head; every port explicit, as other Ray instances may hold the defaults.
    ray_tmp = tempfile.mkdtemp(prefix="nmlray", dir="/tmp")
    flags = [f"--temp-dir={ray_tmp}", *ray_port_flags(head=True)]
    head = Head(gcs, dash, ray_tmp, token, token_file)
    if script:  # the README's command, from a shell without the venv on PATH
        cmd = ["bash", "-c", 'cluster/start-local-head.sh 2 "$@"', "start-local-head", *flags]
        env = head.env(RAY_PORT=str(gcs), DASHBOARD_PORT=str(dash))
    else:  # a head started by hand in that shell: jobs get the shell's `python`
        cmd = [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=1",
            "--disable-usage-stats",
            *flags,
        ]
        env = head.env(RAY_AUTH_MODE="token")
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        stop_ray_processes((ray_tmp, f"127.0.0.1:{gcs}"), ray_tmp)
        raise AssertionError(out.stdout[-2000:] + out.stderr[-2000:])
    return head


@pytest.fixture(scope="module")
def local_head(tmp_path_factory):
    head = _start_head(tmp_path_factory.mktemp("local-head"), script=True)
    yield head
    stop_ray_processes((head.ray_tmp, f"127.0.0.1:{head.gcs}"), head.ray_tmp)


@pytest.fixture(scope="module")
def bare_head(tmp_path_factory):
    head = _start_head(tmp_path_factory.mktemp("bare-head"), script=False)
    yield head
    stop_ray_processes((head.ray_tmp, f"127.0.0.1:{head.gcs}"), head.ray_tmp)


def _submit(head: Head, suite: Path, env: dict[str, str], *extra: str, timeout: int = 900):
    """The README's command line, run by a shell in the repository root."""
    line = f".venv/bin/nmlbench submit {suite} --address {head.address} --wait " + " ".join(extra)
    return subprocess.run(["bash", "-c", line], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _fit_keys(uri: str, experiment: str) -> set[str]:
    from benchmark.tracking import TrackingReader

    return set(TrackingReader(uri, experiment).runs_frame("fit")["key"])


def _planned_fit_keys(suite: Path) -> set[str]:
    from benchmark.config import load_suite
    from benchmark.plan import make_plan

    return {f.key for f in make_plan(load_suite(suite)).fits}


def test_the_readme_commands_run_a_suite_from_a_shell_without_the_venv(local_head, tmp_path):
    suite = _tiny_suite(tmp_path, "readme")
    out = _submit(local_head, suite, local_head.env())
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "SUCCEEDED" in out.stdout and "Traceback" not in text
    # The pre-submit check saw the project's interpreter, which the script put first on the head's PATH.
    assert f"cluster Python: {VENV_BIN / 'python'}" in out.stdout, out.stdout[:2000]
    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"  # the suite's default store
    assert _fit_keys(uri, "readme") == _planned_fit_keys(suite) and len(_planned_fit_keys(suite)) == 2
    from benchmark.tracking import TrackingReader

    board = TrackingReader(uri, "readme").leaderboard_frame("readme")
    assert list(board["head"]) == ["lp", "mlp"] and (board.n == 1).all()


def test_a_head_without_the_project_python_is_reported_before_submitting(bare_head, tmp_path):
    suite = _tiny_suite(tmp_path, "nopython")
    out = _submit(bare_head, suite, bare_head.env(), timeout=300)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, text[-3000:]
    assert "the cluster's Python cannot run nml-bench" in text and "lacks typer" in text, text[-3000:]
    assert "cluster/Dockerfile" in text and "cluster/start-local-head.sh" in text and "Traceback" not in text
    # Nothing but the probe ran, and the probe was removed from the job list.
    jobs = bare_head.job("list")
    assert "benchmark.cli" not in jobs and "NMLBENCH_PROBE" not in jobs, jobs[-2000:]
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("case", ["no token", "wrong token"])
def test_a_head_with_token_auth_refuses_a_submission_without_its_token(bare_head, tmp_path, case):
    suite = _tiny_suite(tmp_path, "refused")
    if case == "no token":  # a home without ~/.ray/auth_token, nothing in the environment
        env = _shell_env(HOME=str(tmp_path))
        expected = "asks for an authentication token and none was sent"
    else:
        env = _shell_env(RAY_AUTH_TOKEN=secrets.token_hex(32))
        expected = "refused the token from RAY_AUTH_TOKEN: it is not the head's"
    out = _submit(bare_head, suite, env, timeout=300)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, text[-3000:]
    assert f"error: the Ray head at {bare_head.address} {expected}" in text, text[-3000:]
    assert "RAY_AUTH_TOKEN_PATH" in text and "ray get-auth-token" in text and "Traceback" not in text


def _auth_server(tmp: Path, password: str):
    """`mlflow server --app-name basic-auth` on a free loopback port: its own store, artifacts and
    user database; the admin account is created at first start from MLFLOW_AUTH_ADMIN_PASSWORD
    (MLflow 3.17 ships no default password; the config file names the admin and the database)."""
    from benchmark.ui_check import MlflowServer

    tmp.mkdir(parents=True, exist_ok=True)
    ini = tmp / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return MlflowServer(
        f"sqlite:///{tmp / 'store.db'}",
        artifacts=tmp / "artifacts",
        log=tmp / "server.log",
        app_name="basic-auth",
        env={
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        },
    )


def _files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_credentials_reach_the_job_and_no_secret_is_recorded(local_head, tmp_path, monkeypatch):
    """Wrong credentials: the job's sweep journals its records and says which variables to set;
    `nmlbench sync` with the right ones (given inside the URI, which must then not be printed)
    delivers them; then the password, the wrong one and Ray's token are nowhere on record."""
    password, wrong = "pw-" + secrets.token_hex(12), "bad-" + secrets.token_hex(12)
    suite = _tiny_suite(tmp_path, "secret")
    server = _auth_server(tmp_path / "mlflow", password).start()
    try:
        out = _submit(
            local_head,
            suite,
            local_head.env(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=wrong),
            "--tracking-uri",
            server.url,
        )
        text = out.stdout + out.stderr
        assert out.returncode == 0 and "SUCCEEDED" in out.stdout, text[-4000:]
        assert "MLflow credentials passed as MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_USERNAME" in out.stdout
        flat = " ".join(text.split())
        assert (
            f"MLflow at {server.url} refuses the credentials (HTTP 401: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD" in flat
        ), text[-4000:]
        from benchmark.tracking import Journal, journal_path

        journal = journal_path(tmp_path / "work", "secret")
        planned = _planned_fit_keys(suite)
        assert {e["key"] for e in Journal(journal).read() if e["kind"] == "fit"} == planned

        # Reading with the wrong credentials: a clear refusal, exit 2.
        for command in ("leaderboard", "plan"):
            res = subprocess.run(
                [str(VENV_BIN / "nmlbench"), command, str(suite), "--tracking-uri", server.url],
                env=_shell_env(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=wrong),
                capture_output=True,
                text=True,
                timeout=300,
            )
            flat = " ".join((res.stdout + res.stderr).split())
            assert res.returncode == 2 and "Traceback" not in flat, (command, flat[-2000:])
            assert (
                f"error: MLflow at {server.url} refused the credentials (HTTP 401: set MLFLOW_TRACKING_USERNAME" in flat
            ), (command, flat[-2000:])

        # The right credentials, inside the URI: delivered, and the URI printed without them.
        with_creds = server.url.replace("http://", f"http://admin:{password}@")
        sync = subprocess.run(
            [str(VENV_BIN / "nmlbench"), "sync", str(suite), "--tracking-uri", with_creds],
            env=_shell_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert sync.returncode == 0 and "0 still pending" in sync.stdout, sync.stdout[-3000:] + sync.stderr[-3000:]
        assert password not in sync.stdout + sync.stderr and f"to {server.url} (experiment" in sync.stdout
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        assert _fit_keys(server.url, "secret") == planned
        logs = local_head.job("logs", out.stdout.split("submitted ", 1)[1].split()[0])
    finally:
        server.stop()
    assert "refuses the credentials" in logs  # the job's own log, read back from Ray
    for secret in (password, wrong, local_head.token):
        assert secret not in logs and secret not in out.stdout + out.stderr
        # the MLflow store, its artifacts and user database; the journal and the run summaries
        for root in (tmp_path / "mlflow", tmp_path / "work"):
            assert _files_holding(root, secret) == [], (root, secret[:3])
        # Every file the head wrote (the job's driver log, worker logs, its working dir) is clean,
        # except Ray's own record of the runtime environments it built: the runtime-env agent
        # logs each job's runtime_env, env_vars included, at Ray's default INFO level. That log
        # is the node's, not the job's; README "Security" says who can read it.
        ray_files = {Path(p).name for p in _files_holding(Path(local_head.ray_tmp), secret)}
        assert ray_files <= ({"runtime_env_agent.log"} if secret == wrong else set()), (ray_files, secret[:3])
