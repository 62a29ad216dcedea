"""Pre-training across two Ray nodes, and surviving the loss of one.

A real two-node cluster on 127.0.0.1: a head (``ray start --head``) and a second node
(``ray start --address``), one CPU each, every port explicit and free, each with a private temp
dir, token auth on with one token given to every process. A driver process trains one job with two workers
placed STRICT_SPREAD (one per node; the ranks' node ids say so), streaming JPEG files from a
data root and writing checkpoints to a storage path both nodes see. Once the first epoch's
checkpoint is registered the second node is killed (its whole process group: raylet, workers,
loaders). Ray Train cannot place two workers on one node, so it waits; the node is started
again and the job resumes from its last checkpoint, ending with one record per epoch.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from support import free_port, imagenet_root_from_arrays, ray_port_flags, stop_ray_processes

from benchmark.ray_session import LOCAL_ENV

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4  # the node is lost after epoch 0's checkpoint: >= 2 epochs must remain to resume into
#: The driver's bound after the node comes back scales with the measured first epoch (Ray Train
#: start-up included), so a loaded machine gets proportionally longer: it ran 10x slower beside a
#: suite run than alone (issue 23's portability: a bound that holds only on an idle machine is wrong).
SLACK = 4.0
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

DRIVER = textwrap.dedent("""
    import json, sys
    from benchmark.pretrain import PretrainJob, run_pretrain
    from benchmark.ray_session import init_ray
    address, root, work, storage, epochs = sys.argv[1:6]
    init_ray(address)
    job = PretrainJob(objective="supervised", corpus="imagenet", data_root=root,
                      arch="test_resnet", noise_ratio=0.2, seed=0, epochs=int(epochs),
                      batch_size=50, lr=2e-3, image_size=32, workers=2, loader_workers=1)
    r = run_pretrain(job, work, storage_path=storage, max_failures=3, cpus_per_worker=1.0,
                     placement_strategy="STRICT_SPREAD", progress=False)
    print("RESULT " + json.dumps({"ok": r.ok, "key": r.key, "error": r.error}), flush=True)
""")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    for name in LOCAL_ENV:  # a private instance's defaults (set by an earlier test): not a cluster's
        env.pop(name, None)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # ``ray start --head`` turns token auth on and, on a machine without ~/.ray/auth_token (a
    # fresh CI machine), writes one only then: every process of this cluster gets one token of its
    # own through the environment instead, so the second node and the driver never depend on it.
    if "RAY_AUTH_MODE" not in env:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Retry placing the workers every 10 s while a node is missing, instead of every 60 s.
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "10"
    return env


def _start_node(gcs: int, temp_dir: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The second node, in a process group of its own (killing the group kills the node)."""
    return subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            f"--address=127.0.0.1:{gcs}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f"--temp-dir={temp_dir}",
            "--block",
            "--disable-usage-stats",
            *ray_port_flags(head=False),
        ],
        env=env,
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _start_live_node(gcs: int, temp_dir: str, env: dict[str, str], log: Path, tries: int = 2) -> subprocess.Popen:
    """:func:`_start_node` until its raylet runs; a node that exits first (a port taken between
    choosing and binding it) is started again with other ports."""
    for attempt in range(tries):
        node = _start_node(gcs, temp_dir, env, log)
        try:
            _wait(lambda node=node: _node_alive(node.pid), 120, "the second node's raylet", node, log)
            return node
        except AssertionError:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _node_alive(pgid: int) -> bool:
    """A live (not zombie) raylet in the node's process group."""
    out = subprocess.run(["ps", "-ww", "-eo", "pgid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    return any(r[0] == str(pgid) and not r[1].startswith("Z") and "raylet" in r[2] for r in rows if len(r) == 3)


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``predicate``; fail early when ``proc`` exits, and say what the node log ends with."""
    end = time.monotonic() + timeout

    def tail() -> str:
        return "" if log is None or not log.is_file() else "\nnode log:\n" + log.read_text()[-3000:]

    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process {proc.args[:2]} exited ({proc.returncode}) while waiting for {what}{tail()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tail()}")


@pytest.fixture()
def image_root(tmp_path: Path) -> Path:
    from benchmark.data import get_dataset

    images, labels = get_dataset("fashion-mnist").split("train").arrays()
    imagenet_root_from_arrays(tmp_path / "data", images[:2000], labels[:2000])
    return tmp_path / "data"


def test_two_node_job_survives_losing_a_node(tmp_path: Path, image_root: Path) -> None:
    env = _env()
    head_tmp = tempfile.mkdtemp(prefix="nmlh", dir="/tmp")  # short: socket paths < 108 bytes
    node_tmps = [tempfile.mkdtemp(prefix="nmln", dir="/tmp") for _ in range(2)]
    gcs = free_port()
    shared = tmp_path / "shared-storage"  # both nodes see it: the same file system
    work, log = tmp_path / "work", tmp_path / "ray-node.log"
    nodes: list[subprocess.Popen] = []
    driver = None
    try:
        start = subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs}",
                "--num-cpus=1",
                f"--temp-dir={head_tmp}",
                "--disable-usage-stats",
                "--include-dashboard=false",
                f"--dashboard-port={free_port()}",
                *ray_port_flags(head=True),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert start.returncode == 0, start.stderr[-2000:]
        nodes.append(_start_live_node(gcs, node_tmps[0], env, log))
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, f"127.0.0.1:{gcs}", str(image_root), str(work), str(shared), str(EPOCHS)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        # The first epoch's checkpoint is registered on shared storage: kill the second node.
        def first_checkpoint() -> bool:
            snaps = list(shared.glob("*/checkpoint_manager_snapshot.json"))
            return bool(snaps) and "epoch_0000" in snaps[0].read_text()

        started = time.monotonic()
        _wait(first_checkpoint, 1200, "the first checkpoint", driver, log)
        first_epoch = time.monotonic() - started
        os.killpg(nodes[0].pid, signal.SIGKILL)
        nodes[0].wait(timeout=60)
        _wait(lambda: not _node_alive(nodes[0].pid), 60, "the second node to die")
        time.sleep(5)  # lost for a while: Ray Train sees the failure and cannot place 2 workers
        nodes.append(_start_node(gcs, node_tmps[1], env, log))  # capacity returns
        # Start-up again plus the remaining epochs, each no dearer than the first: SLACK x that.
        out, _ = driver.communicate(timeout=max(300.0, SLACK * first_epoch * EPOCHS))
        assert driver.returncode == 0, out[-5000:]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        for n in nodes:
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
        for d in node_tmps:
            stop_ray_processes((d,), d)
        stop_ray_processes((head_tmp, f"127.0.0.1:{gcs}"), head_tmp)

    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    assert result["ok"], result["error"]
    done = json.loads((work / "pretrain" / result["key"] / "done.json").read_text())
    m = done["metrics"]
    assert [e["epoch"] for e in m] == list(range(EPOCHS))  # one record per epoch
    resumed = [e["resumed_from_epoch"] for e in m]
    k = next(i for i, r in enumerate(resumed) if r >= 0)  # the first epoch after the restart
    assert 1 <= k < EPOCHS and resumed[:k] == [-1] * k and set(resumed[k:]) == {k - 1}
    nodes_before = [{x["node"] for x in e["ranks"]} for e in m[:k]]
    nodes_after = [{x["node"] for x in e["ranks"]} for e in m[k:]]
    # One worker on each node, before and after; after, on the restarted node, not the lost one.
    assert all(len(s) == 2 for s in nodes_before + nodes_after)
    assert len({frozenset(s) for s in nodes_before}) == 1
    assert len({frozenset(s) for s in nodes_after}) == 1
    lost = nodes_before[0] - nodes_after[0]
    assert len(lost) == 1 and len(nodes_after[0] - nodes_before[0]) == 1
    for e in m:  # still data-parallel: disjoint shards, equal replicas
        assert [x["images"] for x in e["ranks"]] == [1000, 1000]
        assert e["ranks"][0]["param_digest"] == e["ranks"][1]["param_digest"]
    assert m[-1]["loss"] < m[0]["loss"]
    # Checkpoints and results went to the shared storage path.
    run_dir = shared / result["key"]
    assert done["ray_run_dir"] == str(run_dir)
    assert sorted(p.name for p in run_dir.glob("epoch_*")) == [f"epoch_{EPOCHS - 2:04d}", f"epoch_{EPOCHS - 1:04d}"]
    with np.load(work / "pretrain" / result["key"] / "noise.npz") as rec:
        # Exact counts per class (round half up): at most 1/2 row per class off, 10 / 2000 = 0.005.
        assert abs(float(rec["flipped"].mean()) - 0.2) < 0.01 and len(rec["flipped"]) == 2000
